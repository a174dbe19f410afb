"""The in-memory result of one task: metrics, per-query values (for intervals and paired tests), reasons."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from evals.results.bootstrap import QueryValues, bootstrap_ci


@dataclass
class TaskResult:
    """Metrics of one (checkpoint, task).

    Two kinds of metric:

    - per-query metrics (recall@k, top-1, mean cosine): the (group-balanced) mean of per-query values kept in
      ``per_query``, so their intervals are a percentile bootstrap over queries and two models are compared with a
      paired test over the same queries;
    - whole-set metrics (FID, KID): one number of the whole set, with no per-query values; their interval and the
      method that made it (bootstrap over generated images, splits, ...) are given by the task in ``interval_methods``.

    metrics: name -> value, None when undefined (``undefined`` then says why). intervals: name -> (low, high).
    n: query counts (e.g. images, texts). extra: task-specific facts (truncated captions, context length).
    """

    task: str
    dataset: Dict[str, Any]
    metrics: Dict[str, Optional[float]] = field(default_factory=dict)
    per_query: Dict[str, QueryValues] = field(default_factory=dict)
    undefined: Dict[str, str] = field(default_factory=dict)
    intervals: Dict[str, Optional[Tuple[float, float]]] = field(default_factory=dict)
    n: Dict[str, int] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)
    interval_methods: Dict[str, str] = field(default_factory=dict)

    def set_metric(self, name: str, values: QueryValues) -> None:
        """Record a defined metric from its per-query values."""
        self.per_query[name] = values
        self.metrics[name] = values.statistic()

    def set_whole_set_metric(
        self, name: str, value: float, interval: Optional[Tuple[float, float]], method: str
    ) -> None:
        """Record a whole-set metric with its interval and the method that made the interval (e.g. "bootstrap over
        generated images, 100 resamples"); it has no per-query values, so no paired test compares it."""
        self.metrics[name] = float(value)
        self.intervals[name] = None if interval is None else (float(interval[0]), float(interval[1]))
        self.interval_methods[name] = method

    def set_undefined(self, name: str, reason: str) -> None:
        """Record a metric that cannot be computed, with the reason."""
        self.metrics[name] = None
        self.undefined[name] = reason
        self.intervals[name] = None

    def add_intervals(self, samples: int, confidence: float, seed: int) -> None:
        """Bootstrap interval of every defined metric (same seed for each: resamples of the same queries)."""
        for name, values in self.per_query.items():
            self.intervals[name] = bootstrap_ci(values, samples, confidence, seed)
