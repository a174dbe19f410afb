"""The content fingerprint of an evaluation folder in a fresh process: without the cross-process sha256 memo (every
file read and hashed) against with it (harness_infra.identity.DiskMemo: stat, then one SQLite lookup per file).

    python benchmarks/fingerprint_memo.py [--folder $RECAP_DATA_ROOT/cifar10/test] [--repeats 3]
    python benchmarks/fingerprint_memo.py --shards 8 --shard-mb 64      # shard-sized files in a scratch folder

Each measurement is its own Python process (``files_fingerprint`` over every file of the folder), so the in-process
memo never answers; the page cache is warm after the first pass (a cold cache, or a network file system, makes
hashing slower and the memo's gain larger). Prints seconds per pass and the ratio; both passes must give the same
fingerprint.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from _common import run_script

from captiondata.config import default_data_root
from harness_infra.errors import ConfigError

SCRIPT = (
    "import os, sys\n"
    "from harness_infra.identity import files_fingerprint\n"
    "files = sorted(os.path.join(d, f) for d, _, fs in os.walk(sys.argv[1]) for f in fs)\n"
    "print(len(files), files_fingerprint(files, sys.argv[1]))\n"
)


def one_pass(folder: str, memo: str) -> tuple:
    env = {**os.environ, "RECAP_SHA256_MEMO": memo}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", SCRIPT, folder], env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, out.stdout.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=os.path.join(default_data_root(), "cifar10", "test"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shards", type=int, default=0, help="instead of --folder: this many random files ...")
    parser.add_argument("--shard-mb", type=int, default=64, help="... of this many MiB each")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        if args.shards:
            args.folder = os.path.join(scratch, "shards")
            os.makedirs(args.folder)
            for i in range(args.shards):
                with open(os.path.join(args.folder, f"train-{i:06d}.tar"), "wb") as handle:
                    handle.write(os.urandom(args.shard_mb << 20))
            old = time.time_ns() - 10**10  # older than the racy window, so the first pass may memoise them
            for name in os.listdir(args.folder):
                os.utime(os.path.join(args.folder, name), ns=(old, old))
            time.sleep(2.1)  # ctime too
        if not os.path.isdir(args.folder):
            raise ConfigError(f"--folder {args.folder} is not a folder")
        memo = os.path.join(scratch, "memo.sqlite3")
        empty = os.path.join(scratch, "empty")
        os.makedirs(empty)
        startup, _ = one_pass(empty, "off")  # interpreter and import time, subtracted from both sides
        one_pass(args.folder, memo)  # fills the memo and warms the page cache
        without, with_memo, answers = [], [], set()
        for _ in range(args.repeats):
            seconds, answer = one_pass(args.folder, "off")
            without.append(seconds - startup)
            answers.add(tuple(answer))
            seconds, answer = one_pass(args.folder, memo)
            with_memo.append(seconds - startup)
            answers.add(tuple(answer))
    if len(answers) != 1:
        raise SystemExit(f"error: the fingerprints differ: {answers}")
    files = next(iter(answers))[0]
    a, b = statistics.median(without), statistics.median(with_memo)
    print(f"folder {args.folder}: {files} files; median of {args.repeats} fresh processes, import time subtracted")
    print(f"  without the memo (read + sha256 every file): {a:.3f} s")
    print(f"  with the cross-process memo (stat + lookup):  {b:.3f} s")
    print(f"  ratio without / with: {a / b:.2f}x")


if __name__ == "__main__":
    run_script(main)
