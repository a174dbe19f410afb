"""Same metrics as CLIP_benchmark (pip clip-benchmark) to 1e-4, on the same embeddings and end to end.

CLIP_benchmark 1.6.2's ``accuracy()`` calls float() on a 1-element array (TypeError on numpy >= 2.3), so its
classification ``evaluate`` runs here with that one function replaced by the same computation using .item().
CLIP_benchmark runs with amp=False: its default CPU autocast is bfloat16, which changes the numbers.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from conftest import require_module, require_real  # noqa: E402

cb_cls = require_module("clip_benchmark.metrics.zeroshot_classification", "pip install -e '.[dev]'")
cb_ret = require_module("clip_benchmark.metrics.zeroshot_retrieval", "pip install -e '.[dev]'")
from eval_helpers import tiny_clip, write_cb_retrieval, write_image_folder  # noqa: E402
from sklearn.metrics import balanced_accuracy_score  # noqa: E402  (a clip-benchmark dependency)
from torch.utils.data import DataLoader, Dataset, Subset  # noqa: E402
from torchvision.datasets import ImageFolder  # noqa: E402

from captiondata.config import default_data_root  # noqa: E402
from evals.tasks.config import EvalConfig  # noqa: E402
from evals.tasks.datasets import clip_benchmark_wds, flickr8k, image_folder  # noqa: E402
from evals.tasks.prompts import CIFAR_TEMPLATES  # noqa: E402
from evals.tasks.retrieval import evaluate_retrieval, retrieval_result  # noqa: E402
from evals.tasks.zeroshot import classification_result, evaluate_zeroshot_classification  # noqa: E402

TOL = 1e-4
CFG = EvalConfig(cache_dir=None, bootstrap_samples=0, batch_size=16)


def cb_accuracy(output, target, topk=(1,)):
    """CLIP_benchmark's accuracy() with float(array) -> .item() (the numpy >= 2.3 fix); same definition."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum(0).item() / len(target) for k in topk]


@pytest.fixture(autouse=True)
def patched_accuracy(monkeypatch):
    monkeypatch.setattr(cb_cls, "accuracy", cb_accuracy)


@pytest.fixture(scope="module")
def tiny():
    return tiny_clip(seed=0, context_length=77)


def unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("n_classes", [3, 12])
def test_classification_metrics_on_same_embeddings(n_classes):
    images, weights = unit(400, 16, 0), unit(n_classes, 16, 1)
    labels = torch.randint(0, n_classes, (400,), generator=torch.Generator().manual_seed(2))
    ours = classification_result(images, labels, weights, CFG)
    logits = 100.0 * images @ weights.T
    (acc1,) = cb_accuracy(logits, labels, topk=(1,))
    assert abs(ours.metrics["top1"] - acc1) < TOL
    assert abs(ours.metrics["mean_per_class_recall"] - balanced_accuracy_score(labels, logits.argmax(dim=1))) < TOL
    if n_classes >= 5:
        assert abs(ours.metrics["top5"] - cb_accuracy(logits, labels, topk=(5,))[0]) < TOL
    else:  # CLIP_benchmark reports NaN; we report None with the reason
        assert ours.metrics["top5"] is None and "undefined with 3 classes" in ours.undefined["top5"]


def test_retrieval_metrics_on_same_embeddings():
    n_images = 150
    per_image = torch.randint(1, 6, (n_images,), generator=torch.Generator().manual_seed(3))
    owner = torch.repeat_interleave(torch.arange(n_images), per_image)
    images = unit(n_images, 16, 4)
    texts = F.normalize(images[owner] + unit(len(owner), 16, 5), dim=-1)
    ours = retrieval_result(images, texts, owner, CFG)
    scores = texts @ images.T
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(scores)), owner] = True
    for k in (1, 5, 10):
        t2i = (cb_ret.batchify(cb_ret.recall_at_k, scores, positive, 32, "cpu", k=k) > 0).float().mean().item()
        i2t = (cb_ret.batchify(cb_ret.recall_at_k, scores.T, positive.T, 32, "cpu", k=k) > 0).float().mean().item()
        assert abs(ours.metrics[f"t2i_R@{k}"] - t2i) < TOL
        assert abs(ours.metrics[f"i2t_R@{k}"] - i2t) < TOL


def cb_classification(model, tokenizer, preprocess, root, classnames, templates, index=None):
    """CLIP_benchmark's zero-shot classification evaluate() on torchvision's ImageFolder."""
    folder = ImageFolder(root, transform=preprocess)
    data = Subset(folder, index) if index is not None else folder
    data.classes = folder.classes
    loader = DataLoader(data, batch_size=16, shuffle=False)
    return cb_cls.evaluate(model, loader, tokenizer, classnames, templates, "cpu", amp=False)


def test_end_to_end_classification_matches(tiny, tmp_path):
    model, tokenizer, preprocess = tiny
    classes = ["apple", "bus", "cat", "dog", "eel", "fox"]
    root = write_image_folder(str(tmp_path), classes, 5)
    data = image_folder(root, "test")
    ours = evaluate_zeroshot_classification(
        model, tokenizer, preprocess, data, CFG, templates=list(CIFAR_TEMPLATES[:4])
    )
    ref = cb_classification(
        model, tokenizer, preprocess, os.path.join(root, "test"), classes, list(CIFAR_TEMPLATES[:4])
    )
    assert abs(ours.metrics["top1"] - ref["acc1"]) < TOL
    assert abs(ours.metrics["top5"] - ref["acc5"]) < TOL
    assert abs(ours.metrics["mean_per_class_recall"] - ref["mean_per_class_recall"]) < TOL


class CaptionList(Dataset):
    """(preprocessed image, list of captions) items for CLIP_benchmark's retrieval evaluate()."""

    def __init__(self, data, preprocess):
        self.items = [(preprocess(image), captions) for image, captions in data]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def cb_retrieval(model, tokenizer, dataset, batch_size=16):
    from clip_benchmark.datasets.builder import image_captions_collate_fn

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=image_captions_collate_fn)
    out = cb_ret.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    return {
        **{f"t2i_R@{k}": out[f"image_retrieval_recall@{k}"] for k in (1, 5, 10)},
        **{f"i2t_R@{k}": out[f"text_retrieval_recall@{k}"] for k in (1, 5, 10)},
    }


def test_end_to_end_retrieval_on_clip_benchmark_wds_matches(tiny, tmp_path):
    model, tokenizer, preprocess = tiny
    captions = [
        [f"caption {j} of picture {i}" + " with extra words" * (i % 3) for j in range(1 + i % 4)] for i in range(30)
    ]
    data = clip_benchmark_wds(write_cb_retrieval(str(tmp_path), captions), "test", kind="retrieval")
    ours = evaluate_retrieval(model, tokenizer, preprocess, data, CFG)
    ref = cb_retrieval(model, tokenizer, CaptionList(data, preprocess))
    for name, value in ref.items():
        assert abs(ours.metrics[name] - value) < TOL, name


def real(path):
    root = os.path.join(os.path.abspath(default_data_root()), path)
    require_real(root)
    return root


def test_real_cifar10_subset_matches(tiny):
    root = real("cifar10")
    model, tokenizer, preprocess = tiny
    data = image_folder(root, "test", max_samples=1000)
    ours = evaluate_zeroshot_classification(model, tokenizer, preprocess, data, CFG, templates=list(CIFAR_TEMPLATES))
    folder = ImageFolder(os.path.join(root, "test"))
    position = {path: i for i, (path, _) in enumerate(folder.samples)}
    ref = cb_classification(
        model,
        tokenizer,
        preprocess,
        os.path.join(root, "test"),
        data.classes,
        list(CIFAR_TEMPLATES),
        [position[f] for f in data.files],
    )
    for ours_name, ref_name in (("top1", "acc1"), ("top5", "acc5"), ("mean_per_class_recall", "mean_per_class_recall")):
        assert abs(ours.metrics[ours_name] - ref[ref_name]) < TOL


def test_real_flickr8k_subset_matches(tiny, tmp_path):
    from clip_benchmark.datasets.flickr import Flickr

    root = real("flickr8k")
    model, tokenizer, preprocess = tiny
    data = flickr8k(root, "test", max_samples=250)
    ours = evaluate_retrieval(model, tokenizer, preprocess, data, CFG)
    ann = tmp_path / "ann.txt"
    ann.write_text(
        "image,caption\n"
        + "".join(f"{os.path.basename(f)},{c}\n" for f, cs in zip(data.files, data.targets) for c in cs)
    )
    ref = cb_retrieval(model, tokenizer, Flickr(os.path.join(root, "images"), str(ann), transform=preprocess))
    assert ours.n == {"images": 250, "texts": 1250, "image_queries": 250, "tied_t2i_queries": 0, "tied_i2t_queries": 0}
    for name, value in ref.items():
        assert abs(ours.metrics[name] - value) < TOL, name
