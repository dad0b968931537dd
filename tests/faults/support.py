"""Helpers for the fault-injection suite: configs, histogram arithmetic, bounded waits."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import TypeVar

from tests.e2e.helpers import scrape

T = TypeVar("T")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def value(metrics: Samples, name: str, **labels: str) -> float | None:
    """One sample by exact label set, or ``None``."""
    return metrics.get((name, tuple(sorted(labels.items()))))


def family(metrics: Samples, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return {
        sample_labels: v
        for (sample_name, sample_labels), v in metrics.items()
        if sample_name == name and want <= set(sample_labels)
    }


def buckets(metrics: Samples, name: str, **labels: str) -> list[tuple[float, float]]:
    """Cumulative ``(le, count)`` pairs of one histogram series, sorted by ``le``."""
    result = []
    for sample_labels, count in family(metrics, f"{name}_bucket", **labels).items():
        le = dict(sample_labels)["le"]
        result.append((math.inf if le == "+Inf" else float(le), count))
    return sorted(result)


def bucket_delta(
    before: list[tuple[float, float]], after: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """Cumulative bucket counts observed between two scrapes."""
    old = dict(before)
    return [(le, count - old.get(le, 0.0)) for le, count in after]


def quantile(q: float, cumulative: list[tuple[float, float]]) -> float:
    """``histogram_quantile`` as Prometheus computes it (linear within the bucket)."""
    total = cumulative[-1][1]
    if total <= 0:
        return math.nan
    rank = q * total
    lower_le, lower_count = 0.0, 0.0
    for le, count in cumulative:
        if count >= rank:
            if math.isinf(le):
                return lower_le
            if count == lower_count:
                return le
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
        lower_le, lower_count = le, count
    return math.nan


def count_above(cumulative: list[tuple[float, float]], threshold: float) -> float:
    """Observations above the bucket bound ``threshold`` (which must be a bucket bound)."""
    at = dict(cumulative)[threshold]
    return cumulative[-1][1] - at


def wait_until(
    probe: Callable[[], T | None], *, timeout: float, what: str, every: float = 0.01
) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


async def await_until(
    probe: Callable[[], T | None], *, timeout: float, what: str, every: float = 0.01
) -> T:
    """:func:`wait_until` in a worker thread, so the test's loop (simulators) keeps running."""
    return await asyncio.to_thread(wait_until, probe, timeout=timeout, what=what, every=every)


def scrape_where(port: int, condition: Callable[[Samples], bool]) -> Callable[[], Samples | None]:
    """A probe: scrape ``port`` and return the samples when ``condition`` holds."""

    def probe() -> Samples | None:
        metrics = scrape(port)
        return metrics if metrics is not None and condition(metrics) else None

    return probe
