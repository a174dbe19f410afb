"""Training test helpers: in-memory synthetic loaders for the CLIP trainer."""

from __future__ import annotations

from train_clip.data import InMemoryBatches, LoaderFactory, LoaderRequest, synthetic_pairs
from training.stream import BatchSource


def synthetic_factory(num_samples: int, seed: int = 0) -> LoaderFactory:
    """Factory of in-memory synthetic sources, regenerated at each stage's image size."""

    def make(request: LoaderRequest) -> BatchSource:
        """Synthetic pairs at the requested image size for this rank."""
        pairs = synthetic_pairs(num_samples, request.image_size, request.tokenize, seed=seed)
        return InMemoryBatches(
            pairs["image"], pairs["text"], request.batch_size, request.rank, request.world_size, seed=request.seed
        )

    return make
