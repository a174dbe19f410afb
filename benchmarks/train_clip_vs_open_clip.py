"""Training throughput: this project's trainer against open_clip's own trainer, same model, data and budget.

Both train RecapCLIP-tiny (64 px, ViT patch 8) at the paper's text context length (``--context-length``, default
128) on the same Flickr8k caption shards, with the same batch size, steps, loader workers, thread count, AdamW
hyper-parameters and gradient clipping, in each setting of ``--settings``:

- ``p1``: p = 1, the ORIGINAL caption (short alt-text: Flickr8k's first caption, about 12-18 tokens);
- ``p0``: p = 0, the recaption (Flickr8k's five captions merged, up to about 100 tokens);
- ``fp32`` or ``bf16`` (bf16 autocast on both sides: ``train.precision=bf16`` here, ``--precision amp_bf16`` there).

open_clip_train reads ``.txt`` as the caption. In this project's layout ``.txt`` is the original caption, so for
``p0`` the peer reads a copy of the shards whose ``.txt`` holds the recaption (written once into the work folder).
Each run is a fresh process; within a setting runs alternate (ours, peer, ours, peer, ...) so a shared machine's
load hits both alike, and the median of each is reported. Best flags of each side: ours trims text padding to the
batch's longest caption (``train.trim_text_padding``, exact: tests/test_text_trim_training.py); open_clip_train has
no equivalent flag.

Throughput = samples / time spent in the training loop (loader start-up and every step; not model creation,
imports or the final save) for both: ``TrainResult.train_time_s`` here, ``train_one_epoch`` there. End-to-end
process times are printed too.

open_clip_train (shipped inside open_clip_torch) needs webdataset<=0.2.86, which conflicts with the
project's webdataset 1.x, so the peer runs with ``PYTHONPATH=--peer-dir`` holding webdataset 0.2.86
(installed there with ``pip install --target DIR --no-deps`` when missing).

    python benchmarks/train_clip_vs_open_clip.py --shards cache/shards/flickr8k --build    # build them first
    python benchmarks/train_clip_vs_open_clip.py --shards cache/shards/flickr8k --settings p1:fp32
    python benchmarks/train_clip_vs_open_clip.py --synthetic 2000 --shards /tmp/synth      # no Flickr8k at hand

One line per setting ``setting ctx C pX PREC: train_clip X samples/s vs open_clip_train Y samples/s, ratio R``; the
last line is ``train_clip: X samples/s vs open_clip_train Y samples/s, ratio R`` for the first setting (default:
context 128, p = 1, fp32).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _common import run_script  # noqa: E402

from harness_infra.errors import ConfigError  # noqa: E402

log = logging.getLogger("benchmark")
MODEL = "RecapCLIP-tiny"

OURS = """
import json, logging, sys
import train_clip  # first: the package file picks the OpenMP wait policy before torch loads
logging.basicConfig(level=logging.WARNING)
from captiondata.config import DataConfig, MixConfig
from train_clip.config import ClipModelConfig, StageConfig, TrainConfig
from train_clip.train import train
a = json.loads(sys.argv[1])
data = DataConfig(builder="none", train_shards=a["spec"], num_workers=a["workers"])
mix = MixConfig(strategy="original" if a["p"] == 1 else "recap", p=float(a["p"]))
cfg = TrainConfig(stages=[StageConfig(image_size=64, samples=a["steps"] * a["batch"], batch_size=a["batch"], lr=a["lr"],
                  warmup_steps=a["warmup"])], weight_decay=a["wd"], grad_clip_norm=a["clip"], threads=a["threads"],
                  precision=a["precision"], device="cpu", log_every=10, checkpoint_every_steps=0, progress_bar=False, resume=None,
                  tensorboard=False)
r = train(ClipModelConfig(name=a["model"], context_length=a["context_length"]), cfg, data, mix, a["out"])
print("RESULT " + json.dumps({"samples": r.samples_seen, "train_time_s": r.train_time_s, "loss": r.final_loss}))
"""

PEER = """
import json, sys, time
import open_clip_train.main as main
inner = main.train_one_epoch
timing = {"train_time_s": 0.0}
def timed(*args, **kwargs):
    start = time.perf_counter()
    out = inner(*args, **kwargs)
    timing["train_time_s"] += time.perf_counter() - start
    return out
main.train_one_epoch = timed
main.main(sys.argv[1:])
print("RESULT " + json.dumps(timing))
"""


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", required=True, help="folder with train-*.tar caption shards (or where to build them)")
    p.add_argument(
        "--build", action="store_true", help="build Flickr8k shards into --shards first (python -m captiondata.build)"
    )
    p.add_argument(
        "--synthetic", type=int, default=0, help="write this many synthetic samples into --shards instead of Flickr8k"
    )
    p.add_argument("--steps", type=int, default=60)
    p.add_argument(
        "--context-length", type=int, default=128, help="text context length of both models (the paper: 128)"
    )
    p.add_argument(
        "--settings",
        default="p1:fp32,p0:fp32,p1:bf16,p0:bf16",
        help="comma-separated pP:PRECISION settings (P in 0, 1; PRECISION fp32 or bf16); the first gives the last line",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="runs of each trainer (alternating); medians are reported")
    p.add_argument("--peer-dir", default="/tmp/oct_peer", help="isolated site dir for the peer's webdataset 0.2.86")
    p.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        choices=["PASSIVE", "ACTIVE", "unset"],
        help="OMP_WAIT_POLICY for BOTH trainers (default PASSIVE: the same for both, so the ratio measures the "
        "trainers and not OpenMP spinning on a busy machine; 'unset' lets each pick its own)",
    )
    p.add_argument("--work-dir", default=None, help="run folders (default: a temporary folder)")
    return p.parse_args()


def synthetic_records(count: int):
    """Random 128 px JPEGs with short captions (a stand-in when Flickr8k is not at hand)."""
    import io
    import random

    from PIL import Image

    from captiondata.records import Record

    rng = random.Random(0)
    words = ["a", "dog", "cat", "red", "blue", "runs", "sits", "on", "the", "grass", "beach", "ball", "child", "man"]
    for index in range(count):
        image = Image.effect_noise((128, 128), 64).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        caption = " ".join(rng.choice(words) for _ in range(rng.randint(5, 12)))
        yield Record(
            key=f"syn{index:06d}", image=buffer.getvalue(), original=caption, recaptions=[caption + " in detail"]
        )


def build_shards(args: argparse.Namespace) -> None:
    """Flickr8k (captiondata's builder) or synthetic shards into args.shards, unless already there."""
    if glob.glob(os.path.join(args.shards, "train-*.tar")):
        return
    if args.synthetic:
        from captiondata.writer import ShardWriter

        os.makedirs(args.shards, exist_ok=True)
        writer = ShardWriter(args.shards, "train", max_count=250)
        writer.write_all(synthetic_records(args.synthetic))
        writer.close()
        return
    if not args.build:
        raise ConfigError(f"no train-*.tar in {args.shards}; pass --build (Flickr8k) or --synthetic N")
    from captiondata.build import build_shards
    from captiondata.config import DataConfig

    build_shards(DataConfig(name="flickr8k", builder="flickr8k", shard_dir=args.shards, samples_per_shard=250))


def ensure_peer(peer_dir: str) -> None:
    """webdataset 0.2.86 in an isolated folder for open_clip_train (which ships inside open_clip_torch)."""
    if glob.glob(os.path.join(peer_dir, "webdataset-0.2.86*")):
        return
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--target", peer_dir, "--no-deps", "webdataset==0.2.86"],
        check=True,
    )


def peer_model_dir(work: str, context_length: int) -> str:
    """RecapCLIP-tiny at ``context_length`` as an open_clip 'local-dir:' folder, so the peer builds the identical model."""
    import open_clip

    import train_clip.models  # noqa: F401  (registers RecapCLIP-*)

    folder = os.path.join(work, "peer_model")
    os.makedirs(folder, exist_ok=True)
    cfg = open_clip.get_model_config(MODEL)
    cfg = {**cfg, "text_cfg": {**cfg["text_cfg"], "context_length": context_length}}
    with open(os.path.join(folder, "open_clip_config.json"), "w", encoding="utf-8") as handle:
        json.dump({"model_cfg": cfg, "preprocess_cfg": {}}, handle)
    return folder


def recaption_as_txt(urls: List[str], folder: str) -> List[str]:
    """Copies of the shards whose ``.txt`` member holds the sample's first recaption (the peer's caption at p = 0);
    samples without a recaption are left out, as this project's ``recap`` strategy falls back only to the original."""
    import io
    import tarfile

    os.makedirs(folder, exist_ok=True)
    out = []
    for url in urls:
        target = os.path.join(folder, os.path.basename(url))
        out.append(target)
        if os.path.exists(target):
            continue
        members: Dict[str, Dict[str, bytes]] = {}
        with tarfile.open(url) as source:
            for info in source:
                if info.isreg():
                    key, _, ext = info.name.partition(".")
                    members.setdefault(key, {})[ext] = source.extractfile(info).read()
        with tarfile.open(target + ".tmp", "w") as sink:
            for key, parts in members.items():
                recaptions = json.loads(parts.get("json", b"{}")).get("recaptions") or []
                if not recaptions:
                    continue
                for ext, data in {**parts, "txt": recaptions[0].encode("utf-8")}.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    sink.addfile(info, io.BytesIO(data))
        os.replace(target + ".tmp", target)
    return out


def run_process(cmd: List[str], env: Dict[str, str], log_path: str) -> Dict[str, float]:
    """Run one trainer process; its RESULT line plus the end-to-end seconds."""
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as handle:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=handle, text=True, cwd=str(REPO))
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{cmd[2][:40]!r}... failed (exit {proc.returncode}); see {log_path}")
    return {**json.loads(lines[-1][len("RESULT ") :]), "wall_s": wall}


def trainer_env(args: argparse.Namespace, pythonpath: str) -> Dict[str, str]:
    """The environment of one trainer process: same threads (and wait policy, when given) for both."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(PYTHONPATH=pythonpath, OMP_NUM_THREADS=str(args.threads))
    if args.omp_wait_policy != "unset":
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    return env


def parse_settings(text: str) -> List[tuple]:
    """[(p, precision)] from ``p1:fp32,p0:bf16``; a one-line ConfigError for anything else."""
    out = []
    for part in text.split(","):
        p, _, precision = part.strip().partition(":")
        if p not in ("p0", "p1") or precision not in ("fp32", "bf16"):
            raise ConfigError(f"--settings: {part!r} is not pP:PRECISION with P in 0, 1 and PRECISION fp32 or bf16")
        out.append((int(p[1]), precision))
    return out


def run_ours(args: argparse.Namespace, spec: str, work: str, tag: str, p: int, precision: str) -> Dict[str, float]:
    """This project's trainer on the shards."""
    settings = {
        "spec": spec,
        "workers": args.workers,
        "steps": args.steps,
        "batch": args.batch_size,
        "lr": 5e-4,
        "warmup": 5,
        "wd": 0.1,
        "clip": 1.0,
        "threads": args.threads,
        "model": MODEL,
        "out": os.path.join(work, f"ours{tag}"),
        "p": p,
        "precision": precision,
        "context_length": args.context_length,
    }
    env = trainer_env(args, str(REPO))
    result = run_process([sys.executable, "-c", OURS, json.dumps(settings)], env, os.path.join(work, f"ours{tag}.log"))
    return {**result, "samples_per_s": args.steps * args.batch_size / result["train_time_s"]}


def run_peer(
    args: argparse.Namespace, urls: List[str], model_dir: str, work: str, tag: str, precision: str
) -> Dict[str, float]:
    """open_clip_train on the same shards with the same settings."""
    cmd = [
        sys.executable,
        "-c",
        PEER,
        "--train-data",
        "::".join(urls),
        "--dataset-type",
        "webdataset",
        "--train-num-samples",
        str(args.steps * args.batch_size),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        "1",
        "--workers",
        str(args.workers),
        "--model",
        f"local-dir:{model_dir}",
        "--precision",
        "fp32" if precision == "fp32" else "amp_bf16",
        "--lr",
        "5e-4",
        "--warmup",
        "5",
        "--wd",
        "0.1",
        "--grad-clip-norm",
        "1.0",
        "--seed",
        "0",
        "--log-every-n-steps",
        "10",
        "--logs",
        os.path.join(work, f"peer{tag}"),
        "--name",
        "peer",
        "--report-to",
        "",
    ]
    env = trainer_env(args, args.peer_dir)
    result = run_process(cmd, env, os.path.join(work, f"peer{tag}.log"))
    return {**result, "samples_per_s": args.steps * args.batch_size / result["train_time_s"]}


def main() -> None:
    """Per setting, alternate the two trainers and print a ratio line; the first setting's line comes last again."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args()
    settings = parse_settings(args.settings)
    build_shards(args)
    ensure_peer(args.peer_dir)
    urls = sorted(glob.glob(os.path.join(os.path.abspath(args.shards), "train-*.tar")))
    work = args.work_dir or tempfile.mkdtemp(prefix="clip_bench_")
    model_dir = peer_model_dir(work, args.context_length)
    log.info(
        "%d shards, %d steps x batch %d, context %d, %d threads, %d loader worker(s), work dir %s",
        len(urls),
        args.steps,
        args.batch_size,
        args.context_length,
        args.threads,
        args.workers,
        work,
    )
    lines = []
    for p, precision in settings:
        peer_urls = urls if p == 1 else recaption_as_txt(urls, os.path.join(work, "peer_recaption_shards"))
        ours, peer = [], []
        for index in range(args.repeats):
            tag = f"_p{p}_{precision}_{index}"
            ours.append(run_ours(args, "::".join(urls), work, tag, p, precision))
            log.info(
                "p%d %s train_clip run %d: %.1f samples/s (loop %.1f s, process %.1f s)",
                p,
                precision,
                index,
                ours[-1]["samples_per_s"],
                ours[-1]["train_time_s"],
                ours[-1]["wall_s"],
            )
            peer.append(run_peer(args, peer_urls, model_dir, work, tag, precision))
            log.info(
                "p%d %s open_clip_train run %d: %.1f samples/s (loop %.1f s, process %.1f s)",
                p,
                precision,
                index,
                peer[-1]["samples_per_s"],
                peer[-1]["train_time_s"],
                peer[-1]["wall_s"],
            )
        x = statistics.median(r["samples_per_s"] for r in ours)
        y = statistics.median(r["samples_per_s"] for r in peer)
        lines.append((x, y))
        print(
            f"setting ctx {args.context_length} p{p} {precision}: train_clip {x:.1f} samples/s vs open_clip_train {y:.1f} "
            f"samples/s, ratio {x / y:.2f} (end to end: {statistics.median(r['wall_s'] for r in ours):.1f} s vs "
            f"{statistics.median(r['wall_s'] for r in peer):.1f} s)",
            flush=True,
        )
    x, y = lines[0]
    print(f"train_clip: {x:.1f} samples/s vs open_clip_train {y:.1f} samples/s, ratio {x / y:.2f}")


if __name__ == "__main__":
    run_script(main)
