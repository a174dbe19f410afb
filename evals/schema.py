"""The top-level typed config: one dataclass per Hydra group, registered in Hydra's ConfigStore.

``conf/config.yaml`` lists ``harness_schema`` first in its defaults, so every group file merges into
these types (a wrong type fails at composition) and ``validate`` instantiates the dataclasses, whose
``__post_init__`` checks ranges (p in [0, 1], positive batch sizes, known strategies) with one-line messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from captiondata.config import ConfigError, DataConfig, MixConfig, require
from evals.config import EvalConfig
from train_clip.config import ClipModelConfig, TrainConfig

STAGES = ("data", "train", "eval", "tables")


@dataclass
class RunConfig:
    """Where a run writes and what it forces.

    ``out_root``: stage outputs, each in a folder keyed by the hash of its config and inputs.
    ``results_dir``: result records, tables and plots. ``rerun``: a stage to run even when complete.
    ``stop_after``: last stage to run (null = all).
    """

    out_root: str = "cache/runs"
    results_dir: str = "results"
    rerun: Optional[str] = None
    stop_after: Optional[str] = None

    def __post_init__(self) -> None:
        require(self.rerun in (None,) + STAGES, f"run.rerun={self.rerun!r} is unknown; choose one of {', '.join(STAGES)}")
        require(self.stop_after in (None,) + STAGES, f"run.stop_after={self.stop_after!r} is unknown; choose one of {', '.join(STAGES)}")


@dataclass
class HarnessConfig:
    """Everything one experiment needs; ``experiment`` names the overlay that built it."""

    data: DataConfig = field(default_factory=DataConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    model: ClipModelConfig = field(default_factory=ClipModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    experiment: str = "default"


def register_schema() -> None:
    """Register HarnessConfig as ``harness_schema`` (idempotent)."""
    ConfigStore.instance().store(name="harness_schema", node=HarnessConfig)


def validate(cfg: DictConfig) -> HarnessConfig:
    """Instantiate and range-check a composed config; any problem becomes a one-line ConfigError."""
    try:
        harness = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as exc:
        raise ConfigError(one_line(exc)) from None
    except ValueError as exc:  # a __post_init__ re-wrapped by OmegaConf
        raise ConfigError(one_line(exc)) from None
    if not isinstance(harness, HarnessConfig):
        raise ConfigError("the composed config is not a HarnessConfig; does conf/config.yaml list harness_schema first?")
    return harness


def one_line(exc: BaseException) -> str:
    """The first line of an exception message, without OmegaConf's full-key/object-type trailer."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


register_schema()
