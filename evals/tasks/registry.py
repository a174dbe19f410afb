"""The evaluation-task registry: what each task evaluates and the function that runs it.

A task is registered here once, as a ``TaskSpec``: its name (``eval.tasks[].task``), the kind of model it evaluates
and the ``module:function`` that runs it. The kinds:

- ``image_text_embedder``: an ``ImageTextEmbedder`` (a CLIP: image and text towers into one space), for zero-shot
  classification, retrieval and caption diagnostics;
- ``image_generator``: a text-to-image model (the DiT family), for FID, CLIP score and prompt following.

A run function takes ``(evaluable, task: TaskConfig, cfg: EvalConfig, model_id: str)`` and returns a
``TaskResult``. Adding a task = one module with its run function and one entry in ``TASKS``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

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


@dataclass(frozen=True)
class TaskSpec:
    """One registered task: ``name`` (the config value), ``evaluates`` (a kind of ``KINDS``), ``runner``
    (``module:function``, imported when the task runs), ``main_metrics`` (the columns of the comparison tables)."""

    name: str
    evaluates: str
    runner: str
    main_metrics: Tuple[str, ...] = ()

    def run_function(self) -> Callable[..., Any]:
        """The task's run function."""
        module, _, function = self.runner.partition(":")
        return getattr(importlib.import_module(module), function)


TASKS: Dict[str, TaskSpec] = {spec.name: spec for spec in (
    TaskSpec("zeroshot_classification", EMBEDDER, "evals.tasks.zeroshot:run_zeroshot_task", ("top1", "top5", "mean_per_class_recall")),
    TaskSpec("retrieval", EMBEDDER, "evals.tasks.retrieval:run_retrieval_task", ("i2t_R@1", "t2i_R@1", "i2t_R@5", "t2i_R@5")),
    TaskSpec("long_retrieval", EMBEDDER, "evals.tasks.retrieval:run_retrieval_task", ("i2t_R@1", "t2i_R@1")),
    TaskSpec("caption_diagnostics", EMBEDDER, "evals.tasks.diagnostics:run_diagnostics_task"),
)}
