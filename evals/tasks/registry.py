"""The evaluation-task registry: what each task evaluates and the function that runs it.

A task is registered here once, as a ``TaskSpec``: its name (``eval.tasks[].task``), the kind of model it evaluates
and the ``module:function`` that runs it. The kinds:

- ``image_text_embedder``: an ``ImageTextEmbedder`` (a CLIP: image and text towers into one space), for zero-shot
  classification, retrieval and caption diagnostics;
- ``image_generator``: an ``ImageGenerator`` (a text-to-image model: the DiT family), for FID/KID, CLIP score,
  prompt following on the scenes and a VLM judge (``evals.tasks.t2i``).

A run function takes ``(evaluable, task: TaskConfig, cfg: EvalConfig, model_id: str)`` and returns a
``TaskResult``. Adding a task = one module with its run function and one entry in ``TASKS``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from training.generation import GenerationSpec

EMBEDDER = "image_text_embedder"
GENERATOR = "image_generator"
KINDS = (EMBEDDER, GENERATOR)


@dataclass(frozen=True)
class ImageTextEmbedder:
    """A model that embeds images and texts into one space, as open_clip loads it.

    ``model``: an open_clip ``CLIP``/``CustomTextCLIP`` (``encode_image``: B x 3 x H x W -> B x D,
    ``encode_text``: B x L token ids -> B x D); ``tokenizer``: texts -> B x L token ids; ``preprocess``: PIL image
    -> 3 x H x W tensor (the model's eval transform).
    """

    model: Any
    tokenizer: Any
    preprocess: Any
    kind: str = EMBEDDER


@dataclass
class ImageGenerator:
    """A text-to-image model as the generator tasks take it.

    ``pipeline``: anything with ``generate(prompts, seeds, spec)`` returning one batch of N x 3 x H x W float images
    in [0, 1] (or N PIL images) sampled as the ``training.generation.GenerationSpec`` says, image i a function of
    (prompt i, seed i) alone (``train_dit.sample.DitPipeline``). ``weights_id``: identity of its weights (keys the
    image cache; None = the sha256 of ``pipeline.transformer``'s state dict). ``description``: what it is (recorded).
    ``evaluator_loader``: how a CLIP export folder named as a task's evaluator loads (``load(folder, device) ->
    ImageTextEmbedder``), passed in by whoever builds the generator (the pipeline's DiT family passes its CLIP family's
    loader, since the tasks sit beside ``train_clip``, not above it); None: such an evaluator is a ConfigError.
    """

    pipeline: Any
    weights_id: Optional[str] = None
    description: Dict[str, Any] = field(default_factory=dict)
    evaluator_loader: Optional[Callable[[str, str], ImageTextEmbedder]] = None
    kind: str = GENERATOR

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], spec: GenerationSpec) -> Any:
        """The pipeline's images for one batch of ``prompts`` with per-image ``seeds``."""
        return self.pipeline.generate(prompts, seeds, spec)

    def identity(self) -> str:
        """``weights_id``, computed from the pipeline's transformer the first time when not given."""
        if self.weights_id is None:
            from harness_infra.identity import model_fingerprint

            self.weights_id = model_fingerprint(self.pipeline.transformer)
        return self.weights_id


@dataclass(frozen=True)
class TaskSpec:
    """One registered task: ``name`` (the config value), ``evaluates`` (a kind of ``KINDS``), ``runner``
    (``module:function``, imported when the task runs), ``main_metrics`` (the columns of the comparison tables),
    ``percent`` (the main metrics are fractions in [0, 1], shown in %; False: shown in their own unit, such as FID, a
    CLIP score of 0-100 or a 1-5 rating) and ``lower_is_better`` (main metrics where smaller is better: FID, KID)."""

    name: str
    evaluates: str
    runner: str
    main_metrics: Tuple[str, ...] = ()
    percent: bool = True
    lower_is_better: Tuple[str, ...] = ()

    def run_function(self) -> Callable[..., Any]:
        """The task's run function."""
        module, _, function = self.runner.partition(":")
        return getattr(importlib.import_module(module), function)


TASKS: Dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "zeroshot_classification",
            EMBEDDER,
            "evals.tasks.zeroshot:run_zeroshot_task",
            ("top1", "top5", "mean_per_class_recall"),
        ),
        TaskSpec(
            "retrieval",
            EMBEDDER,
            "evals.tasks.retrieval:run_retrieval_task",
            ("i2t_R@1", "t2i_R@1", "i2t_R@5", "t2i_R@5"),
        ),
        TaskSpec("long_retrieval", EMBEDDER, "evals.tasks.retrieval:run_retrieval_task", ("i2t_R@1", "t2i_R@1")),
        TaskSpec("caption_diagnostics", EMBEDDER, "evals.tasks.diagnostics:run_diagnostics_task"),
        TaskSpec(
            "fid",
            GENERATOR,
            "evals.tasks.t2i:run_fid_task",
            ("fid", "kid"),
            percent=False,
            lower_is_better=("fid", "kid"),
        ),
        TaskSpec("clip_score", GENERATOR, "evals.tasks.t2i:run_clip_score_task", ("clip_score",), percent=False),
        TaskSpec(
            "prompt_following",
            GENERATOR,
            "evals.tasks.t2i:run_prompt_following_task",
            ("overall", "object", "colour", "count", "position"),
        ),
        TaskSpec("vlm_judge", GENERATOR, "evals.tasks.t2i:run_judge_task", ("judge_rating",), percent=False),
    )
}
