"""The typed outputs of the stages: what each stage hands the stages after it, and writes into its marker.

Every stage's ``run`` returns one of these frozen dataclasses; the runner adds ``hash``, ``out_dir`` and
``wall_time_s`` and stores ``to_json()`` in the completion marker (``harness_infra.stagecache.StageDir``), from which
a skipped stage's output is read back with ``from_json``. The JSON field names are the dataclass field names (the
markers of earlier versions read back unchanged); a marker field the type does not name (a family's own train result
fields such as ``final_loss``, or what an older version wrote) is kept in ``extra`` and written back as it was.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Type, TypeVar

T = TypeVar("T", bound="StageInfo")
RUNNER_FIELDS = ("hash", "out_dir", "wall_time_s")


@dataclass(frozen=True)
class StageInfo:
    """Base of every stage output. ``hash``: the stage folder's key hash; ``out_dir``: its absolute folder (None for a
    stage without one); ``wall_time_s``: seconds the stage ran (as recorded when it ran); ``extra``: marker fields the
    type does not name. ``STAGE``: the stage name whose output this is."""

    STAGE: ClassVar[str] = ""
    hash: Optional[str] = None
    out_dir: Optional[str] = None
    wall_time_s: Optional[float] = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls: Type[T], record: Mapping[str, Any]) -> T:
        """The typed output of a marker (or of a JSON-ready dict): named fields by name, the rest in ``extra``
        (``stage``, which the marker adds, dropped)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in record.items() if k in names}
        rest = {k: v for k, v in record.items() if k not in names and k != "stage"}
        return cls(**known, extra=rest)

    def to_json(self) -> Dict[str, Any]:
        """The marker's fields: ``extra`` as it was, then every named field, those left at a default of None omitted
        (a field a stage did not set never appears as null)."""
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            out[f.name] = value
        return out

    def replace(self: T, **fields: Any) -> T:
        """A copy with runner fields (``hash``, ``out_dir``, ``wall_time_s``) or others replaced."""
        return dataclasses.replace(self, **fields)


@dataclass(frozen=True)
class DataInfo(StageInfo):
    """The data stage. ``fingerprint``: hash of the shards (built: names, counts, SHA-256s; user shards: names, sizes
    and times, ``pipeline.stages.data``) that every later stage keys on; ``samples``: per split (built shards);
    ``build_seconds``: build time; ``shards``: the configured shard specs of user shards (None when built)."""

    STAGE: ClassVar[str] = "data"
    fingerprint: Optional[str] = None
    samples: Optional[Dict[str, int]] = None
    build_seconds: Optional[float] = None
    shards: Optional[Dict[str, str]] = None


@dataclass(frozen=True)
class RecaptionInfo(StageInfo):
    """The recaption stage. ``fingerprint``: hash of the recaptioned shards (the data stage's formula over their
    manifests); ``member``: the sample member holding the recaption (``{recaption.name}.txt``); ``splits``: per split
    the captioner's statistics (samples, with_recaption, failed by reason, ...); ``failed_total``; ``transient_failures``
    (retried on the next run). Empty on a rank other than 0 (rank 0 reports)."""

    STAGE: ClassVar[str] = "recaption"
    fingerprint: Optional[str] = None
    member: Optional[str] = None
    splits: Optional[Dict[str, Dict[str, Any]]] = None
    failed_total: Optional[int] = None
    transient_failures: Optional[int] = None


@dataclass(frozen=True)
class FeaturesInfo(StageInfo):
    """The features stage. ``cache_dir``: the feature cache (absolute); ``images``, ``texts``: entries;
    ``bytes`` and ``bytes_per_million_images``: its size; ``x0_shape``: per image; ``text_dim``; ``skipped``."""

    STAGE: ClassVar[str] = "features"
    cache_dir: Optional[str] = None
    images: Optional[int] = None
    texts: Optional[int] = None
    bytes: Optional[int] = None
    bytes_per_million_images: Optional[float] = None
    x0_shape: Optional[List[int]] = None
    text_dim: Optional[int] = None
    skipped: Any = None


@dataclass(frozen=True)
class TrainInfo(StageInfo):
    """The train stage: the fields of a family's train result every record reads (``export_dir``; ``samples_seen``;
    ``global_batch`` per training stage; ``steps``; ``samples_per_s``; ``resumed``: [{"from_step", "at"}], None when
    not recorded), the realised ``mixture`` (rank 0, ``captiondata.realised``); the family's other fields in ``extra``."""

    STAGE: ClassVar[str] = "train"
    export_dir: Optional[str] = None
    samples_seen: Optional[int] = None
    global_batch: Optional[List[int]] = None
    steps: Optional[int] = None
    samples_per_s: Optional[float] = None
    resumed: Optional[List[Dict[str, Any]]] = None
    mixture: Optional[Dict[str, Any]] = None


@dataclass(frozen=True)
class SampleInfo(StageInfo):
    """The sample stage. ``images``: how many; on rank 0 also ``grid`` (path), the settings (``sampler``, ``steps``,
    ``guidance_scale``, ``seed``) and the ``export_dir`` sampled."""

    STAGE: ClassVar[str] = "sample"
    images: Optional[int] = None
    grid: Optional[str] = None
    sampler: Optional[str] = None
    steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    seed: Optional[int] = None
    export_dir: Optional[str] = None


@dataclass(frozen=True)
class EvalInfo(StageInfo):
    """The eval stage. ``records``: paths of the stage's records; ``metrics``: task name -> metrics; ``published``:
    paths in ``{run.results_dir}/records`` (set after publishing, never in the marker)."""

    STAGE: ClassVar[str] = "eval"
    records: Optional[List[str]] = None
    metrics: Optional[Dict[str, Dict[str, Any]]] = None
    published: Optional[List[str]] = None


@dataclass(frozen=True)
class TablesInfo(StageInfo):
    """The tables stage. ``table``: the Markdown table written."""

    STAGE: ClassVar[str] = "tables"
    table: Optional[str] = None
