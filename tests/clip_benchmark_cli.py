"""Run CLIP_benchmark's own CLI (``clip_benchmark.cli.main``, the ``clip_benchmark`` console script) with one fix.

CLIP_benchmark 1.6.2's ``metrics.zeroshot_classification.accuracy`` calls ``float()`` on a 1-element numpy array,
a TypeError on numpy >= 2.3 (the project installs numpy 2.4). Where numpy >= 2.3 is installed, that one function is
replaced here by the same computation with ``.item()``; everything else (data loading, prompts, the other metrics,
the JSON output) is CLIP_benchmark's unchanged. Usage: ``python tests/clip_benchmark_cli.py eval ...`` as
``clip_benchmark eval ...``.
"""

from __future__ import annotations

import sys

import numpy
from clip_benchmark import cli
from clip_benchmark.metrics import zeroshot_classification


def accuracy(output, target, topk=(1,)):
    """CLIP_benchmark's accuracy() (top-k fraction correct) with float(array) replaced by .item()."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum(0).item() / len(target) for k in topk]


if tuple(int(x) for x in numpy.__version__.split(".")[:2]) >= (2, 3):
    zeroshot_classification.accuracy = accuracy

if __name__ == "__main__":
    sys.argv[0] = "clip_benchmark"
    cli.main()
