"""Time this project's evaluation suite against CLIP_benchmark on the same model, data and settings.

Same random-init open_clip model (fixed seed), same preprocessing and tokenizer, same batch size, same
DataLoader worker count and torch thread count; CLIP_benchmark runs in fp32 (``amp=False``: its default
autocast on CPU is bfloat16, which changes the metrics). Data: the Flickr8k test split (1000 images, 5000
captions, raw release under $RECAP_DATA_ROOT/flickr8k) for retrieval and CIFAR-10 test images (an evenly
spaced subset of ``--cifar-n``) for zero-shot classification with OpenAI's 18 CIFAR templates. Our suite
runs cold (no embedding cache) and includes its bootstrap intervals in its time.

CLIP_benchmark 1.6.2's ``accuracy()`` calls float() on a 1-element array, a TypeError on numpy >= 2.3;
it is replaced by the same computation with ``.item()`` (``cb_accuracy``); the rest of its ``evaluate``
functions run unchanged.

Usage: python benchmarks/eval_vs_clip_benchmark.py [--cifar-n 10000] [--model tiny|small] [--threads 1] [--repeats 2]
Last line: ``evals: max |metric diff| D, speedup S``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any, Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from _common import run_script  # noqa: E402

MODELS = {
    # the default: harness overhead (decode, preprocessing, tokenisation, scoring) dominates its time
    "tiny": dict(embed_dim=64, vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2)),
    # 64 px / patch 8 (64 image tokens): vision compute, identical on both sides, dominates classification
    "small": dict(embed_dim=128, vision_cfg=dict(image_size=64, layers=4, width=128, patch_size=8, head_width=32),
                  text_cfg=dict(context_length=77, vocab_size=49408, width=128, heads=4, layers=4)),
}


def cb_accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> List[float]:
    """CLIP_benchmark's accuracy() with float(array) replaced by .item() (numpy >= 2.3 fix); same definition."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    return [correct[:k].reshape(-1).float().sum(0).item() / n for k in topk]


def build_model(name: str, seed: int):
    """Random-init open_clip CLIP and its eval preprocessing."""
    import open_clip

    torch.manual_seed(seed)
    cfg = MODELS[name]
    model = open_clip.CLIP(**cfg).eval()
    return model, open_clip.image_transform(cfg["vision_cfg"]["image_size"], is_train=False)


def fresh_tokenizer(model) -> Any:
    """A new SimpleTokenizer per run, so neither side inherits the other's warm BPE cache."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=model.context_length)


def warm_file_cache(paths: List[str]) -> None:
    """Read every file once so neither side pays cold-disk reads."""
    for path in paths:
        with open(path, "rb") as handle:
            handle.read()


def run_clip_benchmark(model, preprocess, tokenizer, cifar, flickr, args, tmp: str) -> Tuple[Dict[str, float], Dict[str, float]]:
    """CLIP_benchmark's evaluate() for both tasks on its own dataset classes; returns (metrics, seconds)."""
    import clip_benchmark.metrics.zeroshot_classification as cb_cls
    import clip_benchmark.metrics.zeroshot_retrieval as cb_ret
    from clip_benchmark.datasets.builder import image_captions_collate_fn
    from clip_benchmark.datasets.flickr import Flickr
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder

    from evals.tasks.prompts import CIFAR_TEMPLATES

    cb_cls.accuracy = cb_accuracy
    metrics, seconds = {}, {}
    start = time.perf_counter()
    folder = ImageFolder(args.cifar_dir, transform=preprocess)
    position = {path: i for i, (path, _) in enumerate(folder.samples)}
    subset = Subset(folder, [position[f] for f in cifar.files])
    subset.classes = folder.classes
    loader = DataLoader(subset, batch_size=args.batch_size, num_workers=args.workers, shuffle=False)
    out = cb_cls.evaluate(model, loader, tokenizer, folder.classes, list(CIFAR_TEMPLATES), "cpu", amp=False)
    seconds["classification"] = time.perf_counter() - start
    metrics.update({"top1": out["acc1"], "top5": out["acc5"], "mean_per_class_recall": out["mean_per_class_recall"]})

    ann = os.path.join(tmp, "flickr8k_test_cb.txt")
    with open(ann, "w", encoding="utf-8") as handle:
        handle.write("image,caption\n")
        for path, captions in zip(flickr.files, flickr.targets):
            for caption in captions:
                handle.write(f"{os.path.basename(path)},{caption}\n")
    start = time.perf_counter()
    data = Flickr(os.path.dirname(flickr.files[0]), ann, transform=preprocess)
    loader = DataLoader(data, batch_size=args.batch_size, num_workers=args.workers, shuffle=False, collate_fn=image_captions_collate_fn)
    out = cb_ret.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    seconds["retrieval"] = time.perf_counter() - start
    for k in (1, 5, 10):
        metrics[f"t2i_R@{k}"] = out[f"image_retrieval_recall@{k}"]
        metrics[f"i2t_R@{k}"] = out[f"text_retrieval_recall@{k}"]
    return metrics, seconds


def run_ours(model, preprocess, tokenizer, cifar, flickr, args) -> Tuple[Dict[str, float], Dict[str, float]]:
    """This suite (cold, no cache, with bootstrap intervals) for both tasks; returns (metrics, seconds)."""
    from evals.tasks.config import EvalConfig
    from evals.tasks.retrieval import evaluate_retrieval
    from evals.tasks.zeroshot import evaluate_zeroshot_classification

    cfg = EvalConfig(batch_size=args.batch_size, num_workers=args.workers, cache_dir=None, bootstrap_samples=args.bootstrap)
    metrics, seconds = {}, {}
    start = time.perf_counter()
    result = evaluate_zeroshot_classification(model, tokenizer, preprocess, cifar, cfg, model_id="benchmark")
    seconds["classification"] = time.perf_counter() - start
    metrics.update(result.metrics)
    start = time.perf_counter()
    result = evaluate_retrieval(model, tokenizer, preprocess, flickr, cfg, model_id="benchmark")
    seconds["retrieval"] = time.perf_counter() - start
    metrics.update(result.metrics)
    return metrics, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=None, help="folder with cifar10/ and flickr8k/ (default $RECAP_DATA_ROOT)")
    parser.add_argument("--cifar-n", type=int, default=10000, help="CIFAR-10 test images (evenly spaced subset)")
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both suites (1: steady timings on a shared machine)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for both suites")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples in our suite (0 = none)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternating order; fastest time per task kept")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from captiondata.config import default_data_root
    from evals.tasks.datasets import flickr8k, image_folder
    from evals.tasks.prompts import CIFAR_TEMPLATES

    torch.set_num_threads(args.threads)
    root = os.path.abspath(args.data_root or default_data_root())
    args.cifar_dir = os.path.join(root, "cifar10", "test")
    cifar = image_folder(os.path.join(root, "cifar10"), "test", "cifar10", args.cifar_n)
    cifar.templates = list(CIFAR_TEMPLATES)
    flickr = flickr8k(os.path.join(root, "flickr8k"), "test")
    n_captions = sum(len(c) for c in flickr.targets)
    print(f"model: random-init open_clip CLIP '{args.model}' {MODELS[args.model]}, seed {args.seed}")
    print(f"settings: batch {args.batch_size}, torch threads {args.threads}, loader workers {args.workers}, fp32, cpu, "
          f"best of {args.repeats} alternating runs per side")
    print(f"data: CIFAR-10 test n={len(cifar)} images ({len(cifar.classes)} classes, {len(CIFAR_TEMPLATES)} templates); "
          f"Flickr8k test n={len(flickr)} images, {n_captions} captions")
    warm_file_cache(cifar.files + flickr.files)

    model, preprocess = build_model(args.model, args.seed)
    ref_s: Dict[str, float] = {}
    ours_s: Dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # alternate the order; keep each side's fastest time per task
            for side in (("cb", "ours") if repeat % 2 == 0 else ("ours", "cb")):
                if side == "cb":
                    ref, seconds = run_clip_benchmark(model, preprocess, fresh_tokenizer(model), cifar, flickr, args, tmp)
                    ref_s = {k: min(v, ref_s.get(k, v)) for k, v in seconds.items()}
                else:
                    ours, seconds = run_ours(model, preprocess, fresh_tokenizer(model), cifar, flickr, args)
                    ours_s = {k: min(v, ours_s.get(k, v)) for k, v in seconds.items()}

    print(f"{'metric':<24}{'CLIP_benchmark':>16}{'evals':>16}{'|diff|':>12}")
    diffs = []
    for name, value in ref.items():
        mine = ours[name]
        diff = abs(value - mine) if value == value and mine is not None else (0.0 if mine is None and value != value else float("inf"))
        diffs.append(diff)
        print(f"{name:<24}{value:>16.6f}{(mine if mine is not None else float('nan')):>16.6f}{diff:>12.2e}")
    for task in ("classification", "retrieval"):
        print(f"time {task:<15} CLIP_benchmark {ref_s[task]:7.2f} s   evals {ours_s[task]:7.2f} s   speedup {ref_s[task] / ours_s[task]:5.2f}x")
    total_ref, total_ours = sum(ref_s.values()), sum(ours_s.values())
    print(f"time total          CLIP_benchmark {total_ref:7.2f} s   evals {total_ours:7.2f} s")
    print(f"evals: max |metric diff| {max(diffs):.2e}, speedup {total_ref / total_ours:.2f}")


if __name__ == "__main__":
    run_script(main)
