"""Prometheus metrics: tick observers, bus and loop-lag histograms, and a device collector.

The engine does not import prometheus-client; this module turns what it hands out into
metrics (DESIGN.md section 5, names in ``docs/metrics.md``):

* :meth:`MetricsHub.observer` returns a :data:`~service.records.TickObserver` for one
  (device, timer) that keeps plain counters (see :mod:`service.tick_metrics`), so a tick costs
  a ``bisect`` and a few additions; the tick families are built at scrape time.
* :meth:`MetricsHub.observe_bus` is a :data:`~service.bus.BusWaitObserver`;
  :meth:`MetricsHub.observe_loop_lag` feeds the watchdog's measurement.
* :class:`DeviceCollector` builds ``gatebeat_device_up``, the last-success timestamp, error
  counts and one ``gatebeat_reading_<field>`` family per field fresh at every scrape from
  :class:`~service.health.DeviceHealth` snapshots, so a failed read or a removed device simply
  disappears from the next scrape.

All metrics live in a dedicated :class:`~prometheus_client.CollectorRegistry`. Scrapes run on
the exporter's thread: prometheus-client's metric objects are thread-safe, and device state is
read through immutable snapshots under a short lock.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from service.health import DeviceHealth
from service.tick_metrics import TickCollector, TickMetrics

__all__ = [
    "LATENCY_BUCKETS",
    "DeviceCollector",
    "MetricsHub",
    "TickMetrics",
]

LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Histogram buckets in seconds: a healthy heartbeat is ~1 ms late, a sick one seconds."""


class DeviceCollector(Collector):
    """Build the device families fresh at each scrape from health snapshots.

    Args:
        lookup: returns the devices to export; called on the scrape thread, so it must return
            a snapshot (a tuple), not a live view of a dict the loop mutates.

    Families: ``gatebeat_device_up{device,driver}``,
    ``gatebeat_device_last_success_timestamp_seconds{device}`` (only after a first success),
    ``gatebeat_device_consecutive_failures{device}``,
    ``gatebeat_device_errors_total{device,error}`` and ``gatebeat_reading_<field>{device}``
    (numbers and booleans; strings and NaN are not exported).
    """

    def __init__(self, lookup: Callable[[], Iterable[DeviceHealth]]) -> None:
        self._lookup = lookup

    def describe(self) -> list[Metric]:
        """Nothing: the families depend on the devices, so the registry must not pre-check."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Yield the device families built from the current snapshots."""
        snapshots = [health.snapshot() for health in self._lookup()]
        up = GaugeMetricFamily(
            "gatebeat_device_up",
            "1 while the device answers, 0 after too many consecutive failures or when stale.",
            labels=("device", "driver"),
        )
        last = GaugeMetricFamily(
            "gatebeat_device_last_success_timestamp_seconds",
            "Wall-clock time of the device's last successful tick, in seconds since the epoch.",
            labels=("device",),
        )
        failures = GaugeMetricFamily(
            "gatebeat_device_consecutive_failures",
            "Failed ticks of the device since its last success.",
            labels=("device",),
        )
        errors = CounterMetricFamily(
            "gatebeat_device_errors",
            "Failed ticks of the device by exception class name.",
            labels=("device", "error"),
        )
        readings: dict[str, GaugeMetricFamily] = {}
        for snap in snapshots:
            up.add_metric((snap.device, snap.driver), 1.0 if snap.up else 0.0)
            if snap.last_success_timestamp is not None:
                last.add_metric((snap.device,), snap.last_success_timestamp)
            failures.add_metric((snap.device,), float(snap.consecutive_failures))
            for kind, count in sorted(snap.error_counts.items()):
                errors.add_metric((snap.device, kind), float(count))
            for field, value in snap.readings.items():
                number = _as_number(value)
                if number is None:
                    continue
                family = readings.get(field)
                if family is None:
                    family = GaugeMetricFamily(
                        f"gatebeat_reading_{field}",
                        f"Reading {field!r} of the last successful read (absent after a failure).",
                        labels=("device",),
                    )
                    readings[field] = family
                family.add_metric((snap.device,), number)
        yield up
        yield last
        yield failures
        yield errors
        for field in sorted(readings):
            yield readings[field]


def _as_number(value: object) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


class MetricsHub:
    """All of gatebeat's metrics in one dedicated registry.

    Args:
        registry: the registry to register into; a fresh ``CollectorRegistry`` by default
            (never the global one, so tests and several services in one process are isolated).
        version: exported as ``gatebeat_build_info{version}``.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, version: str = "") -> None:
        if registry is None:
            registry = CollectorRegistry()
        self.registry = registry
        self._lock = threading.Lock()
        self._devices: dict[str, DeviceHealth] = {}
        self._observers: dict[tuple[str, str], TickMetrics] = {}
        self._bus_children: dict[str, Histogram] = {}

        self.bus_wait = Histogram(
            "gatebeat_bus_wait_seconds",
            "Seconds a device waited for its turn on a shared bus (including the frame gap).",
            ("bus",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.loop_lag = Histogram(
            "gatebeat_loop_lag_seconds",
            "Lateness of the watchdog's own FIXED timer: how long the event loop was busy.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.build_info = Gauge(
            "gatebeat_build_info",
            "Always 1; the version label tells which gatebeat is running.",
            ("version",),
            registry=registry,
        )
        self.build_info.labels(version or _version()).set(1)
        registry.register(DeviceCollector(self._device_snapshot))
        registry.register(TickCollector(self._observer_snapshot))

    # -- ticks -----------------------------------------------------------------------------

    def observer(self, device: str, timer: str, interval: float | None = None) -> TickMetrics:
        """The tick observer of ``device``/``timer``; ``interval`` (seconds) sets the gauge.

        Calling it again for the same pair returns the same observer.
        """
        with self._lock:
            key = (device, timer)
            observer = self._observers.get(key)
            if observer is None:
                observer = TickMetrics(device, timer, LATENCY_BUCKETS)
                self._observers[key] = observer
        if interval is not None:
            observer.interval = interval
        return observer

    def remove_timer(self, device: str, timer: str) -> None:
        """Remove every series of ``device``/``timer`` (an observer still attached to a running
        timer keeps counting, but is no longer exported)."""
        with self._lock:
            self._observers.pop((device, timer), None)

    def _observer_snapshot(self) -> tuple[TickMetrics, ...]:
        with self._lock:
            return tuple(self._observers.values())

    # -- devices ---------------------------------------------------------------------------

    def add_device(self, health: DeviceHealth) -> None:
        """Export ``health`` (device up, last success, errors, readings) from the next scrape.

        Raises:
            ValueError: a device of that name is already exported.
        """
        with self._lock:
            if health.device in self._devices:
                raise ValueError(f"device={health.device}: already registered with the metrics")
            self._devices[health.device] = health

    def remove_device(self, device: str) -> None:
        """Stop exporting ``device``: its health, readings and every tick series. Idempotent."""
        with self._lock:
            self._devices.pop(device, None)
            timers = [timer for (name, timer) in self._observers if name == device]
        for timer in timers:
            self.remove_timer(device, timer)

    def devices(self) -> tuple[DeviceHealth, ...]:
        """The exported devices (a snapshot)."""
        return self._device_snapshot()

    def _device_snapshot(self) -> tuple[DeviceHealth, ...]:
        with self._lock:
            return tuple(self._devices.values())

    # -- bus and loop ------------------------------------------------------------------------

    def observe_bus(self, bus: str, device: str, seconds: float) -> None:
        """A :data:`~service.bus.BusWaitObserver`: record one turn's wait on ``bus``."""
        child = self._bus_children.get(bus)
        if child is None:
            child = self.bus_wait.labels(bus)
            self._bus_children[bus] = child
        child.observe(seconds)

    def observe_loop_lag(self, seconds: float) -> None:
        """Record one loop-lag measurement in seconds (from the watchdog)."""
        self.loop_lag.observe(seconds)


def _version() -> str:
    from service import __version__

    return __version__
