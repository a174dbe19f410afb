"""Evaluation data sets as torch datasets of ``(PIL RGB image, target)``.

target: the class index (classification) or the list of ground-truth captions of the image (retrieval).
Map-style sets (files on disk) know their targets up front; streaming sets (webdataset tars) yield them
with the images. Inputs are read as the training reader reads them: images through
``captiondata.decode.decode_image`` (one decoder: bit depth, transparency, EXIF orientation, pixel limit), text
strictly as UTF-8 (BOM dropped) and through ``captiondata.captions.normalize_caption``; a bad sample (corrupt image,
non-UTF-8 or empty caption, bad label) is skipped and counted by reason, never decoded with replacement characters.

Every set carries ``name``, ``fingerprint`` (sha256 over the content of every file it reads, the decoding options and
the caption normalisation: editing any input in place changes it; see ``harness_infra.identity.files_fingerprint``),
``counters`` (skips by reason and image conversions by kind) and ``describe()`` for records.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tarfile
import zlib
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from captiondata.captions import NORMALIZATION, normalize_caption, normalized_lines
from captiondata.config import DEFAULT_MAX_PIXELS, CaptionLayout, project_layout
from captiondata.counters import DECODE_EVENTS, SKIP_REASONS, SampleCounters
from captiondata.decode import BadSample, decode_image, decode_text, decoding_identity
from evals.tasks.config import TaskConfig
from evals.tasks.prompts import load_classnames, load_templates, read_classnames, read_lines, template_identity
from harness_infra.errors import ConfigError
from harness_infra.identity import files_fingerprint, is_remote, sha256_json, texts_fingerprint

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".pgm", ".tif", ".tiff")
WDS_IMAGE_MEMBERS = ("webp", "png", "jpg", "jpeg")
_INTEGER = re.compile(r"[+-]?\d+")


@dataclasses.dataclass(frozen=True)
class Decoding:
    """How an evaluation set decodes its images (``captiondata.decode.decode_image``'s options)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    exif_transpose: bool = True

    def identity(self) -> Dict[str, Any]:
        """What decides the decoded pixels (enters the set's fingerprint)."""
        return decoding_identity(self.max_pixels, self.exif_transpose)


def load_rgb(path: str, decoding: Decoding = Decoding(), count: Any = None, as_array: bool = False) -> Any:
    """An image file decoded to 8-bit RGB by the project's one decoder (``decode_image``; raises BadSample): a PIL
    image, or a uint8 HxWx3 array with ``as_array``."""
    with open(path, "rb") as handle:
        data = handle.read()
    return decode_image(data, decoding.max_pixels, decoding.exif_transpose, count, as_array=as_array)


def evenly_spaced(n: int, limit: Optional[int]) -> np.ndarray:
    """Indices of an evenly spaced subset of ``limit`` items out of ``n`` (all when limit is None or >= n)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def content_fingerprint(files: Sequence[str], root: Optional[str], decoding: Decoding, **extra: Any) -> str:
    """A set's identity: the content of every file it reads (``files_fingerprint``), how images are decoded, how text
    is normalised, and any ``extra`` that changes what is read (a caption layout)."""
    return sha256_json(
        {"files": files_fingerprint(files, root), "decoding": decoding.identity(), "text": NORMALIZATION, **extra}
    )


class _Counted:
    """Skip and conversion counts of an evaluation set, summed over DataLoader workers (``SampleCounters`` rows)."""

    counters: SampleCounters

    def counts(self) -> Dict[str, Dict[str, int]]:
        """{"skipped": {reason: n}, "converted": {event: n}} with the non-zero counts so far."""
        totals = self.counters.totals()
        return {
            "skipped": {r: totals[r] for r in SKIP_REASONS if totals[r]},
            "converted": {e: totals[e] for e in DECODE_EVENTS if totals[e]},
        }

    def restore_counts(self, counts: Dict[str, Dict[str, int]]) -> None:
        """Set the counts to ``counts`` (as ``counts()`` returned them: stored with cached embeddings)."""
        self.counters.reset()
        for group in counts.values():
            for name, n in group.items():
                self.counters.add(name, int(n))
        self.counters.flush()

    def _prompts_identity(self) -> Dict[str, Any]:
        """Fingerprints of the class names and templates a classification set is scored with (none for retrieval)."""
        classes, templates = getattr(self, "classes", None), getattr(self, "templates", None)
        out: Dict[str, Any] = {}
        if classes:
            out["classes_fingerprint"] = texts_fingerprint(list(classes))
        if templates:
            out["templates_fingerprint"] = texts_fingerprint(template_identity(templates))
        return out


class FileImageSet(_Counted, Dataset):
    """Map-style set of image files with known targets; ``max_samples`` keeps an evenly spaced subset.

    An image that does not decode yields ``(None, target)``, counted by reason; the evaluation loader
    (``evals.tasks.imageprep.image_loader``) drops such items, so the image and its target are skipped together.
    """

    def __init__(
        self,
        name: str,
        files: Sequence[str],
        targets: Sequence[Any],
        fingerprint: str,
        max_samples: Optional[int] = None,
        decoding: Decoding = Decoding(),
        counters: Optional[SampleCounters] = None,
    ) -> None:
        keep = evenly_spaced(len(files), max_samples)
        self.name = name
        self.files = [files[i] for i in keep]
        self.targets = [targets[i] for i in keep]
        self.fingerprint = fingerprint if len(keep) == len(files) else sha256_json([fingerprint, keep.tolist()])
        self.decoding = decoding
        self.counters = counters if counters is not None else SampleCounters()
        self.classes: Optional[List[str]] = None
        self.templates: Optional[List[str]] = None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tuple[Optional[Image.Image], Any]:
        return self.item(index)

    def item(self, index: int, as_array: bool = False, flush: bool = True) -> Tuple[Any, Any]:
        """(image, target) of item ``index``: the image as a PIL RGB image, or a uint8 HxWx3 array with ``as_array``
        (``evals.tasks.imageprep`` asks for arrays when it resizes them itself); None when skipped. ``flush=False``
        leaves the counts buffered (the caller flushes ``counters`` once per batch)."""
        try:
            image: Any = load_rgb(self.files[index], self.decoding, self.counters.add, as_array)
        except BadSample as bad:
            self.counters.add(bad.reason)
            log.warning("%s: image %s skipped (%s)", self.name, self.files[index], bad)
            image = None
        except OSError as exc:  # unreadable file (permissions, vanished)
            self.counters.add("corrupt_image")
            log.warning("%s: image %s skipped (%s)", self.name, self.files[index], exc)
            image = None
        if flush:
            self.counters.flush()
        return image, self.targets[index]

    def describe(self) -> Dict[str, Any]:
        """Identity and input counts for records (``skipped``: images not evaluated, by reason)."""
        return {
            "name": self.name,
            "n_images": len(self.files),
            "fingerprint": self.fingerprint,
            **self.counts(),
            **self._prompts_identity(),
        }


def image_folder(
    root: str,
    split: Optional[str] = None,
    name: Optional[str] = None,
    max_samples: Optional[int] = None,
    decoding: Decoding = Decoding(),
) -> FileImageSet:
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
    data = FileImageSet(
        name or os.path.basename(os.path.normpath(root)),
        files,
        targets,
        content_fingerprint(files, base, decoding),
        max_samples,
        decoding,
    )
    data.classes = classes
    return data


def flickr8k(
    root: str, split: str = "test", max_samples: Optional[int] = None, decoding: Decoding = Decoding()
) -> FileImageSet:
    """The raw Flickr8k release: images of ``Flickr_8k.<split>Images.txt`` with their 5 captions from
    ``Flickr8k.token.txt`` (lines ``IMAGE.jpg#N<TAB>caption``, normalised by ``normalize_caption``; ids without an image
    are ignored; an image whose captions are all empty is skipped and counted as ``empty_caption``)."""
    split_file = os.path.join(root, f"Flickr_8k.{split}Images.txt")
    token_file = os.path.join(root, "Flickr8k.token.txt")
    for path in (split_file, token_file):
        if not os.path.isfile(path):
            raise ConfigError(f"Flickr8k file {path} is missing")
    from captiondata.builders.flickr8k import read_captions  # the one parser of Flickr8k.token.txt

    captions = {
        name: [c for c in (normalize_caption(raw) for raw in texts) if c] for name, texts in read_captions(root).items()
    }
    counters = SampleCounters()
    names = [n for n in read_lines(split_file) if n in captions and os.path.isfile(os.path.join(root, "images", n))]
    if any(not captions[n] for n in names):
        counters.add("empty_caption", sum(1 for n in names if not captions[n]))
        counters.flush()
        names = [n for n in names if captions[n]]
    files = [os.path.join(root, "images", n) for n in names]
    fingerprint = content_fingerprint(files + [token_file, split_file], root, decoding)
    return FileImageSet(
        f"flickr8k-{split}", files, [captions[n] for n in names], fingerprint, max_samples, decoding, counters
    )


def caption_folder(
    root: str, name: Optional[str] = None, max_samples: Optional[int] = None, decoding: Decoding = Decoding()
) -> FileImageSet:
    """Urban-1K style long-caption set: ``image(s)/NAME.<ext>`` paired with ``caption(s)/NAME.txt`` (one caption).

    A caption file that is not UTF-8 (``non_utf8_text``) or empty after ``normalize_caption`` (``empty_caption``), or an
    image without a caption file (``missing_caption``), is skipped and counted.
    """
    image_dir = next((os.path.join(root, d) for d in ("image", "images") if os.path.isdir(os.path.join(root, d))), None)
    caption_dir = next(
        (os.path.join(root, d) for d in ("caption", "captions") if os.path.isdir(os.path.join(root, d))), None
    )
    if image_dir is None or caption_dir is None:
        raise ConfigError(f"caption folder {root} needs image/ (or images/) and caption/ (or captions/) sub-folders")
    counters = SampleCounters()
    files, targets, texts = [], [], []
    for fname in sorted(os.listdir(image_dir)):
        stem, ext = os.path.splitext(fname)
        if ext.lower() not in IMAGE_EXTENSIONS:
            continue
        text_path = os.path.join(caption_dir, stem + ".txt")
        if not os.path.isfile(text_path):
            counters.add("missing_caption")
            continue
        texts.append(text_path)  # read, so part of the identity even when its caption is skipped
        with open(text_path, "rb") as handle:
            raw = handle.read()
        try:
            caption = normalize_caption(decode_text(raw))
        except BadSample as bad:
            counters.add(bad.reason)
            log.warning("caption folder %s: %s skipped (%s)", root, text_path, bad)
            continue
        if not caption:
            counters.add("empty_caption")
            continue
        files.append(os.path.join(image_dir, fname))
        targets.append([caption])
    counters.flush()
    if not files:
        raise ConfigError(f"caption folder {root} has no image with a non-empty UTF-8 caption file")
    fingerprint = content_fingerprint(files + texts, root, decoding)
    return FileImageSet(
        name or os.path.basename(os.path.normpath(root)), files, targets, fingerprint, max_samples, decoding, counters
    )


class ShardStream(_Counted, IterableDataset):
    """Streaming set over tar shards; DataLoader workers split the shard list (worker i reads shards i::n)."""

    def __init__(
        self,
        name: str,
        shards: Sequence[str],
        fingerprint: str,
        max_samples: Optional[int] = None,
        decoding: Decoding = Decoding(),
    ) -> None:
        self.name = name
        self.shards = list(shards)
        self.fingerprint = fingerprint if max_samples is None else sha256_json([fingerprint, "first", max_samples])
        self.max_samples = max_samples
        self.decoding = decoding
        self.counters = SampleCounters()
        self.classes: Optional[List[str]] = None
        self.templates: Optional[List[str]] = None
        self.as_array = False  # images as uint8 HxWx3 arrays (set on a copy by evals.tasks.imageprep.image_loader)

    def my_shards(self) -> List[str]:
        """The shards this process reads."""
        info = get_worker_info()
        return self.shards if info is None else self.shards[info.id :: info.num_workers]

    def samples(self, shards: List[str]) -> Iterator[Tuple[Image.Image, Any]]:
        """(image, target) pairs of the given shards (bad samples skipped and counted in ``self.counters``)."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Tuple[Image.Image, Any]]:
        try:
            for count, item in enumerate(self.samples(self.my_shards())):
                if self.max_samples is not None and count >= self.max_samples:
                    return
                yield item
                if count % 64 == 63:
                    self.counters.flush()
        finally:
            self.counters.flush()

    def raw(self, shards: List[str]) -> Iterator[Dict[str, Any]]:
        """Raw samples through the project's one tar reader (truncated tars, duplicate keys counted here)."""
        from captiondata.reader import raw_samples

        return raw_samples(shards, self.counters)

    def image(self, raw: Dict[str, Any]) -> Any:
        """The RGB image of a raw sample (first of webp/png/jpg/jpeg; a uint8 HxWx3 array when ``as_array``), or None
        when absent or bad (counted)."""
        member = next((m for m in WDS_IMAGE_MEMBERS if m in raw), None)
        if member is None:
            self.counters.add("missing_image")
            return None
        try:
            return decode_image(
                raw[member],
                self.decoding.max_pixels,
                self.decoding.exif_transpose,
                self.counters.add,
                as_array=self.as_array,
            )
        except BadSample as bad:
            self.counters.add(bad.reason)
            log.warning("%s: sample %s of %s skipped (%s)", self.name, raw.get("__key__"), raw.get("__url__"), bad)
            return None

    def text(self, raw: Dict[str, Any], member: str, missing: str = "missing_caption") -> Optional[str]:
        """A text member decoded strictly as UTF-8 (BOM dropped); None when absent (counted as ``missing``) or not UTF-8
        (``non_utf8_text``)."""
        if member not in raw:
            self.counters.add(missing)
            log.warning(
                "%s: sample %s of %s has no .%s member; skipped",
                self.name,
                raw.get("__key__"),
                raw.get("__url__"),
                member,
            )
            return None
        try:
            return decode_text(raw[member])
        except BadSample as bad:
            self.counters.add(bad.reason)
            log.warning("%s: sample %s of %s skipped (%s)", self.name, raw.get("__key__"), raw.get("__url__"), bad)
            return None

    def describe(self) -> Dict[str, Any]:
        """Identity and input counts for records (``skipped``: samples not evaluated, by reason)."""
        return {
            "name": self.name,
            "n_shards": len(self.shards),
            "fingerprint": self.fingerprint,
            **self.counts(),
            **self._prompts_identity(),
        }


def parse_label(data: bytes) -> Optional[int]:
    """A ``.cls`` member's class index (CLIP_benchmark: one integer, surrounding space allowed); None when it is not
    UTF-8 or not an integer."""
    try:
        text = decode_text(data).strip()
    except BadSample:
        return None
    return int(text) if _INTEGER.fullmatch(text) else None


def _wds_shards(root: str, split: str) -> List[str]:
    """CLIP_benchmark's shard list: ``split/{0..n-1}.tar`` from ``split/nshards.txt``, else sorted ``split/*.tar``."""
    folder = os.path.join(root, split)
    nshards_path = os.path.join(folder, "nshards.txt")
    if os.path.isfile(nshards_path):
        with open(nshards_path, encoding="utf-8-sig") as handle:
            return [os.path.join(folder, f"{i}.tar") for i in range(int(handle.read().strip()))]
    if not os.path.isdir(folder):
        raise ConfigError(f"CLIP_benchmark webdataset split folder {folder} does not exist")
    names = sorted((n for n in os.listdir(folder) if n.endswith(".tar")), key=lambda n: (len(n), n))
    if not names:
        raise ConfigError(f"{folder} has no .tar shards")
    return [os.path.join(folder, n) for n in names]


class WdsClassification(ShardStream):
    """CLIP_benchmark webdataset classification layout: ``.cls`` labels, ``classnames.txt``, optional templates.

    A label that is missing or not an integer is skipped and counted (``bad_label``; ``non_utf8_text`` when not UTF-8);
    an integer outside the class range is a ConfigError before any image is encoded (``check_labels``).
    """

    def samples(self, shards: List[str]) -> Iterator[Tuple[Image.Image, int]]:
        for raw in self.raw(shards):
            label = self.label(raw)
            if label is None:
                continue
            image = self.image(raw)
            if image is not None:
                yield image, label

    def label(self, raw: Dict[str, Any]) -> Optional[int]:
        """The sample's class index, or None (counted) when missing, not UTF-8 or not an integer."""
        text = self.text(raw, "cls", missing="bad_label")
        if text is None:
            return None
        label = parse_label(text.encode("utf-8"))
        if label is None:
            self.counters.add("bad_label")
            log.warning(
                "%s: sample %s of %s has no integer .cls label (%r); skipped",
                self.name,
                raw.get("__key__"),
                raw.get("__url__"),
                text[:20],
            )
        return label


class WdsRetrieval(ShardStream):
    """CLIP_benchmark webdataset retrieval layout: ``.txt`` holds the image's captions, one per line (each normalised by
    ``normalize_caption``; a sample with none left is skipped as ``empty_caption``)."""

    def samples(self, shards: List[str]) -> Iterator[Tuple[Image.Image, List[str]]]:
        for raw in self.raw(shards):
            text = self.text(raw, "txt")
            if text is None:
                continue
            captions = normalized_lines(text)
            if not captions:
                self.counters.add("empty_caption")
                continue
            image = self.image(raw)
            if image is not None:
                yield image, captions


def clip_benchmark_wds(
    root: str,
    split: str = "test",
    kind: str = "classification",
    max_samples: Optional[int] = None,
    decoding: Decoding = Decoding(),
) -> ShardStream:
    """A CLIP_benchmark webdataset folder (``kind`` = classification or retrieval)."""
    shards = _wds_shards(root, split)
    extras = [
        os.path.join(root, f) for f in ("classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt")
    ]
    fingerprint = content_fingerprint(shards + [e for e in extras if os.path.isfile(e)], root, decoding)
    name = f"{os.path.basename(os.path.normpath(root))}-{split}"
    if kind == "retrieval":
        return WdsRetrieval(name, shards, fingerprint, max_samples, decoding)
    data = WdsClassification(name, shards, fingerprint, max_samples, decoding)
    if os.path.isfile(extras[0]):
        data.classes = read_classnames(extras[0])
    if os.path.isfile(extras[1]):
        data.templates = read_lines(extras[1])  # checked by load_templates when the task uses them
        data.templates_source = extras[1]
    return data


class ProjectShards(ShardStream):
    """The project's caption shards: target = the sample's texts in the query style ``queries``
    (``captiondata.queries``; default ``references``: its reference captions, its original when none). A sample
    with no text is skipped and counted (``missing_caption``)."""

    def __init__(
        self,
        name: str,
        shards: Sequence[str],
        fingerprint: str,
        max_samples: Optional[int] = None,
        layout: Optional[CaptionLayout] = None,
        decoding: Decoding = Decoding(),
        queries: str = "references",
    ) -> None:
        super().__init__(name, shards, fingerprint, max_samples, decoding)
        self.layout = layout or project_layout()
        self.queries = queries

    def samples(self, shards: List[str]) -> Iterator[Tuple[Image.Image, List[str]]]:
        from captiondata.queries import query_writer
        from captiondata.reader import iter_samples

        writer = query_writer(self.queries)
        for record in iter_samples(
            shards, self.layout, self.counters, self.decoding.max_pixels, self.decoding.exif_transpose
        ):
            try:
                texts = writer(record)
            except ValueError as error:
                raise ConfigError(f"data set {self.name}: queries={self.queries} cannot describe {record.key}: {error}")
            if texts:
                yield record.image, texts
            else:
                self.counters.add("missing_caption")


def project_shards(
    spec: str,
    name: Optional[str] = None,
    max_samples: Optional[int] = None,
    layout: Optional[CaptionLayout] = None,
    decoding: Decoding = Decoding(),
    queries: str = "references",
) -> ProjectShards:
    """Project caption shards from a shard spec (paths, globs, braces, ``::``-joined); fingerprint = the shards' content
    (remote shards: their URLs), the layout, decoding and caption normalisation."""
    from captiondata.reader import expand_shards

    shards = expand_shards(spec)
    layout = layout or project_layout()
    extra: Dict[str, Any] = {"layout": dataclasses.asdict(layout)}
    if queries != "references":  # the default leaves fingerprints (and the caches keyed on them) as they were
        from captiondata.queries import QUERY_STYLES

        extra["queries"] = [queries, QUERY_STYLES[queries][1]]
    fingerprint = content_fingerprint(shards, None, decoding, **extra)
    return ProjectShards(
        name or os.path.basename(shards[0]).split("-")[0], shards, fingerprint, max_samples, layout, decoding, queries
    )


def _shard_labels(url: str) -> Iterator[int]:
    """The integer ``.cls`` labels of one shard, read without decoding any image: a local uncompressed tar is walked by
    ``captiondata.reader.iter_tar`` seeking over every other member's data; remote or compressed shards stream through
    tarfile. Unreadable or truncated shards end quietly here; the evaluation pass itself counts them."""
    from captiondata.reader import TarFormatError, iter_tar, open_shard

    stream = None
    try:
        if is_remote(url):
            stream = open_shard(url)
            archive = tarfile.open(fileobj=stream, mode="r|*")
        else:
            path = url[len("file://") :] if url.startswith("file://") else url
            with open(path, "rb") as handle:
                if not handle.read(512).startswith((b"\x1f\x8b", b"BZh", b"\xfd7zX")):
                    handle.seek(0)
                    for name, data in iter_tar(handle, want=lambda n: n.lower().endswith(".cls"), seekable=True):
                        if data is not None:
                            label = parse_label(data)
                            if label is not None:
                                yield label
                    return
            archive = tarfile.open(path, mode="r:*")
        with archive:
            for info in archive:
                if info.isreg() and info.name.lower().endswith(".cls"):
                    label = parse_label(archive.extractfile(info).read())
                    if label is not None:
                        yield label
    except (tarfile.TarError, TarFormatError, EOFError, OSError, ValueError, ImportError, zlib.error):
        return
    finally:
        if stream is not None:
            stream.close()


def dataset_labels(data: Any) -> Optional[np.ndarray]:
    """The integer class labels of a classification set, without decoding images: a map-style set's ``targets``, a
    webdataset set's ``.cls`` members (one pass over the tar headers, every shard even with ``max_samples``: measured
    0.06 s for 10,000 samples in 10 local shards with ``iter_tar``, 1.0 s with tarfile); None when unknown."""
    if isinstance(data, WdsClassification):
        return np.fromiter((label for url in data.shards for label in _shard_labels(url)), dtype=np.int64)
    targets = getattr(data, "targets", None)
    if targets is not None and all(isinstance(t, (int, np.integer)) for t in targets):
        return np.asarray(targets, dtype=np.int64)
    return None


def check_labels(data: Any, n_classes: int) -> None:
    """ConfigError (one line: the set, the first bad label, how many, the class count) when any label of ``data`` is
    negative or >= ``n_classes``; call before encoding any image. Sets whose labels are unknown are not checked here
    (the metric checks the labels it gets)."""
    labels = dataset_labels(data)
    if labels is None or not labels.size:
        return
    bad = labels[(labels < 0) | (labels >= n_classes)]
    if bad.size:
        raise ConfigError(
            f"data set {getattr(data, 'name', '?')}: label {int(bad[0])} is outside [0, {n_classes}) "
            f"({bad.size} of {labels.size} labels; {n_classes} class names); fix the .cls labels or the class names"
        )


def open_eval_dataset(task: TaskConfig) -> Dataset:
    """The data set a task config names (paths resolved under the data root; images decoded with the task's
    ``max_image_pixels`` and ``exif_transpose``)."""
    path = task.resolved_path()
    kind = "classification" if task.task == "zeroshot_classification" else "retrieval"
    decoding = Decoding(task.max_image_pixels, task.exif_transpose)
    if task.format == "image_folder":
        data: Any = image_folder(path, task.split, task.name, task.max_samples, decoding)
    elif task.format == "clip_benchmark_wds":
        data = clip_benchmark_wds(path, task.split, kind, task.max_samples, decoding)
    elif task.format == "flickr8k":
        data = flickr8k(path, task.split, task.max_samples, decoding)
    elif task.format == "caption_folder":
        data = caption_folder(path, task.name, task.max_samples, decoding)
    else:
        data = project_shards(
            path, task.name, task.max_samples, decoding=decoding, queries=getattr(task, "queries", "references")
        )
    data.name = task.name
    if kind == "classification":
        data.classes = load_classnames(task.classnames, data.classes)
        data.templates = load_templates(
            task.templates, data.templates, getattr(data, "templates_source", "the data set's templates")
        )
    return data


def task_fingerprint(task: TaskConfig) -> str:
    """The identity of everything a task reads (images, targets, class names, templates, decoding): for stage keys,
    so an evaluation set edited in place is evaluated again."""
    data = open_eval_dataset(task)
    return sha256_json([data.fingerprint, data._prompts_identity()])
