"""The multi-positive contrastive loss (train_clip.step.MultiPositiveClipLoss, DreamLIP-style): identical to open_clip's
ClipLoss with one text per image (value and gradients), equal to a naive loop with n positives sharing one softmax
denominator, and under DDP (two CPU processes, gloo; local loss + all-gather with gradient) equal to one process on
the same global batch; the caption loader's batches under mix.positives = n (n texts per image, image-major)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from conftest import free_port, make_records
from open_clip.loss import ClipLoss

from train_clip.step import MultiPositiveClipLoss
from training.distributed import DistEnv

WORLD = 2


def features(images: int, n: int, dim: int = 16, seed: int = 0, dtype=torch.float64):
    """Random unit image features [images, dim] and text features [images * n, dim], with gradients."""
    g = torch.Generator().manual_seed(seed)
    image = torch.nn.functional.normalize(torch.randn(images, dim, generator=g, dtype=dtype), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(images * n, dim, generator=g, dtype=dtype), dim=-1)
    return image.requires_grad_(), text.requires_grad_()


def naive_multi_positive(image, text, scale, bias=None):
    """Written out: image i's positives are texts i n ... i n + n - 1; each positive's log-softmax over ALL texts (one
    denominator per image), averaged over positives and images; each text's cross-entropy against its own image."""
    n = len(text) // len(image)
    logits = scale * image @ text.T + (0 if bias is None else bias)
    i2t = []
    for i in range(len(image)):
        denominator = torch.logsumexp(logits[i], dim=0)
        i2t.append(torch.stack([denominator - logits[i, i * n + j] for j in range(n)]).mean())
    t2i = [torch.logsumexp(logits[:, t], dim=0) - logits[t // n, t] for t in range(len(text))]
    return (torch.stack(i2t).mean() + torch.stack(t2i).mean()) / 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [None, -2.5])
def test_one_positive_is_open_clips_clip_loss_exactly(dtype, bias):
    image, text = features(12, 1, dtype=dtype, seed=3)
    scale = torch.tensor(14.3, dtype=dtype, requires_grad=True)
    bias_t = None if bias is None else torch.tensor(bias, dtype=dtype)
    ours = MultiPositiveClipLoss(local_loss=True, gather_with_grad=True)(image, text, scale, logit_bias=bias_t)
    grads = torch.autograd.grad(ours, (image, text, scale))
    theirs = ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True)(image, text, scale, logit_bias=bias_t)
    expected = torch.autograd.grad(theirs, (image, text, scale))
    assert torch.equal(ours, theirs)
    assert all(torch.equal(a, b) for a, b in zip(grads, expected))


@pytest.mark.parametrize("n", [2, 3])
def test_n_positives_share_one_softmax_denominator(n):
    image, text = features(7, n, seed=n)
    scale = torch.tensor(9.0, dtype=torch.float64, requires_grad=True)
    ours = MultiPositiveClipLoss()(image, text, scale)
    reference = naive_multi_positive(image, text, scale)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    for a, b in zip(
        torch.autograd.grad(ours, (image, text, scale)), torch.autograd.grad(reference, (image, text, scale))
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    biased = MultiPositiveClipLoss()(image, text, scale, logit_bias=torch.tensor(-1.0, dtype=torch.float64))
    torch.testing.assert_close(biased, naive_multi_positive(image, text, scale, -1.0), rtol=1e-12, atol=1e-12)


def test_the_denominator_is_shared_not_one_per_positive():
    """Image -> text with one denominator per positive (each positive against the other images' texts only, the
    image's other positives left out) is another loss; ours is the shared one."""
    image, text = features(5, 2, seed=11)
    scale = torch.tensor(5.0, dtype=torch.float64)
    logits = scale * image @ text.T
    t2i = torch.stack([torch.logsumexp(logits[:, t], 0) - logits[t // 2, t] for t in range(10)]).mean()
    shared, separate = [], []
    for i in range(5):
        for j in range(2):
            positive = i * 2 + j
            keep = [t for t in range(10) if t // 2 != i or t == positive]
            shared.append(torch.logsumexp(logits[i], 0) - logits[i, positive])
            separate.append(torch.logsumexp(logits[i, keep], 0) - logits[i, positive])
    ours = MultiPositiveClipLoss()(image, text, scale)
    torch.testing.assert_close(ours, (torch.stack(shared).mean() + t2i) / 2, rtol=1e-12, atol=1e-12)
    assert abs(ours - (torch.stack(separate).mean() + t2i) / 2) > 1e-3


def test_a_text_count_that_is_not_a_multiple_of_the_images_is_refused():
    image, _ = features(4, 1)
    _, text = features(3, 2)
    with pytest.raises(ValueError, match="6 text features for 4 images"):
        MultiPositiveClipLoss()(image, text, torch.tensor(1.0, dtype=torch.float64))


def global_features():
    """The global batch of the DDP comparison: 8 images, n = 2 texts each."""
    image, text = features(8, 2, seed=5)
    return image.detach(), text.detach()


def loss_and_grads(env: DistEnv, image, text, local_loss: bool):
    """Loss (this rank's) and gradients w.r.t. this rank's features."""
    image, text = image.clone().requires_grad_(), text.clone().requires_grad_()
    loss_fn = MultiPositiveClipLoss(
        local_loss=local_loss, gather_with_grad=True, rank=env.rank, world_size=env.world_size
    )
    loss = loss_fn(image, text, torch.tensor(7.0, dtype=torch.float64))
    loss.backward()
    return loss.detach(), image.grad, text.grad


def worker(rank: int, port: int, out_dir: str) -> None:
    """One rank: the loss of its quarter of images (and their texts) against the gathered batch."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from training.distributed import all_reduce_mean, init_distributed, shutdown

    env = init_distributed("cpu")
    image, text = global_features()
    local_image, local_text = image.chunk(WORLD)[rank], text.chunk(WORLD)[rank]  # image-major: pairs stay together
    results = {}
    for local_loss in (True, False):
        loss, image_grad, text_grad = loss_and_grads(env, local_image, local_text, local_loss)
        results[local_loss] = (all_reduce_mean(loss, env), image_grad, text_grad)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    shutdown(env)


def test_distributed_multi_positive_loss_equals_one_process(tmp_path):
    mp.start_processes(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork")
    image, text = global_features()
    expected_loss, image_grad, text_grad = loss_and_grads(DistEnv(), image, text, local_loss=False)
    for rank in range(WORLD):
        results = torch.load(os.path.join(tmp_path, f"rank{rank}.pt"), weights_only=True)
        for local_loss, (loss, got_image, got_text) in results.items():
            torch.testing.assert_close(loss, expected_loss, rtol=1e-10, atol=1e-12)
            # the gather's backward sums every rank's loss gradient into each rank's features (W x the gradient of
            # their mean, the global loss); DDP's averaging over ranks then divides by W
            torch.testing.assert_close(got_image / WORLD, image_grad.chunk(WORLD)[rank], rtol=1e-8, atol=1e-12)
            torch.testing.assert_close(got_text / WORLD, text_grad.chunk(WORLD)[rank], rtol=1e-8, atol=1e-12)


def test_the_loader_gives_n_texts_per_image_image_major_and_counts_per_text(shard_factory):
    from captiondata.config import DataConfig, MixConfig
    from captiondata.loader import CaptionLoader

    records = make_records(24)
    for record in records:
        record.original = f"alt text of {record.key}"
        record.recaptions = [f"First of {record.key}. Second of {record.key}. Third of {record.key}."]
    spec = shard_factory(records, per_shard=8)
    mix = MixConfig(strategy="mix", p=0.5, seed=2, recap_reduce="sub_caption", positives=3)
    loader = CaptionLoader(
        DataConfig(builder="none", train_shards=spec, num_workers=0, shuffle_buffer=4), mix, batch_size=4
    )
    loader.set_epoch(0)
    batches = list(loader)
    assert batches and all(len(b["key"]) == 4 and len(b["text"]) == 12 and len(b["source"]) == 12 for b in batches)
    for batch in batches:
        for i, key in enumerate(batch["key"]):
            for j, text in enumerate(batch["text"][3 * i : 3 * i + 3]):
                source = batch["source"][3 * i + j]
                assert key in text  # image i's texts are rows 3 i .. 3 i + 2
                assert (source, text.count(".")) in (("original", 0), ("recap", 1))  # one sentence of the recaption
    stats = loader.epoch_stats()
    assert stats["samples"] == 24 * 3 and stats["drawn_original"] + stats["drawn_recap"] == 72
