"""Time this project's evaluation against CLIP_benchmark on every task kind: same model, data, fp32, batch, workers.

Same random-init open_clip model (fixed seed), same preprocessing and tokenizer, same batch size, same DataLoader
worker count and torch thread count; CLIP_benchmark runs in fp32 (``amp=False``: its default autocast on CPU is
bfloat16, which changes the metrics). Task kinds, each timed from the data set's construction (ours: listing,
content fingerprint with its in-process memo cleared, labels check; CLIP_benchmark: ImageFolder / WebDataset / Flickr
annotation parsing) to the metrics, uncached (our suite runs without an embedding cache and includes its bootstrap
intervals):

- ``cifar10_folder``: zero-shot classification of CIFAR-10 test JPEGs (32 px) from class folders, OpenAI's 18 CIFAR
  templates (an evenly spaced subset of ``--cifar-n``);
- ``digits_folder``: zero-shot classification of a generated class folder of sklearn's 1,797 handwritten digits
  (8 x 8 grey PNGs, as the issue's sklearn-digits run), one template;
- ``cifar10_wds``: the same CIFAR-10 images as a CLIP_benchmark webdataset (``test/{0..9}.tar`` + ``.cls``,
  classnames.txt, templates file), read by CLIP_benchmark's ``build_wds_dataset`` and our ``clip_benchmark_wds``;
- ``flickr8k_retrieval``: the Flickr8k test split (1,000 images, 5,000 captions; CLIP_benchmark's Flickr class).

CLIP_benchmark 1.6.2's ``accuracy()`` calls float() on a 1-element array, a TypeError on numpy >= 2.3; it is replaced
by the same computation with ``.item()`` (``cb_accuracy``); the rest of its ``evaluate`` functions run unchanged.
Each repeat runs both sides back to back (order alternating); the ratio per kind is the median over repeats of
CLIP_benchmark's time / ours. ``--bf16`` also runs our suite in bf16 autocast and prints its speed and metric change.
``model_bound`` per kind: CLIP_benchmark's time / the model's own forward time over the same images and texts (no
decoding): what any harness running this model on one core could reach at most without overlapping decoding.

Usage: python benchmarks/eval_vs_clip_benchmark.py [--cifar-n 10000] [--model tiny|small] [--threads 1] [--repeats 3]
[--kinds cifar10_folder,digits_folder,cifar10_wds,flickr8k_retrieval] [--bf16]
Per kind: ``eval KIND: ours X images/s vs CLIP_benchmark Y images/s, ratio R``; last line (the slowest kind):
``eval: ours X images/s vs CLIP_benchmark Y images/s, ratio R``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from _common import run_script  # noqa: E402

MODELS = {
    # the default: harness overhead (decode, preprocessing, tokenisation, scoring) dominates its time
    "tiny": dict(
        embed_dim=64,
        vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32),
        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
    ),
    # 64 px / patch 8 (64 image tokens): vision compute, identical on both sides, dominates classification
    "small": dict(
        embed_dim=128,
        vision_cfg=dict(image_size=64, layers=4, width=128, patch_size=8, head_width=32),
        text_cfg=dict(context_length=77, vocab_size=49408, width=128, heads=4, layers=4),
    ),
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


KINDS = ("cifar10_folder", "digits_folder", "cifar10_wds", "flickr8k_retrieval")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES = ('a photo of the number: "{c}".',)


def write_digits_folder(root: str) -> None:
    """sklearn's 1,797 8 x 8 digits as grey PNGs in class folders ``root/test/<name>/NNNN.png`` (0..16 scaled to 0..255)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = os.path.join(root, "test", DIGIT_NAMES[label])
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(np.round(image * 255 / 16).astype(np.uint8), "L").save(os.path.join(folder, f"{index:04d}.png"))


def write_cifar_wds(
    root: str, files: List[str], labels: List[int], classes: List[str], templates: List[str], shards: int = 10
) -> None:
    """CLIP_benchmark's webdataset layout of the given JPEGs (their bytes as stored) with ``.cls`` labels."""
    import io
    import tarfile

    os.makedirs(os.path.join(root, "test"), exist_ok=True)
    per = -(-len(files) // shards)
    for shard in range(shards):
        with tarfile.open(os.path.join(root, "test", f"{shard}.tar"), "w") as tar:
            for index in range(shard * per, min(len(files), (shard + 1) * per)):
                for suffix, data in (("jpg", open(files[index], "rb").read()), ("cls", str(labels[index]).encode())):
                    info = tarfile.TarInfo(f"s{index:06d}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    for name, lines in (
        ("test/nshards.txt", [str(shards)]),
        ("classnames.txt", classes),
        ("zeroshot_classification_templates.txt", templates),
    ):
        with open(os.path.join(root, name), "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")


def cb_kind(kind: str, model, preprocess, tokenizer, args) -> Tuple[Dict[str, float], int]:
    """CLIP_benchmark's evaluate() on one task kind with its own dataset classes; returns (metrics, images)."""
    import clip_benchmark.metrics.zeroshot_classification as cb_cls
    import clip_benchmark.metrics.zeroshot_retrieval as cb_ret
    from clip_benchmark.datasets.builder import build_wds_dataset, image_captions_collate_fn
    from clip_benchmark.datasets.flickr import Flickr
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder

    from evals.tasks.prompts import CIFAR_TEMPLATES

    cb_cls.accuracy = cb_accuracy
    if kind == "flickr8k_retrieval":
        data = Flickr(args.flickr_images, args.flickr_ann, transform=preprocess)
        loader = DataLoader(
            data,
            batch_size=args.batch_size,
            num_workers=args.workers,
            shuffle=False,
            collate_fn=image_captions_collate_fn,
        )
        out = cb_ret.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
        metrics = {}
        for k in (1, 5, 10):
            metrics[f"t2i_R@{k}"] = out[f"image_retrieval_recall@{k}"]
            metrics[f"i2t_R@{k}"] = out[f"text_retrieval_recall@{k}"]
        return metrics, len(data)
    if kind == "cifar10_wds":
        data = build_wds_dataset("wds/cifar10", transform=preprocess, split="test", data_dir=args.wds_dir)
        loader = DataLoader(data.batched(args.batch_size), batch_size=None, shuffle=False, num_workers=args.workers)
        classes, templates, n = data.classes, data.templates, args.n_cifar
    else:
        folder = ImageFolder(args.cifar_dir if kind == "cifar10_folder" else args.digits_dir, transform=preprocess)
        if kind == "cifar10_folder":
            position = {path: i for i, (path, _) in enumerate(folder.samples)}
            classes_of_folder = folder.classes
            folder = Subset(folder, [position[f] for f in args.cifar_files])
            folder.classes = classes_of_folder
            classes, templates = args.cifar_classes, list(CIFAR_TEMPLATES)
        else:
            classes, templates = list(DIGIT_NAMES), list(DIGIT_TEMPLATES)
        loader = DataLoader(folder, batch_size=args.batch_size, num_workers=args.workers, shuffle=False)
        n = len(folder)
    out = cb_cls.evaluate(model, loader, tokenizer, classes, templates, "cpu", amp=False)
    return {"top1": out["acc1"], "top5": out["acc5"], "mean_per_class_recall": out["mean_per_class_recall"]}, n


def ours_kind(kind: str, model, preprocess, tokenizer, args, precision: str = "fp32") -> Tuple[Dict[str, float], int]:
    """This suite on one task kind (data set built inside the timed call, no embedding cache, bootstrap included)."""
    from evals.tasks.config import EvalConfig
    from evals.tasks.datasets import clip_benchmark_wds, flickr8k, image_folder
    from evals.tasks.prompts import CIFAR_TEMPLATES
    from evals.tasks.retrieval import evaluate_retrieval
    from evals.tasks.zeroshot import evaluate_zeroshot_classification
    from harness_infra import identity

    identity._SHA256_MEMO.clear()  # uncached: the content fingerprint reads every file again
    cfg = EvalConfig(
        batch_size=args.batch_size,
        num_workers=args.workers,
        cache_dir=None,
        bootstrap_samples=args.bootstrap,
        precision=precision,
    )
    if kind == "flickr8k_retrieval":
        data = flickr8k(args.flickr_root, "test")
        return dict(evaluate_retrieval(model, tokenizer, preprocess, data, cfg, model_id="benchmark").metrics), len(
            data
        )
    if kind == "cifar10_wds":
        data = clip_benchmark_wds(args.wds_dir, "test", "classification")
        n = args.n_cifar
    elif kind == "cifar10_folder":
        data = image_folder(args.cifar_root, "test", "cifar10", args.cifar_n)
        data.templates = list(CIFAR_TEMPLATES)
        n = len(data)
    else:
        data = image_folder(args.digits_dir, None, "digits")
        data.classes, data.templates = list(DIGIT_NAMES), list(DIGIT_TEMPLATES)
        n = len(data)
    return dict(
        evaluate_zeroshot_classification(model, tokenizer, preprocess, data, cfg, model_id="benchmark").metrics
    ), n


def model_seconds(kind: str, model, tokenizer, args) -> float:
    """The model's own forward time on this kind's images (random pixels) and texts: the floor of any harness."""
    from evals.tasks.prompts import CIFAR_TEMPLATES

    n = {
        "cifar10_folder": args.n_cifar,
        "cifar10_wds": args.n_cifar,
        "digits_folder": 1797,
        "flickr8k_retrieval": 1000,
    }[kind]
    texts = {
        "cifar10_folder": 10 * len(CIFAR_TEMPLATES),
        "cifar10_wds": 10 * len(CIFAR_TEMPLATES),
        "digits_folder": 10,
        "flickr8k_retrieval": 5000,
    }[kind]
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    pixels = torch.randn(min(n, args.batch_size), 3, size, size)
    tokens = tokenizer(["a photo of a small dog on the grass"] * min(texts, args.batch_size))
    with torch.inference_mode():
        start = time.perf_counter()
        for done in range(0, n, args.batch_size):
            model.encode_image(pixels[: min(args.batch_size, n - done)])
        for done in range(0, texts, args.batch_size):
            model.encode_text(tokens[: min(args.batch_size, texts - done)])
        return time.perf_counter() - start


def metric_diff(ref: Dict[str, float], mine: Dict[str, Any]) -> float:
    """max |difference| over the reference's metrics (NaN == None counts as equal)."""
    diffs = []
    for name, value in ref.items():
        other = mine.get(name)
        if other is None:
            diffs.append(0.0 if value != value else float("inf"))
        else:
            diffs.append(abs(value - other))
    return max(diffs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-root", default=None, help="folder with cifar10/ and flickr8k/ (default $RECAP_DATA_ROOT)"
    )
    parser.add_argument("--cifar-n", type=int, default=10000, help="CIFAR-10 test images (evenly spaced subset)")
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for both suites (1: steady timings on a shared machine)"
    )
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for both suites")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples in our suite (0 = none)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per side per kind, alternating order; median ratio"
    )
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated task kinds: " + ", ".join(KINDS))
    parser.add_argument(
        "--bf16", action="store_true", help="also run our suite in bf16 autocast (speed and metric change)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from captiondata.config import default_data_root
    from evals.tasks.datasets import flickr8k, image_folder
    from evals.tasks.prompts import CIFAR_TEMPLATES

    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise SystemExit(f"unknown kinds {unknown}; choose from {KINDS}")
    torch.set_num_threads(args.threads)
    root = os.path.abspath(args.data_root or default_data_root())
    args.cifar_root, args.flickr_root = os.path.join(root, "cifar10"), os.path.join(root, "flickr8k")
    args.cifar_dir = os.path.join(args.cifar_root, "test")
    cifar = image_folder(args.cifar_root, "test", "cifar10", args.cifar_n)
    args.cifar_files, args.cifar_classes, args.n_cifar = cifar.files, cifar.classes, len(cifar)
    flickr = flickr8k(args.flickr_root, "test")
    print(f"model: random-init open_clip CLIP '{args.model}' {MODELS[args.model]}, seed {args.seed}")
    print(
        f"settings: batch {args.batch_size}, torch threads {args.threads}, loader workers {args.workers}, fp32, cpu, "
        f"{args.repeats} alternating repeats per kind, median ratio; our bootstrap {args.bootstrap}"
    )
    model, preprocess = build_model(args.model, args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        args.flickr_images = os.path.dirname(flickr.files[0])
        args.flickr_ann = os.path.join(tmp, "flickr8k_test_cb.txt")
        with open(args.flickr_ann, "w", encoding="utf-8") as handle:
            handle.write("image,caption\n")
            for path, captions in zip(flickr.files, flickr.targets):
                for caption in captions:
                    handle.write(f"{os.path.basename(path)},{caption}\n")
        args.digits_dir = os.path.join(tmp, "digits")
        write_digits_folder(args.digits_dir)
        args.digits_dir = os.path.join(args.digits_dir, "test")
        args.wds_dir = os.path.join(tmp, "cifar10_wds")
        write_cifar_wds(args.wds_dir, cifar.files, cifar.targets, cifar.classes, list(CIFAR_TEMPLATES))
        warm_file_cache(cifar.files + flickr.files)
        for kind in kinds:
            ratios, ours_t, ref_t = [], [], []
            for repeat in range(args.repeats):
                times = {}
                for side in ("cb", "ours") if repeat % 2 == 0 else ("ours", "cb"):
                    tokenizer = fresh_tokenizer(model)
                    start = time.perf_counter()
                    if side == "cb":
                        ref, n = cb_kind(kind, model, preprocess, tokenizer, args)
                    else:
                        ours, n = ours_kind(kind, model, preprocess, tokenizer, args)
                    times[side] = time.perf_counter() - start
                ratios.append(times["cb"] / times["ours"])
                ours_t.append(times["ours"])
                ref_t.append(times["cb"])
            bound = statistics.median(ref_t) / model_seconds(kind, model, fresh_tokenizer(model), args)
            row = dict(
                kind=kind,
                n=n,
                ratio=statistics.median(ratios),
                ours=n / statistics.median(ours_t),
                ref=n / statistics.median(ref_t),
                diff=metric_diff(ref, ours),
                bound=bound,
                ratios=ratios,
            )
            if args.bf16:
                tokenizer = fresh_tokenizer(model)
                start = time.perf_counter()
                low, _ = ours_kind(kind, model, preprocess, tokenizer, args, precision="bf16")
                row["bf16"] = (n / (time.perf_counter() - start), metric_diff(ours, low))
            rows.append(row)
            print(
                f"eval {kind}: ours {row['ours']:.0f} images/s vs CLIP_benchmark {row['ref']:.0f} images/s, ratio {row['ratio']:.2f} "
                f"(repeats {' '.join(f'{r:.2f}' for r in ratios)}; max |metric diff| {row['diff']:.1e}; model_bound {bound:.2f}"
                + (
                    f"; bf16: {row['bf16'][0]:.0f} images/s, max |metric change| vs fp32 {row['bf16'][1]:.1e}"
                    if args.bf16
                    else ""
                )
                + ")",
                flush=True,
            )
    worst = min(rows, key=lambda r: r["ratio"])
    print(
        f"eval: ours {worst['ours']:.0f} images/s vs CLIP_benchmark {worst['ref']:.0f} images/s, ratio {worst['ratio']:.2f}"
    )


if __name__ == "__main__":
    run_script(main)
