"""A driver run as a subprocess by the crash-safety tests: patch one function to die (``os._exit(9)``, as a SIGKILL
would leave things) when it is called for a path containing a marker, then run an entry point.

    python tests/crash_driver.py MODULE.FUNCTION MARKER ENTRY [ARGS...]

ENTRY is ``pipeline`` (``pipeline.cli.main(ARGS)``), ``write`` (one record with per-query values into ARGS[0]) or
``publish`` (``pipeline.publish.publish_records`` of the records ARGS[1:] into results folder ARGS[0], after the
file ARGS[0]/go appears, so two drivers start together). MODULE.FUNCTION ``-`` patches nothing. The production code
reads no environment variable for this: the patch is applied here, from outside.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from types import SimpleNamespace

import numpy as np

DIE = 9


def patch(target: str, marker: str) -> None:
    """Replace ``target`` by a function that exits at once when its first argument contains ``marker``."""
    if target == "-":
        return
    module_name, attr = target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    real = getattr(module, attr)

    def dying(path, *args, **kwargs):
        if marker in str(path):
            os._exit(DIE)
        return real(path, *args, **kwargs)

    setattr(module, attr, dying)


def write(folder: str) -> int:
    """One record named ``r`` with per-query values 0..9 (mean 4.5)."""
    from evals.results.bootstrap import QueryValues
    from evals.results.records import write_record

    record = {"checkpoint": "c", "task": "t", "metrics": {"m": 4.5}}
    print(write_record(record, folder, {"m": QueryValues(np.arange(10.0), None)}, stem="r", on_exists="new_name"))
    return 0


def publish(results_dir: str, *sources: str) -> int:
    """Publish ``sources`` as the eval output of one fixed run, once ``results_dir/go`` exists."""
    from pipeline.infos import DataInfo, EvalInfo, TrainInfo
    from pipeline.publish import publish_records

    while not os.path.exists(os.path.join(results_dir, "go")):
        time.sleep(0.005)
    cfg = SimpleNamespace(
        experiment="exp",
        mix=SimpleNamespace(p_original=0.5, strategy="mix", reduction=lambda: {}, reduction_label=lambda: "full"),
        model=SimpleNamespace(name="m"),
        data=SimpleNamespace(name="d"),
        train=SimpleNamespace(seed=0),
        trainer="clip",
        run=SimpleNamespace(results_dir=results_dir),
    )
    infos = {"data": DataInfo(fingerprint="f"), "train": TrainInfo(hash="t")}
    print(json.dumps(publish_records(cfg, {}, [], infos, EvalInfo(hash="e", records=list(sources)))))
    return 0


def main() -> int:
    target, marker, entry, *args = sys.argv[1:]
    patch(target, marker)
    if entry == "pipeline":
        from pipeline.cli import main as cli

        return cli(args)
    return {"write": write, "publish": publish}[entry](*args)


if __name__ == "__main__":
    sys.exit(main())
