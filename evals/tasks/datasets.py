"""Evaluation data sets as torch datasets of ``(PIL RGB image, target)``.

target: the class index (classification) or the list of ground-truth captions of the image (retrieval).
Map-style sets (files on disk) know their targets up front; streaming sets (webdataset tars) yield them
with the images. Every set carries ``name``, ``fingerprint`` (sha256 over sorted file names + sizes) and
``describe()`` for records.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from harness_infra.errors import ConfigError
from captiondata.config import CaptionLayout, project_layout
from evals.tasks.config import TaskConfig
from harness_infra.identity import files_fingerprint, sha256_json
from evals.tasks.prompts import load_classnames, load_templates, read_lines

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".pgm", ".tif", ".tiff")
WDS_IMAGE_MEMBERS = ("webp", "png", "jpg", "jpeg")


def load_rgb(path: str) -> Image.Image:
    """Open an image file fully and convert it to RGB (torchvision's pil_loader)."""
    with open(path, "rb") as handle:
        image = Image.open(handle)
        return image.convert("RGB")


def evenly_spaced(n: int, limit: Optional[int]) -> np.ndarray:
    """Indices of an evenly spaced subset of ``limit`` items out of ``n`` (all when limit is None or >= n)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


class FileImageSet(Dataset):
    """Map-style set of image files with known targets; ``max_samples`` keeps an evenly spaced subset."""

    def __init__(self, name: str, files: Sequence[str], targets: Sequence[Any], fingerprint: str, max_samples: Optional[int] = None) -> None:
        keep = evenly_spaced(len(files), max_samples)
        self.name = name
        self.files = [files[i] for i in keep]
        self.targets = [targets[i] for i in keep]
        self.fingerprint = fingerprint if len(keep) == len(files) else sha256_json([fingerprint, keep.tolist()])
        self.classes: Optional[List[str]] = None
        self.templates: Optional[List[str]] = None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tuple[Image.Image, Any]:
        return load_rgb(self.files[index]), self.targets[index]

    def describe(self) -> Dict[str, Any]:
        """Identity for records."""
        return {"name": self.name, "n_images": len(self.files), "fingerprint": self.fingerprint}


def image_folder(root: str, split: Optional[str] = None, name: Optional[str] = None, max_samples: Optional[int] = None) -> FileImageSet:
    """``root/split/<class>/*.jpg`` (torchvision ImageFolder order: sorted classes, then sorted files)."""
    base = os.path.join(root, split) if split else root
    if not os.path.isdir(base):
        raise ConfigError(f"image folder {base} does not exist")
    classes = sorted(e.name for e in os.scandir(base) if e.is_dir())
    if not classes:
        raise ConfigError(f"image folder {base} has no class sub-folders")
    files, targets = [], []
    for index, cls in enumerate(classes):
        for folder, _, names in sorted(os.walk(os.path.join(base, cls), followlinks=True)):
            for fname in sorted(names):
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(os.path.join(folder, fname))
                    targets.append(index)
    data = FileImageSet(name or os.path.basename(os.path.normpath(root)), files, targets, files_fingerprint(files, base), max_samples)
    data.classes = classes
    return data


def flickr8k(root: str, split: str = "test", max_samples: Optional[int] = None) -> FileImageSet:
    """The raw Flickr8k release: images of ``Flickr_8k.<split>Images.txt`` with their 5 captions from
    ``Flickr8k.token.txt`` (lines ``IMAGE.jpg#N<TAB>caption``, stripped; ids without an image are ignored)."""
    split_file = os.path.join(root, f"Flickr_8k.{split}Images.txt")
    token_file = os.path.join(root, "Flickr8k.token.txt")
    for path in (split_file, token_file):
        if not os.path.isfile(path):
            raise ConfigError(f"Flickr8k file {path} is missing")
    from captiondata.builders.flickr8k import read_captions  # the one parser of Flickr8k.token.txt

    captions = read_captions(root)
    names = [n for n in read_lines(split_file) if n in captions and os.path.isfile(os.path.join(root, "images", n))]
    files = [os.path.join(root, "images", n) for n in names]
    fingerprint = sha256_json([files_fingerprint(files, root), files_fingerprint([token_file, split_file], root)])
    return FileImageSet(f"flickr8k-{split}", files, [captions[n] for n in names], fingerprint, max_samples)


def caption_folder(root: str, name: Optional[str] = None, max_samples: Optional[int] = None) -> FileImageSet:
    """Urban-1K style long-caption set: ``image(s)/NAME.<ext>`` paired with ``caption(s)/NAME.txt`` (one caption)."""
    image_dir = next((os.path.join(root, d) for d in ("image", "images") if os.path.isdir(os.path.join(root, d))), None)
    caption_dir = next((os.path.join(root, d) for d in ("caption", "captions") if os.path.isdir(os.path.join(root, d))), None)
    if image_dir is None or caption_dir is None:
        raise ConfigError(f"caption folder {root} needs image/ (or images/) and caption/ (or captions/) sub-folders")
    files, targets, texts = [], [], []
    for fname in sorted(os.listdir(image_dir)):
        stem, ext = os.path.splitext(fname)
        text_path = os.path.join(caption_dir, stem + ".txt")
        if ext.lower() in IMAGE_EXTENSIONS and os.path.isfile(text_path):
            with open(text_path, encoding="utf-8") as handle:
                caption = " ".join(handle.read().split())
            if caption:
                files.append(os.path.join(image_dir, fname))
                targets.append([caption])
                texts.append(text_path)
    if not files:
        raise ConfigError(f"caption folder {root} has no image with a non-empty caption file")
    fingerprint = files_fingerprint(files + texts, root)
    return FileImageSet(name or os.path.basename(os.path.normpath(root)), files, targets, fingerprint, max_samples)


class ShardStream(IterableDataset):
    """Streaming set over tar shards; DataLoader workers split the shard list (worker i reads shards i::n)."""

    def __init__(self, name: str, shards: Sequence[str], fingerprint: str, max_samples: Optional[int] = None) -> None:
        self.name = name
        self.shards = list(shards)
        self.fingerprint = fingerprint if max_samples is None else sha256_json([fingerprint, "first", max_samples])
        self.max_samples = max_samples
        self.classes: Optional[List[str]] = None
        self.templates: Optional[List[str]] = None

    def my_shards(self) -> List[str]:
        """The shards this process reads."""
        info = get_worker_info()
        return self.shards if info is None else self.shards[info.id :: info.num_workers]

    def samples(self, shards: List[str]) -> Iterator[Tuple[Image.Image, Any]]:
        """(image, target) pairs of the given shards."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Tuple[Image.Image, Any]]:
        for count, item in enumerate(self.samples(self.my_shards())):
            if self.max_samples is not None and count >= self.max_samples:
                return
            yield item

    def describe(self) -> Dict[str, Any]:
        """Identity for records."""
        return {"name": self.name, "n_shards": len(self.shards), "fingerprint": self.fingerprint}


def _raw_tar_samples(shards: List[str]) -> Iterator[Dict[str, Any]]:
    """Raw samples through the project's one tar reader (bad members skipped and logged there)."""
    from captiondata.counters import SampleCounters
    from captiondata.reader import raw_samples

    return raw_samples(shards, SampleCounters(max_workers=0))


def _decode_member_image(raw: Dict[str, Any]) -> Optional[Image.Image]:
    """The RGB image of a raw sample (first of webp/png/jpg/jpeg), or None when absent or corrupt."""
    from captiondata.decode import BadSample, decode_image

    member = next((m for m in WDS_IMAGE_MEMBERS if m in raw), None)
    if member is None:
        log.warning("sample %s of %s has no image member; skipped", raw.get("__key__"), raw.get("__url__"))
        return None
    try:
        return decode_image(raw[member], 1 << 30)
    except BadSample as bad:
        log.warning("sample %s of %s: %s; skipped", raw.get("__key__"), raw.get("__url__"), bad)
        return None


def _wds_shards(root: str, split: str) -> List[str]:
    """CLIP_benchmark's shard list: ``split/{0..n-1}.tar`` from ``split/nshards.txt``, else sorted ``split/*.tar``."""
    folder = os.path.join(root, split)
    nshards_path = os.path.join(folder, "nshards.txt")
    if os.path.isfile(nshards_path):
        with open(nshards_path, encoding="utf-8") as handle:
            return [os.path.join(folder, f"{i}.tar") for i in range(int(handle.read().strip()))]
    if not os.path.isdir(folder):
        raise ConfigError(f"CLIP_benchmark webdataset split folder {folder} does not exist")
    names = sorted((n for n in os.listdir(folder) if n.endswith(".tar")), key=lambda n: (len(n), n))
    if not names:
        raise ConfigError(f"{folder} has no .tar shards")
    return [os.path.join(folder, n) for n in names]


class WdsClassification(ShardStream):
    """CLIP_benchmark webdataset classification layout: ``.cls`` labels, ``classnames.txt``, optional templates."""

    def samples(self, shards: List[str]) -> Iterator[Tuple[Image.Image, int]]:
        for raw in _raw_tar_samples(shards):
            label = raw.get("cls", b"").decode("utf-8", errors="replace").strip()
            if not label.lstrip("-").isdigit():
                log.warning("sample %s of %s has no integer .cls label; skipped", raw.get("__key__"), raw.get("__url__"))
                continue
            image = _decode_member_image(raw)
            if image is not None:
                yield image, int(label)


class WdsRetrieval(ShardStream):
    """CLIP_benchmark webdataset retrieval layout: ``.txt`` holds the image's captions, one per line."""

    def samples(self, shards: List[str]) -> Iterator[Tuple[Image.Image, List[str]]]:
        for raw in _raw_tar_samples(shards):
            text = raw.get("txt", b"").decode("utf-8", errors="replace")
            captions = [c.strip() for c in text.splitlines() if c.strip()]
            image = _decode_member_image(raw) if captions else None
            if image is not None:
                yield image, captions


def clip_benchmark_wds(root: str, split: str = "test", kind: str = "classification", max_samples: Optional[int] = None) -> ShardStream:
    """A CLIP_benchmark webdataset folder (``kind`` = classification or retrieval)."""
    shards = _wds_shards(root, split)
    extras = [os.path.join(root, f) for f in ("classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt")]
    fingerprint = files_fingerprint([s for s in shards] + [e for e in extras if os.path.isfile(e)], root)
    name = f"{os.path.basename(os.path.normpath(root))}-{split}"
    if kind == "retrieval":
        return WdsRetrieval(name, shards, fingerprint, max_samples)
    data = WdsClassification(name, shards, fingerprint, max_samples)
    if os.path.isfile(extras[0]):
        data.classes = read_lines(extras[0])
    if os.path.isfile(extras[1]):
        data.templates = read_lines(extras[1])
    return data


class ProjectShards(ShardStream):
    """The project's caption shards: target = the sample's reference captions (its original when none)."""

    def __init__(self, name: str, shards: Sequence[str], fingerprint: str, max_samples: Optional[int] = None, layout: Optional[CaptionLayout] = None) -> None:
        super().__init__(name, shards, fingerprint, max_samples)
        self.layout = layout or project_layout()

    def samples(self, shards: List[str]) -> Iterator[Tuple[Image.Image, List[str]]]:
        from captiondata.reader import iter_samples

        for record in iter_samples(shards, self.layout):
            references = list(record.references) or ([record.original] if record.original else [])
            if references:
                yield record.image, references


def project_shards(spec: str, name: Optional[str] = None, max_samples: Optional[int] = None, layout: Optional[CaptionLayout] = None) -> ProjectShards:
    """Project caption shards from a shard spec (paths, globs, braces, ``::``-joined); fingerprint = shard names + sizes."""
    from captiondata.reader import expand_shards

    shards = expand_shards(spec)
    return ProjectShards(name or os.path.basename(shards[0]).split("-")[0], shards, files_fingerprint(shards), max_samples, layout)


def open_eval_dataset(task: TaskConfig) -> Dataset:
    """The data set a task config names (paths resolved under the data root)."""
    path = task.resolved_path()
    kind = "classification" if task.task == "zeroshot_classification" else "retrieval"
    if task.format == "image_folder":
        data: Any = image_folder(path, task.split, task.name, task.max_samples)
    elif task.format == "clip_benchmark_wds":
        data = clip_benchmark_wds(path, task.split, kind, task.max_samples)
    elif task.format == "flickr8k":
        data = flickr8k(path, task.split, task.max_samples)
    elif task.format == "caption_folder":
        data = caption_folder(path, task.name, task.max_samples)
    else:
        data = project_shards(path, task.name, task.max_samples)
    data.name = task.name
    if kind == "classification":
        data.classes = load_classnames(task.classnames, data.classes)
        data.templates = load_templates(task.templates, data.templates)
    return data
