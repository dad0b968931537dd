"""Tick metrics: plain counters per (device, timer) on the loop, families built at scrape time.

A gateway with thousands of timers records a tick every few hundred microseconds, so the
per-tick cost matters. prometheus-client's ``Histogram.observe`` and ``Counter.inc`` take a
lock and walk the buckets on every call (about 4 µs each here); a tick observer here does a
``bisect`` and a few integer additions (about 1 µs). The exposition is then built by a custom
collector at each scrape (prometheus-client's documented pattern for values kept elsewhere), so
the output is identical: ``gatebeat_tick_lateness_seconds``, ``gatebeat_tick_duration_seconds``,
``gatebeat_ticks_total``, ``gatebeat_tick_overruns_total``, ``gatebeat_ticks_skipped_total``,
``gatebeat_tick_errors_total`` and ``gatebeat_timer_interval_seconds``.

Thread safety: observers run on the event loop; the scrape thread copies each series' lists
(atomic under the GIL) and derives every histogram's count from its own copied buckets, so a
scrape never shows a ``_count`` that disagrees with its ``+Inf`` bucket.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from service.records import Outcome, TickRecord

__all__ = ["TickCollector", "TickMetrics"]

_ERROR_OUTCOMES: Final = frozenset({Outcome.ERROR, Outcome.TIMEOUT})


class TickMetrics:
    """The tick observer of one (device, timer): call it with every :class:`TickRecord`.

    Attributes are read by :class:`TickCollector` on the scrape thread.
    """

    __slots__ = (
        "buckets",
        "device",
        "duration_buckets",
        "duration_sum",
        "errors",
        "interval",
        "lateness_buckets",
        "lateness_sum",
        "overruns",
        "skipped",
        "ticks",
        "timer",
    )

    def __init__(self, device: str, timer: str, buckets: Sequence[float]) -> None:
        self.device = device
        self.timer = timer
        self.buckets = tuple(buckets)
        self.lateness_buckets = [0] * (len(self.buckets) + 1)
        self.duration_buckets = [0] * (len(self.buckets) + 1)
        self.lateness_sum = 0.0
        self.duration_sum = 0.0
        self.ticks = 0
        self.overruns = 0
        self.skipped = 0
        self.errors: dict[str, int] = {}
        self.interval: float | None = None

    @property
    def error_kinds(self) -> tuple[str, ...]:
        """Exception class names seen so far (the ``error`` label values)."""
        return tuple(self.errors)

    def __call__(self, record: TickRecord) -> None:
        """Count one tick: lateness, duration, ticks, overruns, skipped due times, errors."""
        _, _, due, started, finished, skipped_before, outcome, error, overrun = record
        lateness = started - due
        duration = finished - started
        buckets = self.buckets
        self.lateness_buckets[bisect_left(buckets, lateness)] += 1
        self.lateness_sum += lateness
        self.duration_buckets[bisect_left(buckets, duration)] += 1
        self.duration_sum += duration
        self.ticks += 1
        if overrun:
            self.overruns += 1
        if skipped_before:
            self.skipped += skipped_before
        # Identity first: Enum.__hash__ (for the set lookup) is a Python call per tick.
        if outcome is not Outcome.OK and outcome in _ERROR_OUTCOMES:
            kind = type(error).__name__ if error is not None else outcome.value
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def __repr__(self) -> str:
        return f"<TickMetrics device={self.device!r} timer={self.timer!r}>"


class TickCollector(Collector):
    """Build the tick families at each scrape from the observers ``lookup`` returns.

    Args:
        lookup: returns the observers to export (a snapshot, called on the scrape thread).
    """

    def __init__(self, lookup: Callable[[], Iterable[TickMetrics]]) -> None:
        self._lookup = lookup

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        labels = ("device", "timer")
        lateness = HistogramMetricFamily(
            "gatebeat_tick_lateness_seconds",
            "Seconds between a tick's due time and the start of its callback.",
            labels=labels,
        )
        duration = HistogramMetricFamily(
            "gatebeat_tick_duration_seconds",
            "Seconds a tick's callback ran.",
            labels=labels,
        )
        ticks = CounterMetricFamily(
            "gatebeat_ticks", "Ticks that finished, any outcome.", labels=labels
        )
        overruns = CounterMetricFamily(
            "gatebeat_tick_overruns",
            "Ticks that finished after the next due time (DELAY: ran longer than the interval).",
            labels=labels,
        )
        skipped = CounterMetricFamily(
            "gatebeat_ticks_skipped",
            "Due times skipped, never run, because the previous tick or the loop was late.",
            labels=labels,
        )
        errors = CounterMetricFamily(
            "gatebeat_tick_errors",
            "Ticks whose callback raised, by exception class name (timeouts: TimeoutError).",
            labels=(*labels, "error"),
        )
        interval = GaugeMetricFamily(
            "gatebeat_timer_interval_seconds",
            "Configured interval of the timer in seconds.",
            labels=labels,
        )
        for series in self._lookup():
            key = (series.device, series.timer)
            lateness.add_metric(
                key, *_histogram(series.buckets, series.lateness_buckets, series.lateness_sum)
            )
            duration.add_metric(
                key, *_histogram(series.buckets, series.duration_buckets, series.duration_sum)
            )
            ticks.add_metric(key, float(series.ticks))
            overruns.add_metric(key, float(series.overruns))
            skipped.add_metric(key, float(series.skipped))
            for kind, count in sorted(dict(series.errors).items()):
                errors.add_metric((*key, kind), float(count))
            if series.interval is not None:
                interval.add_metric(key, series.interval)
        yield from (lateness, duration, ticks, overruns, skipped, errors, interval)


def _histogram(
    bounds: Sequence[float], counts: list[int], total: float
) -> tuple[list[tuple[str, float]], float]:
    snapshot = list(counts)
    cumulative: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(bounds, snapshot, strict=False):
        running += count
        cumulative.append((_float(bound), float(running)))
    running += snapshot[-1]
    cumulative.append(("+Inf", float(running)))
    return cumulative, total


def _float(bound: float) -> str:
    return repr(float(bound))
