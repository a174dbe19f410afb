"""Training throughput: this project's trainer against open_clip's own trainer, same model, data and budget.

Both train RecapCLIP-tiny (64 px, ViT patch 8) on the same Flickr8k caption shards, with the same batch size,
steps, loader workers, thread count, fp32, AdamW hyper-parameters and gradient clipping. open_clip_train reads
``.txt`` as the caption; in this project's layout ``.txt`` is the original caption, so both train on the same
text (p = 1, the probability of the ORIGINAL caption). Each run is a fresh process; runs alternate
(ours, peer, ours, peer, ...) so a shared machine's load hits both alike, and the median of each is reported.

Throughput = samples / time spent in the training loop (loader start-up and every step; not model creation,
imports or the final save) for both: ``TrainResult.train_time_s`` here, ``train_one_epoch`` there. End-to-end
process times are printed too.

open_clip_train (shipped inside open_clip_torch) needs webdataset<=0.2.86, which conflicts with the
project's webdataset 1.x, so the peer runs with ``PYTHONPATH=--peer-dir`` holding webdataset 0.2.86
(installed there with ``pip install --target DIR --no-deps`` when missing).

    python benchmarks/train_clip_vs_open_clip.py --shards cache/shards/flickr8k            # shards already built
    python benchmarks/train_clip_vs_open_clip.py --shards cache/shards/flickr8k --build    # build them first
    python benchmarks/train_clip_vs_open_clip.py --synthetic 2000 --shards /tmp/synth      # no Flickr8k at hand

The last line is ``train_clip: X samples/s vs open_clip_train Y samples/s, ratio R``.
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
mix = MixConfig(strategy="original", p=1.0)
cfg = TrainConfig(stages=[StageConfig(image_size=64, samples=a["steps"] * a["batch"], batch_size=a["batch"], lr=a["lr"],
                  warmup_steps=a["warmup"])], weight_decay=a["wd"], grad_clip_norm=a["clip"], threads=a["threads"],
                  precision="fp32", device="cpu", log_every=10, checkpoint_every_steps=0, progress_bar=False, resume=None)
r = train(ClipModelConfig(name=a["model"]), cfg, data, mix, a["out"])
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
    p.add_argument("--build", action="store_true", help="build Flickr8k shards into --shards first (python -m captiondata.build)")
    p.add_argument("--synthetic", type=int, default=0, help="write this many synthetic samples into --shards instead of Flickr8k")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="runs of each trainer (alternating); medians are reported")
    p.add_argument("--peer-dir", default="/tmp/oct_peer", help="isolated site dir for the peer's webdataset 0.2.86")
    p.add_argument("--omp-wait-policy", default=None, choices=["PASSIVE", "ACTIVE"],
                   help="set OMP_WAIT_POLICY for BOTH trainers (default: unset, so each picks its own)")
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
        yield Record(key=f"syn{index:06d}", image=buffer.getvalue(), original=caption, recaptions=[caption + " in detail"])


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
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", peer_dir, "--no-deps", "webdataset==0.2.86"], check=True)


def peer_model_dir(work: str) -> str:
    """RecapCLIP-tiny as an open_clip 'local-dir:' folder, so the peer builds the identical model."""
    import open_clip

    import train_clip.models  # noqa: F401  (registers RecapCLIP-*)

    folder = os.path.join(work, "peer_model")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "open_clip_config.json"), "w", encoding="utf-8") as handle:
        json.dump({"model_cfg": open_clip.get_model_config(MODEL), "preprocess_cfg": {}}, handle)
    return folder


def run_process(cmd: List[str], env: Dict[str, str], log_path: str) -> Dict[str, float]:
    """Run one trainer process; its RESULT line plus the end-to-end seconds."""
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as handle:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=handle, text=True, cwd=str(REPO))
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{cmd[2][:40]!r}... failed (exit {proc.returncode}); see {log_path}")
    return {**json.loads(lines[-1][len("RESULT "):]), "wall_s": wall}


def trainer_env(args: argparse.Namespace, pythonpath: str) -> Dict[str, str]:
    """The environment of one trainer process: same threads (and wait policy, when given) for both."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(PYTHONPATH=pythonpath, OMP_NUM_THREADS=str(args.threads))
    if args.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    return env


def run_ours(args: argparse.Namespace, spec: str, work: str, index: int) -> Dict[str, float]:
    """This project's trainer on the shards."""
    settings = {"spec": spec, "workers": args.workers, "steps": args.steps, "batch": args.batch_size, "lr": 5e-4,
                "warmup": 5, "wd": 0.1, "clip": 1.0, "threads": args.threads, "model": MODEL, "out": os.path.join(work, f"ours{index}")}
    env = trainer_env(args, str(REPO))
    result = run_process([sys.executable, "-c", OURS, json.dumps(settings)], env, os.path.join(work, f"ours{index}.log"))
    return {**result, "samples_per_s": args.steps * args.batch_size / result["train_time_s"]}


def run_peer(args: argparse.Namespace, urls: List[str], model_dir: str, work: str, index: int) -> Dict[str, float]:
    """open_clip_train on the same shards with the same settings."""
    cmd = [sys.executable, "-c", PEER, "--train-data", "::".join(urls), "--dataset-type", "webdataset",
           "--train-num-samples", str(args.steps * args.batch_size), "--batch-size", str(args.batch_size),
           "--epochs", "1", "--workers", str(args.workers), "--model", f"local-dir:{model_dir}", "--precision", "fp32",
           "--lr", "5e-4", "--warmup", "5", "--wd", "0.1", "--grad-clip-norm", "1.0", "--seed", "0",
           "--log-every-n-steps", "10", "--logs", os.path.join(work, f"peer{index}"), "--name", "peer", "--report-to", ""]
    env = trainer_env(args, args.peer_dir)
    result = run_process(cmd, env, os.path.join(work, f"peer{index}.log"))
    return {**result, "samples_per_s": args.steps * args.batch_size / result["train_time_s"]}


def main() -> None:
    """Alternate the two trainers, print each run, then the comparison line."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args()
    build_shards(args)
    ensure_peer(args.peer_dir)
    urls = sorted(glob.glob(os.path.join(os.path.abspath(args.shards), "train-*.tar")))
    work = args.work_dir or tempfile.mkdtemp(prefix="clip_bench_")
    model_dir = peer_model_dir(work)
    log.info("%d shards, %d steps x batch %d, %d threads, %d loader worker(s), work dir %s",
             len(urls), args.steps, args.batch_size, args.threads, args.workers, work)
    ours, peer = [], []
    for index in range(args.repeats):
        ours.append(run_ours(args, "::".join(urls), work, index))
        log.info("train_clip run %d: %.1f samples/s (loop %.1f s, process %.1f s)", index, ours[-1]["samples_per_s"], ours[-1]["train_time_s"], ours[-1]["wall_s"])
        peer.append(run_peer(args, urls, model_dir, work, index))
        log.info("open_clip_train run %d: %.1f samples/s (loop %.1f s, process %.1f s)", index, peer[-1]["samples_per_s"], peer[-1]["train_time_s"], peer[-1]["wall_s"])
    x = statistics.median(r["samples_per_s"] for r in ours)
    y = statistics.median(r["samples_per_s"] for r in peer)
    log.info("end to end (median process seconds): train_clip %.1f s, open_clip_train %.1f s",
             statistics.median(r["wall_s"] for r in ours), statistics.median(r["wall_s"] for r in peer))
    print(f"train_clip: {x:.1f} samples/s vs open_clip_train {y:.1f} samples/s, ratio {x / y:.2f}")


if __name__ == "__main__":
    run_script(main)
