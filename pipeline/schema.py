"""The top-level typed config: one dataclass per Hydra group, registered in Hydra's ConfigStore.

``conf/config.yaml`` lists ``harness_schema`` first in its defaults, so every group file merges into these types (a
wrong type fails at composition). The ``model:`` and ``train:`` groups belong to the model family
(``trainer=clip|dit``): each family's typed configs are registered as ``model/{family}_schema`` and
``train/{family}_schema``, and every file of those groups extends one. ``validate`` instantiates the dataclasses,
whose ``__post_init__`` checks ranges (p in [0, 1], positive batch sizes, known strategies) with one-line messages,
and checks that the model and recipe belong to the chosen family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from captiondata.config import DataConfig, MixConfig
from evals.tasks.config import EvalConfig
from recaption.config import RecaptionConfig
from harness_infra.errors import ConfigError, one_line, require
from pipeline.families import FAMILIES

DEFAULT_STAGES = ["data", "train", "eval", "tables"]


@dataclass
class RunConfig:
    """Where a run writes, which stages it walks and what it forces.

    ``out_root``: stage outputs, each in a folder keyed by the hash of its config and inputs.
    ``results_dir``: result records, tables and plots; by default ``cache/results``, beside the stage outputs and
    ignored by git, so a user's runs never touch the committed study in ``results/`` (rebuilt only by the commands in
    ``results/README.md``, which pass ``run.results_dir=results``). ``stages``: the stages to walk, in order (names of
    ``pipeline.registry.STAGES``; a stage's inputs must come before it). ``rerun``: a stage to run even when complete.
    ``stop_after``: last stage to run (null = all of ``stages``). ``name``: the label of a run composed without an
    experiment overlay (``experiment`` is then this name, see conf/config.yaml); giving it is how such a run past the
    data stage is asked for (``pipeline.cli.require_experiment``); an experiment overlay labels its runs itself.
    """

    out_root: str = "cache/runs"
    results_dir: str = "cache/results"
    stages: List[str] = field(default_factory=lambda: list(DEFAULT_STAGES))
    rerun: Optional[str] = None
    stop_after: Optional[str] = None
    name: str = "default"

    def __post_init__(self) -> None:  # the stage names themselves are checked by ``validate`` (importing the stages)
        require(self.rerun in (None, *self.stages), f"run.rerun={self.rerun!r} is not one of run.stages ({', '.join(self.stages)})")
        require(self.stop_after in (None, *self.stages), f"run.stop_after={self.stop_after!r} is not one of run.stages ({', '.join(self.stages)})")


@dataclass
class HarnessConfig:
    """Everything one experiment needs; ``experiment`` names the overlay that built it.

    ``recaption``: the captioner of the recaption stage (``+recaption=hf|openai|...``; null when the experiment has
    none). ``trainer``: the model family (``pipeline.families.FAMILIES``); ``model`` and ``train`` are that family's
    typed configs (``ClipModelConfig`` and ``TrainConfig`` for ``clip``).
    """

    data: DataConfig = field(default_factory=DataConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    recaption: Optional[RecaptionConfig] = None
    trainer: str = "clip"
    model: Any = None
    train: Any = None
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    experiment: str = "default"


def register_schema() -> None:
    """Register HarnessConfig as ``harness_schema`` and each family's typed model/train configs (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="harness_schema", node=HarnessConfig)
    store.store(group="recaption", name="recaption_schema", node=RecaptionConfig)
    for family in FAMILIES.values():
        store.store(group="model", name=f"{family.name}_schema", node=family.model_config)
        store.store(group="train", name=f"{family.name}_schema", node=family.train_config)


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
    from pipeline.registry import check_stage_list  # imports the stage modules, so not at schema registration

    check_stage_list(harness.run.stages)
    family = FAMILIES.get(harness.trainer)
    require(family is not None, f"trainer={harness.trainer!r} is unknown; choose one of {', '.join(FAMILIES)}")
    for group, expected in (("model", family.model_config), ("train", family.train_config)):
        value = getattr(harness, group)
        require(isinstance(value, expected), f"{group}: a {type(value).__name__} is not a {expected.__name__} of trainer={family.name}; "
                                             f"pick a {group}/ file that extends {family.name}_schema")
    require("recaption" not in harness.run.stages or harness.recaption is not None,
            "run.stages lists recaption but no captioner is configured: add +recaption=hf|openai|vllm|precomputed|coca|rewrite")
    if "recaption" in harness.run.stages:
        from recaption.preflight import preflight

        preflight(harness.recaption)
    return harness


register_schema()
