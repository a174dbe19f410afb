"""Image preprocessing split into a per-image PIL stage (in loader workers) and one batched tensor stage.

open_clip's eval transform is ``Compose([Resize, CenterCrop, MaybeConvertMode, MaybeToTensor, Normalize])``.
The last two steps cost more per image than the rest; here they run once per batch on a stacked uint8
array: ``x = uint8 / 255`` then ``(x - mean) / std`` in float32, the same element-wise operations in the
same order, so the result is bit-identical (tests assert ``torch.equal``). Any other pipeline falls back to
calling the transform per image.

When the PIL steps are ``Resize(s)`` (shortest side), ``CenterCrop`` and RGB mode conversions (open_clip's evaluation
transform), ``resize_crop`` does the same work with fewer copies: the same ``Image.resize`` call (none when the image
already has the size, as torchvision skips it), the crop as an array slice; images then come from the data set as
arrays (``FileImageSet.item(as_array=True)``), so an image that needs no resizing never becomes a PIL image (measured:
45 us of 60 us per CIFAR-10 image saved).

With ``num_workers=0`` the loader runs in one background thread that fills a queue of two batches, so decoding
overlaps the model's forward pass (Pillow and torch release the GIL while they work); batches come out in order.
"""

from __future__ import annotations

import copy
import queue
import threading
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torchvision import transforms as T


class SplitPreprocess:
    """``pil_stage(image) -> uint8 HxWxC array`` (or a float CxHxW tensor on fallback) and ``collate(items)``."""

    def __init__(self, preprocess: Callable[[Image.Image], torch.Tensor]) -> None:
        self.preprocess = preprocess
        self.head: Optional[Callable] = None
        self.mean: Optional[torch.Tensor] = None
        self.std: Optional[torch.Tensor] = None
        steps = list(getattr(preprocess, "transforms", []))
        if (
            len(steps) >= 2
            and isinstance(steps[-2], T.ToTensor)
            and isinstance(steps[-1], T.Normalize)
            and not steps[-1].inplace
        ):
            self.head = T.Compose(steps[:-2])
            self.mean = torch.as_tensor(steps[-1].mean, dtype=torch.float32).view(1, -1, 1, 1)
            self.std = torch.as_tensor(steps[-1].std, dtype=torch.float32).view(1, -1, 1, 1)
        self.plan = _resize_crop_plan(steps[:-2]) if self.head is not None else None

    def pil_stage(self, image: Any) -> Any:
        """Per-image work: the PIL transforms, then the raw uint8 array; the full transform when not splittable.
        ``image``: a PIL image or an RGB uint8 HxWx3 array (``FileImageSet.item(as_array=True)``)."""
        if self.plan is not None and (isinstance(image, np.ndarray) or image.mode == "RGB"):
            return resize_crop(image, self.plan)
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image, "RGB")
        if self.head is not None:
            out = self.head(image)
            if isinstance(out, Image.Image) and out.mode == "RGB":
                return np.asarray(out)
        return self.preprocess(image)

    def tensor_stage(self, arrays: Sequence[Any]) -> torch.Tensor:
        """Batch work: stack uint8 HxWxC arrays -> float32 NCHW in [0, 1] -> normalised; tensors are stacked."""
        if self.head is not None and all(isinstance(a, np.ndarray) and a.dtype == np.uint8 for a in arrays):
            x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255)
            return x.sub_(self.mean).div_(self.std)
        return torch.stack([self._finish(a) for a in arrays])

    def _finish(self, item: Any) -> torch.Tensor:
        """One item as a float tensor (uint8 arrays go through ToTensor + Normalize of the original pipeline)."""
        if isinstance(item, torch.Tensor):
            return item
        steps = self.preprocess.transforms
        return steps[-1](steps[-2](item))


def _resize_crop_plan(steps: Sequence[Any]) -> Optional[Tuple[int, Any, int, int]]:
    """(shortest side s, PIL resample filter, crop height, crop width) when ``steps`` are ``Resize(s)`` (one int, no
    max_size), then ``CenterCrop`` no larger than s, then RGB conversions only (open_clip's evaluation transform);
    None for anything else."""
    from torchvision.transforms.functional import pil_modes_mapping

    if len(steps) < 2 or not isinstance(steps[0], T.Resize) or not isinstance(steps[1], T.CenterCrop):
        return None
    resize, crop = steps[0], steps[1]
    size = resize.size[0] if isinstance(resize.size, (list, tuple)) and len(resize.size) == 1 else resize.size
    if not isinstance(size, int) or resize.max_size is not None or resize.interpolation not in pil_modes_mapping:
        return None
    height, width = crop.size
    if height > size or width > size:
        return None
    for step in steps[2:]:
        if not (
            (type(step).__name__ == "MaybeConvertMode" and getattr(step, "mode", None) == "RGB")
            or getattr(step, "__name__", "") == "_convert_to_rgb"
        ):
            return None
    return size, pil_modes_mapping[resize.interpolation], height, width


def resize_crop(image: Any, plan: Tuple[int, Any, int, int]) -> np.ndarray:
    """torchvision's ``Resize(s)`` + ``CenterCrop((h, w))`` on an RGB PIL image or uint8 HxWx3 array, as a uint8 array:
    the same output size rule (``_compute_resized_output_size``), the same ``PIL.Image.resize`` call (skipped when the
    size is unchanged, as torchvision does), the same crop offsets (``round((H - h) / 2)``), the crop taken by slicing
    the array instead of ``Image.crop`` + ``np.asarray`` (one copy less)."""
    size, resample, crop_h, crop_w = plan
    width, height = (image.shape[1], image.shape[0]) if isinstance(image, np.ndarray) else image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) != (width, height):
        pil = Image.fromarray(image, "RGB") if isinstance(image, np.ndarray) else image
        image = pil.resize((new_w, new_h), resample)
    array = image if isinstance(image, np.ndarray) else np.asarray(image)
    top, left = int(round((new_h - crop_h) / 2.0)), int(round((new_w - crop_w) / 2.0))
    return array[top : top + crop_h, left : left + crop_w]


class _Mapped(Dataset):
    """Map-style wrapper applying ``fn`` to the image of each (image, target) item."""

    def __init__(self, data: Dataset, fn: Callable, as_array: bool = False) -> None:
        self.data, self.fn, self.as_array = data, fn, as_array
        self.item = getattr(data, "item", None)

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitems__(self, indices: Sequence[int]) -> List[Tuple[Any, Any]]:
        """A batch of items; a set with ``item`` and ``counters`` flushes its counts once per batch, not per image."""
        counters = getattr(self.data, "counters", None)
        if self.item is None or counters is None:
            return [self[index] for index in indices]
        out = []
        for index in indices:
            image, target = self.item(index, as_array=self.as_array, flush=False)
            out.append(((None if image is None else self.fn(image)), target))
        counters.flush()
        return out

    def __getitem__(self, index: int) -> Tuple[Any, Any]:
        image, target = self.item(index, as_array=self.as_array) if self.item is not None else self.data[index]
        return (None if image is None else self.fn(image)), target  # None: an image the set skipped (and counted)


class _MappedStream(IterableDataset):
    """Iterable wrapper applying ``fn`` to the image of each (image, target) item."""

    def __init__(self, data: IterableDataset, fn: Callable) -> None:
        self.data, self.fn = data, fn

    def __iter__(self):
        for image, target in self.data:
            yield self.fn(image), target


def _collate_lists(batch: List[Tuple[Any, Any]]) -> Tuple[List[Any], List[Any]]:
    """Keep images (arrays) and targets as lists; the tensor stage runs in the main process. Items whose image is None
    (skipped by a map-style set, which counted why) are dropped with their targets."""
    kept = [b for b in batch if b[0] is not None]
    return [b[0] for b in kept], [b[1] for b in kept]


def image_loader(
    data: Dataset, split: SplitPreprocess, batch_size: int, num_workers: int
) -> Iterator[Tuple[List[Any], List[Any]]]:
    """(list of per-image PIL-stage outputs, list of targets) batches in data set order; a batch whose images were all
    skipped is not yielded."""
    stream = isinstance(data, IterableDataset)
    if stream and getattr(data, "max_samples", None) is not None:
        num_workers = 0  # "first N samples" is only well defined in one reading process
    if stream and split.plan is not None and hasattr(data, "as_array"):
        data = copy.copy(data)  # shares the counters; yields arrays for resize_crop
        data.as_array = True
    wrapped = (
        _MappedStream(data, split.pil_stage)
        if stream
        else _Mapped(data, split.pil_stage, as_array=split.plan is not None)
    )
    loader = DataLoader(
        wrapped,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate_lists,
        persistent_workers=False,
    )
    batches = iter(loader) if num_workers else _background(iter(loader))
    return (batch for batch in batches if batch[0])


_DONE = object()


def _background(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """``items`` produced by one background thread, at most ``depth`` ahead of the consumer, in order; an exception in
    the producer is raised in the consumer. Closing the generator early stops the producer at its next item."""
    slots: "queue.Queue[Any]" = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put((True, item))
        except BaseException as exc:  # re-raised in the consumer
            slots.put((False, exc))
            return
        slots.put((True, _DONE))

    worker = threading.Thread(target=produce, name="eval-decode", daemon=True)
    worker.start()
    try:
        while True:
            ok, item = slots.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(0.01)
