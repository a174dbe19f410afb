"""``python -m train_clip out_dir=PATH [Hydra overrides]``: compose the project config (conf/) and train one CLIP.

Examples::

    python -m train_clip out_dir=runs/tiny model=tiny train=tiny_cpu data=flickr8k mix.p=0.8
    torchrun --nproc_per_node=2 -m train_clip out_dir=runs/tiny2 train.device=cpu
    torchrun --nnodes=2 --node_rank=R --master_addr=HOST --nproc_per_node=8 -m train_clip out_dir=/shared/runs/b16 ...

The config is composed with Hydra's compose API, so no rank resolves a timestamped run directory of its own:
``out_dir`` is given once on the command line and every rank writes to it (``train.resume=latest`` continues
a killed run there). p (``mix.p``) is the probability of the ORIGINAL caption.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

from captiondata.config import ConfigError

log = logging.getLogger("train_clip")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def split_out_dir(argv: List[str]) -> Tuple[Optional[str], List[str]]:
    """Take ``out_dir=PATH`` out of the arguments; the rest are Hydra overrides."""
    out_dir, overrides = None, []
    for arg in argv:
        if arg.startswith("out_dir="):
            out_dir = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
    return out_dir, overrides


def compose_harness(overrides: List[str]):
    """The project's typed config (conf/config.yaml over evals.schema.HarnessConfig), validated."""
    from hydra import compose, initialize_config_dir

    from evals.schema import register_schema, validate

    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return validate(cfg)


def ensure_shards(data_cfg, timeout_s: float = 3600.0) -> None:
    """Build the configured shards when missing (rank 0; other ranks wait for its build-info.json)."""
    if data_cfg.builder == "none" or data_cfg.train_shards:
        return
    from captiondata.build import BUILD_INFO, build_dataset

    if int(os.environ.get("RANK", "0")) == 0:
        build_dataset(data_cfg)
        return
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(os.path.join(data_cfg.shard_dir, BUILD_INFO)):
        if time.monotonic() > deadline:
            raise ConfigError(f"data.shard_dir={data_cfg.shard_dir!r}: rank 0 did not finish building shards in {timeout_s:.0f} s")
        time.sleep(2.0)


def setup_logging() -> None:
    """INFO logs to stderr, tagged with the rank."""
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")


def main(argv: Optional[List[str]] = None) -> int:
    """Compose, train, report; exit status 2 on a configuration error."""
    setup_logging()
    out_dir, overrides = split_out_dir(sys.argv[1:] if argv is None else argv)
    if not out_dir:
        log.error("give the run directory once for all ranks: python -m train_clip out_dir=PATH [overrides]")
        return 2
    try:
        harness = compose_harness(overrides)
        ensure_shards(harness.data)
        from train_clip.train import train

        result = train(harness.model, harness.train, harness.data, harness.mix, out_dir)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    log.info("done: %d steps, %d samples, %.1f samples/s, final loss %s; export %s", result.steps, result.samples_seen,
             result.samples_per_s, result.final_loss, result.export_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
