"""Tiny random open_clip models and tiny evaluation data sets written on the fly (tests, smoke runs)."""

from __future__ import annotations

import io
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

TINY_CLIP: Dict[str, Any] = dict(
    embed_dim=64,
    vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32),
    text_cfg=dict(context_length=32, vocab_size=49408, width=64, heads=2, layers=2),
)


def tiny_clip(seed: int = 0, context_length: int = 32) -> Tuple[torch.nn.Module, Any, Any]:
    """(model, tokenizer, preprocess): a random-init open_clip CLIP (64-d, 2+2 layers, 32 px), eval mode."""
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    torch.manual_seed(seed)
    cfg = {**TINY_CLIP, "text_cfg": {**TINY_CLIP["text_cfg"], "context_length": context_length}}
    model = open_clip.CLIP(**cfg).eval()
    preprocess = open_clip.image_transform(cfg["vision_cfg"]["image_size"], is_train=False)
    return model, SimpleTokenizer(context_length=context_length), preprocess


def random_image(seed: int, size: int = 40, mode: str = "RGB") -> Image.Image:
    """A noise image with a seed-dependent colour cast (distinct images give distinct embeddings)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size, size, 3)) // 2 + rng.integers(0, 128, size=3)
    return Image.fromarray(pixels.astype(np.uint8)).convert(mode)


def jpeg(image: Image.Image) -> bytes:
    """JPEG bytes of an image."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_image_folder(root: str, classes: Sequence[str], per_class: int, split: str = "test", size: int = 40) -> str:
    """``root/split/<class>/NNNN.jpg`` noise images; returns root."""
    for c, name in enumerate(classes):
        folder = os.path.join(root, split, name)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            random_image(1000 * c + i, size).save(os.path.join(folder, f"{i:04d}.jpg"), quality=95)
    return root


def write_cb_classification(
    root: str,
    labels: Sequence[int],
    classnames: Sequence[str],
    templates: Optional[Sequence[str]] = None,
    split: str = "test",
    per_shard: int = 7,
) -> str:
    """CLIP_benchmark webdataset classification folder: ``split/{i}.tar`` + nshards.txt, classnames.txt, templates."""
    import webdataset as wds

    os.makedirs(os.path.join(root, split), exist_ok=True)
    shards = 0
    for start in range(0, len(labels), per_shard):
        with wds.TarWriter(os.path.join(root, split, f"{shards}.tar")) as sink:
            for i in range(start, min(start + per_shard, len(labels))):
                sink.write({"__key__": f"s{i:06d}", "jpg": jpeg(random_image(i)), "cls": str(int(labels[i]))})
        shards += 1
    _write_text(os.path.join(root, split, "nshards.txt"), str(shards))
    _write_text(os.path.join(root, "classnames.txt"), "\n".join(classnames))
    if templates:
        _write_text(os.path.join(root, "zeroshot_classification_templates.txt"), "\n".join(templates))
    return root


def write_cb_retrieval(root: str, captions: Sequence[Sequence[str]], split: str = "test", per_shard: int = 7) -> str:
    """CLIP_benchmark webdataset retrieval folder: ``.txt`` holds each image's captions one per line."""
    import webdataset as wds

    os.makedirs(os.path.join(root, split), exist_ok=True)
    shards = 0
    for start in range(0, len(captions), per_shard):
        with wds.TarWriter(os.path.join(root, split, f"{shards}.tar")) as sink:
            for i in range(start, min(start + per_shard, len(captions))):
                sink.write({"__key__": f"s{i:06d}", "jpg": jpeg(random_image(i)), "txt": "\n".join(captions[i])})
        shards += 1
    _write_text(os.path.join(root, split, "nshards.txt"), str(shards))
    _write_text(os.path.join(root, "dataset_type.txt"), "retrieval")
    return root


def write_caption_folder(root: str, captions: Sequence[str]) -> str:
    """Urban-1K style folder: ``image/NNNN.jpg`` + ``caption/NNNN.txt`` (one long caption each)."""
    os.makedirs(os.path.join(root, "image"), exist_ok=True)
    os.makedirs(os.path.join(root, "caption"), exist_ok=True)
    for i, caption in enumerate(captions):
        random_image(i).save(os.path.join(root, "image", f"{i:04d}.jpg"), quality=95)
        _write_text(os.path.join(root, "caption", f"{i:04d}.txt"), caption)
    return root


def caption_records(n: int, references_per_image: int = 3) -> List[Any]:
    """Project-layout Records with an original, one recaption and several references each."""
    from captiondata.records import Record

    return [
        Record(
            key=f"k{i:05d}",
            image=jpeg(random_image(i)),
            original=f"photo {i}",
            recaptions=[f"a detailed recaption of scene number {i} with many words"],
            references=[f"reference caption {j} of image {i}" for j in range(references_per_image)],
        )
        for i in range(n)
    ]


def write_project_shards(folder: str, records: Sequence[Any], prefix: str = "test", per_shard: int = 5) -> str:
    """Write Records with the project's ShardWriter; returns the glob spec of the shards."""
    from captiondata.writer import ShardWriter

    writer = ShardWriter(folder, prefix, max_count=per_shard)
    writer.write_all(records)
    writer.close()
    return os.path.join(folder, f"{prefix}-*.tar")


def _write_text(path: str, text: str) -> None:
    """Write UTF-8 text (with a trailing newline)."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")


RETRIEVAL_METRICS = ("i2t_R@1", "t2i_R@1", "i2t_R@5", "t2i_R@5")


def publish_retrieval(
    folder: str,
    hits: np.ndarray,
    stem: str,
    run: Dict[str, Any],
    task_name: str = "toy_retrieval",
    dataset: str = "f" * 8,
) -> None:
    """Publish a retrieval record under ``folder/records`` whose every R@K is the mean of the per-query ``hits`` (also
    its per-query values), with the run section ``run`` (the caller's keys over a toy default)."""
    from evals.results.bootstrap import QueryValues
    from evals.results.records import write_record

    metrics = {m: float(hits.mean()) for m in RETRIEVAL_METRICS}
    defaults = {"model": "tiny", "data": "toy", "samples_seen": 100, "global_batch": [10], "eval_hash": "e"}
    record = {
        "task": "retrieval",
        "task_name": task_name,
        "dataset": {"fingerprint": dataset},
        "metrics": metrics,
        "intervals": {m: [v - 0.01, v + 0.01] for m, v in metrics.items()},
        "n": {"images": len(hits), "image_queries": len(hits)},
        "created": "2026-01-01T00:00:00+00:00",
        "checkpoint": stem,
        "run": {**defaults, **run},
    }
    values = {m: QueryValues(hits.astype(float)) for m in metrics}
    write_record(record, os.path.join(folder, "records"), values, stem=stem)
