"""Image preprocessing split into a per-image PIL stage (in loader workers) and one batched tensor stage.

open_clip's eval transform is ``Compose([Resize, CenterCrop, MaybeConvertMode, MaybeToTensor, Normalize])``.
The last two steps cost more per image than the rest; here they run once per batch on a stacked uint8
array: ``x = uint8 / 255`` then ``(x - mean) / std`` in float32, the same element-wise operations in the
same order, so the result is bit-identical (tests assert ``torch.equal``). Any other pipeline falls back to
calling the transform per image.
"""

from __future__ import annotations

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
        if len(steps) >= 2 and isinstance(steps[-2], T.ToTensor) and isinstance(steps[-1], T.Normalize) and not steps[-1].inplace:
            self.head = T.Compose(steps[:-2])
            self.mean = torch.as_tensor(steps[-1].mean, dtype=torch.float32).view(1, -1, 1, 1)
            self.std = torch.as_tensor(steps[-1].std, dtype=torch.float32).view(1, -1, 1, 1)

    def pil_stage(self, image: Image.Image) -> Any:
        """Per-image work: the PIL transforms, then the raw uint8 array; the full transform when not splittable."""
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


class _Mapped(Dataset):
    """Map-style wrapper applying ``fn`` to the image of each (image, target) item."""

    def __init__(self, data: Dataset, fn: Callable) -> None:
        self.data, self.fn = data, fn

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Tuple[Any, Any]:
        image, target = self.data[index]
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


def image_loader(data: Dataset, split: SplitPreprocess, batch_size: int, num_workers: int) -> Iterator[Tuple[List[Any], List[Any]]]:
    """(list of per-image PIL-stage outputs, list of targets) batches in data set order; a batch whose images were all
    skipped is not yielded."""
    stream = isinstance(data, IterableDataset)
    if stream and getattr(data, "max_samples", None) is not None:
        num_workers = 0  # "first N samples" is only well defined in one reading process
    wrapped = _MappedStream(data, split.pil_stage) if stream else _Mapped(data, split.pil_stage)
    loader = DataLoader(wrapped, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate_lists,
                        persistent_workers=False)
    return (batch for batch in loader if batch[0])
