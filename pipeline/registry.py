"""The stage registry: every stage a run can walk, in the one place they are registered.

A ``Stage`` is a name, the stages whose outputs it reads (``needs``: listed before it; ``after``: before it when
listed), the type of its output (``output``, a ``pipeline.infos.StageInfo``), a key function (what determines its output:
the stage folder is ``{run.out_root}/{name}/{label}-{hash(key)}`` and is skipped once its marker exists) and a run
function. How it runs under torchrun is its ``ranks`` policy:

- ``rank0_builds``: rank 0 runs it, every other rank waits for the completion marker (shards, caches);
- ``all``: every rank runs it (collective training); rank 0 writes the marker;
- ``rank0``: rank 0 alone (evaluation, tables); the other ranks stop before it.

Adding a stage = one module in ``pipeline/stages/`` defining ``STAGE``, and its name in ``STAGE_MODULES`` below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, TypeVar

from harness_infra.errors import ConfigError, require
from pipeline.infos import StageInfo

T = TypeVar("T", bound=StageInfo)

RANK_POLICIES = ("rank0_builds", "all", "rank0")
STAGE_MODULES = (
    "pipeline.stages.data",
    "pipeline.stages.recaption",
    "pipeline.stages.features",
    "pipeline.stages.train",
    "pipeline.stages.sample",
    "pipeline.stages.eval",
    "pipeline.stages.tables",
)


@dataclass
class RunContext:
    """What a stage sees: the typed config, the resolved config and command-line overrides (for provenance), and the
    typed output every earlier stage returned (``infos[name]``, with ``out_dir`` when the stage has a folder), read
    by type with ``output`` / ``optional``."""

    cfg: Any
    resolved: Dict[str, Any]
    overrides: List[str]
    infos: Dict[str, StageInfo] = field(default_factory=dict)

    def output(self, kind: Type[T]) -> T:
        """The output of stage ``kind.STAGE``; KeyError when it has not run (its stage declares it in ``needs``)."""
        info = self.infos[kind.STAGE]
        if not isinstance(info, kind):
            raise TypeError(f"stage {kind.STAGE}: its output is a {type(info).__name__}, not a {kind.__name__}")
        return info

    def optional(self, kind: Type[T]) -> Optional[T]:
        """The output of stage ``kind.STAGE``, None when the run does not list it (its reader declares it in ``after``)."""
        return self.output(kind) if kind.STAGE in self.infos else None


@dataclass(frozen=True)
class Stage:
    """One registered stage.

    ``needs``: stages that must be listed before it; ``after``: stages that, when listed, must come before it (it
    reads their output when there is one: the train stage trains on the recaption stage's shards);
    ``output``: the type of its info (``pipeline.infos``; its ``STAGE`` is this stage's name);
    ``key(ctx) -> dict | None``: what determines the output (None: the stage has no folder and runs every time);
    ``run(ctx, out_dir) -> output``: does the work into ``out_dir`` and returns its typed info (the marker holds its
    ``to_json()``); ``publish(ctx, info) -> info``: runs on rank 0 every time, whether the stage ran or was skipped;
    ``settled(info) -> bool``: False for a complete output that must run again (failed samples to retry);
    ``check(cfg)``: a one-line ConfigError when a config listing the stage cannot run it (at validation);
    ``label(ctx)``: the folder label (default: the experiment name); ``version``: bump to invalidate old outputs.
    """

    name: str
    needs: Tuple[str, ...]
    output: Type[StageInfo]
    run: Callable[[RunContext, Optional[str]], StageInfo]
    key: Optional[Callable[[RunContext], Optional[Dict[str, Any]]]] = None
    ranks: str = "rank0"
    after: Tuple[str, ...] = ()
    publish: Optional[Callable[[RunContext, StageInfo], StageInfo]] = None
    settled: Optional[Callable[[StageInfo], bool]] = None
    check: Optional[Callable[[Any], None]] = None
    label: Optional[Callable[[RunContext], str]] = None
    version: int = 1

    def __post_init__(self) -> None:
        if self.ranks not in RANK_POLICIES:
            raise ValueError(f"stage {self.name}: ranks={self.ranks!r}; choose one of {', '.join(RANK_POLICIES)}")
        if self.output.STAGE != self.name:
            raise ValueError(
                f"stage {self.name}: output {self.output.__name__} is the output of stage {self.output.STAGE!r}"
            )


def _load() -> Dict[str, Stage]:
    """Every registered stage by name, in registration order."""
    stages = [importlib.import_module(module).STAGE for module in STAGE_MODULES]
    return {stage.name: stage for stage in stages}


STAGES: Dict[str, Stage] = {}


def stages() -> Dict[str, Stage]:
    """The registry (stage modules are imported on first use, so a config can be validated without them)."""
    if not STAGES:
        STAGES.update(_load())
    return STAGES


def check_stage_list(names: List[str]) -> None:
    """One-line ConfigError unless every name is registered, listed once, after the stages it needs and after every
    listed stage whose output it reads (``Stage.after``)."""
    registry = stages()
    for index, name in enumerate(names):
        if name not in registry:
            raise ConfigError(f"run.stages: {name!r} is not a stage; choose from {', '.join(registry)}")
        require(name not in names[:index], f"run.stages lists {name!r} twice")
        missing = [need for need in registry[name].needs if need not in names[:index]]
        require(not missing, f"run.stages: {name!r} needs {', '.join(missing)} before it")
        late = [other for other in registry[name].after if other in names[index + 1 :]]
        require(
            not late,
            f"run.stages: {name!r} reads the output of {', '.join(late)}, so {', '.join(late)} must come before it",
        )
