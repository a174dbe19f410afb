"""The top-level typed config: one dataclass per Hydra group, registered in Hydra's ConfigStore.

``conf/config.yaml`` lists ``harness_schema`` first in its defaults, so every group file merges into these types (a
wrong type fails at composition). The ``model:`` and ``train:`` groups belong to the model family
(``trainer=clip|dit``): each family's typed configs are registered as ``model/{family}_schema`` and
``train/{family}_schema``, and every file of those groups extends one. ``validate`` instantiates the dataclasses,
whose ``__post_init__`` checks ranges (p in [0, 1], positive batch sizes, known strategies) with one-line messages,
and checks that the model and recipe belong to the chosen family.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from captiondata.config import DataConfig, MixConfig
from evals.tasks.config import EvalConfig
from harness_infra.errors import ConfigError, one_line, require
from pipeline.families import FAMILIES
from recaption.config import RecaptionConfig

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
    data stage is asked for (``pipeline.overrides.require_experiment``); an experiment overlay labels its runs itself.
    """

    out_root: str = "cache/runs"
    results_dir: str = "cache/results"
    stages: List[str] = field(default_factory=lambda: list(DEFAULT_STAGES))
    rerun: Optional[str] = None
    stop_after: Optional[str] = None
    name: str = "default"

    def __post_init__(self) -> None:  # the stage names themselves are checked by ``validate`` (importing the stages)
        require(
            self.rerun in (None, *self.stages),
            f"run.rerun={self.rerun!r} is not one of run.stages ({', '.join(self.stages)})",
        )
        require(
            self.stop_after in (None, *self.stages),
            f"run.stop_after={self.stop_after!r} is not one of run.stages ({', '.join(self.stages)})",
        )


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


def unknown_key(cfg: Any, prefix: str = "") -> Optional[str]:
    """The first key (dotted, e.g. ``mix.probability``) of a typed node that its dataclass has no field for, else None.

    Hydra's ``+key=value`` adds keys with OmegaConf's ``force_add``, which struct mode does not stop, and
    ``OmegaConf.to_object`` then drops them silently; so every node typed by a dataclass (the schema's groups and
    each family's model/train configs) is compared with its fields. Untyped ``Dict``/``Any`` contents are free.
    """
    if isinstance(cfg, DictConfig):
        kind = OmegaConf.get_type(cfg)
        fields = {f.name for f in dataclasses.fields(kind)} if dataclasses.is_dataclass(kind) else None
        for key in cfg.keys():
            if fields is not None and key not in fields:
                return f"{prefix}{key}"
            if fields is not None or OmegaConf.is_dict(cfg):
                found = unknown_key(cfg._get_node(key), f"{prefix}{key}.")
                if found:
                    return found
    elif OmegaConf.is_list(cfg):
        for index in range(len(cfg)):
            found = unknown_key(cfg._get_node(index), f"{prefix}{index}.")
            if found:
                return found
    return None


def check_known_keys(cfg: DictConfig) -> None:
    """Raise a one-line ConfigError naming a key that the typed config does not have (added with Hydra's ``+``)."""
    found = unknown_key(cfg)
    if found is None:
        return
    parent, _, key = found.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    kind = OmegaConf.get_type(node)
    names = [f.name for f in dataclasses.fields(kind)]
    close = difflib.get_close_matches(key, names, n=1)
    raise ConfigError(
        f"{found} is not a key of {kind.__name__} ({parent or 'the config'} has: {', '.join(names)}"
        + (f"; did you mean {parent + '.' if parent else ''}{close[0]}?" if close else "")
        + "); Hydra's + adds keys only where the typed config allows them"
    )


def validate(cfg: DictConfig) -> HarnessConfig:
    """Instantiate and range-check a composed config; any problem becomes a one-line ConfigError (also a key the typed
    config lacks, ``check_known_keys``)."""
    check_known_keys(cfg)
    try:
        harness = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as exc:
        raise ConfigError(one_line(exc)) from None
    except ValueError as exc:  # a __post_init__ re-wrapped by OmegaConf
        raise ConfigError(one_line(exc)) from None
    if not isinstance(harness, HarnessConfig):
        raise ConfigError(
            "the composed config is not a HarnessConfig; does conf/config.yaml list harness_schema first?"
        )
    from pipeline.registry import check_stage_list, stages  # imports the stage modules, so not at schema registration

    check_stage_list(harness.run.stages)
    family = FAMILIES.get(harness.trainer)
    require(family is not None, f"trainer={harness.trainer!r} is unknown; choose one of {', '.join(FAMILIES)}")
    for group, expected in (("model", family.model_config), ("train", family.train_config)):
        value = getattr(harness, group)
        require(
            isinstance(value, expected),
            f"{group}: a {type(value).__name__} is not a {expected.__name__} of trainer={family.name}; "
            f"pick a {group}/ file that extends {family.name}_schema",
        )
    for name in harness.run.stages:
        owners = "|".join(other.name for other in FAMILIES.values() if name in other.stages)
        require(
            name in family.stages,
            f"run.stages lists {name}, a stage trainer={family.name} does not run; drop it or set trainer={owners}",
        )
        check = stages()[name].check
        if check is not None:
            check(harness)
    if "recaption" in harness.run.stages:
        from recaption.preflight import preflight

        preflight(harness.recaption)
    return harness


register_schema()
