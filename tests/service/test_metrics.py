"""Metrics: tick observers fed by real timers, the device collector, promtool on the output."""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from service import Outcome, SchedulePolicy, TickRecord, Timer
from service.bus import Bus
from service.health import DeviceHealth
from service.metrics import LATENCY_BUCKETS, MetricsHub


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


LAST_SUCCESS = "gatebeat_device_last_success_timestamp_seconds"


def tick_value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return value(registry, name, device="boiler", timer="watchdog", **labels)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_observer_counts_ticks_overruns_skips_and_errors_exactly() -> None:
    registry = CollectorRegistry()
    hub = MetricsHub(registry)
    calls = 0

    async def callback() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            await asyncio.sleep(2.5)  # due 2 -> finishes 4.5: overrun, due 3 and 4 skipped
        elif calls in (3, 5):
            raise ValueError("bad register")
        elif calls == 4:
            raise KeyError("missing")

    timer = Timer(
        1.0,
        callback,
        SchedulePolicy.FIXED,
        name="boiler/watchdog",
        observers=[hub.observer("boiler", "watchdog", 1.0)],
    )
    timer.start()
    await asyncio.sleep(8.5)  # ticks due 1, 2, 5, 6, 7, 8
    timer.stop()
    await timer.wait_stopped()

    stats = timer.statistics()
    assert (stats.ticks, stats.overruns, stats.skipped, stats.errors) == (6, 1, 2, 3)
    assert tick_value(registry, "gatebeat_ticks_total") == 6
    assert tick_value(registry, "gatebeat_tick_overruns_total") == 1
    assert tick_value(registry, "gatebeat_ticks_skipped_total") == 2
    assert tick_value(registry, "gatebeat_tick_errors_total", error="ValueError") == 2
    assert tick_value(registry, "gatebeat_tick_errors_total", error="KeyError") == 1
    assert tick_value(registry, "gatebeat_timer_interval_seconds") == 1.0
    assert tick_value(registry, "gatebeat_tick_lateness_seconds_count") == 6
    assert tick_value(registry, "gatebeat_tick_lateness_seconds_sum") == 0.0
    assert tick_value(registry, "gatebeat_tick_duration_seconds_sum") == 2.5
    assert tick_value(registry, "gatebeat_tick_duration_seconds_bucket", le="1.0") == 5
    assert tick_value(registry, "gatebeat_tick_duration_seconds_bucket", le="2.5") == 6


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_timeouts_count_as_timeout_error_and_delay_overruns() -> None:
    registry = CollectorRegistry()
    hub = MetricsHub(registry)

    async def slow() -> None:
        await asyncio.sleep(5.0)

    timer = Timer(
        1.0,
        slow,
        SchedulePolicy.DELAY,
        name="boiler/temps",
        timeout=1.5,
        observers=[hub.observer("boiler", "temps", 1.0)],
    )
    timer.start()
    await asyncio.sleep(5.5)  # due 1 -> timeout 2.5; due 3.5 -> timeout 5.0
    timer.stop()
    await timer.wait_stopped()
    labels = {"device": "boiler", "timer": "temps"}
    assert timer.statistics().timeouts == 2
    assert value(registry, "gatebeat_ticks_total", **labels) == 2
    assert value(registry, "gatebeat_tick_errors_total", **labels, error="TimeoutError") == 2
    assert value(registry, "gatebeat_tick_overruns_total", **labels) == 2
    assert value(registry, "gatebeat_ticks_skipped_total", **labels) == 0


def test_cancelled_ticks_are_not_errors_and_series_start_at_zero() -> None:
    registry = CollectorRegistry()
    hub = MetricsHub(registry)
    observer = hub.observer("boiler", "watchdog")
    assert tick_value(registry, "gatebeat_ticks_total") == 0, "series exist before the 1st tick"
    assert tick_value(registry, "gatebeat_timer_interval_seconds") is None
    observer(TickRecord("boiler/watchdog", 1, 1.0, 1.0005, 1.5, 0, Outcome.CANCELLED, None, False))
    assert tick_value(registry, "gatebeat_ticks_total") == 1
    assert tick_value(registry, "gatebeat_tick_lateness_seconds_bucket", le="0.0005") == 1
    assert tick_value(registry, "gatebeat_tick_lateness_seconds_bucket", le="0.00025") == 0
    errors = [
        s for m in registry.collect() for s in m.samples if s.name == "gatebeat_tick_errors_total"
    ]
    assert errors == []
    assert hub.observer("boiler", "watchdog") is observer


def test_buckets_run_from_a_quarter_millisecond_to_ten_seconds() -> None:
    assert LATENCY_BUCKETS[0] == 0.00025
    assert LATENCY_BUCKETS[-1] == 10.0
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)
    registry = CollectorRegistry()
    MetricsHub(registry).observer("boiler", "watchdog")
    les = [
        s.labels["le"]
        for m in registry.collect()
        for s in m.samples
        if s.name == "gatebeat_tick_lateness_seconds_bucket"
    ]
    assert les[0] == "0.00025" and les[-2:] == ["10.0", "+Inf"]


def test_remove_timer_and_device_remove_their_tick_series() -> None:
    registry = CollectorRegistry()
    hub = MetricsHub(registry)
    record = TickRecord("boiler/watchdog", 1, 1.0, 1.0, 1.0, 0, Outcome.ERROR, OSError(), False)
    hub.observer("boiler", "watchdog", 1.0)(record)
    hub.observer("boiler", "temps", 5.0)(record)
    hub.observer("meter", "temps", 5.0)(record)
    hub.add_device(DeviceHealth("boiler", "modbus"))
    hub.add_device(DeviceHealth("meter", "power_meter"))

    hub.remove_timer("boiler", "temps")
    assert value(registry, "gatebeat_ticks_total", device="boiler", timer="temps") is None
    assert tick_value(registry, "gatebeat_ticks_total") == 1

    hub.remove_device("boiler")
    exported = generate_latest(registry).decode()
    assert 'device="boiler"' not in exported
    assert value(registry, "gatebeat_ticks_total", device="meter", timer="temps") == 1
    assert value(registry, "gatebeat_device_up", device="meter", driver="power_meter") == 0
    hub.remove_device("boiler")  # idempotent
    hub.add_device(DeviceHealth("boiler", "modbus"))  # a device can come back
    assert value(registry, "gatebeat_device_up", device="boiler", driver="modbus") == 0


def test_collector_exports_health_and_readings_and_drops_them_on_failure() -> None:
    registry = CollectorRegistry()
    hub = MetricsHub(registry)
    boiler = DeviceHealth("boiler", "modbus", down_after_failures=2)
    hub.add_device(boiler)
    with pytest.raises(ValueError, match="device=boiler: already registered"):
        hub.add_device(DeviceHealth("boiler", "modbus"))

    assert value(registry, "gatebeat_device_up", device="boiler", driver="modbus") == 0
    assert value(registry, LAST_SUCCESS, device="boiler") is None

    boiler.record_success(
        {"supply_temperature_celsius": 41.5, "pump_running": True, "serial": "A1", "n": 3},
        now=0.0,
    )
    assert value(registry, "gatebeat_device_up", device="boiler", driver="modbus") == 1
    assert value(registry, "gatebeat_reading_supply_temperature_celsius", device="boiler") == 41.5
    assert value(registry, "gatebeat_reading_pump_running", device="boiler") == 1
    assert value(registry, "gatebeat_reading_n", device="boiler") == 3
    assert value(registry, "gatebeat_reading_serial", device="boiler") is None, "strings: no gauge"
    stamp = value(registry, LAST_SUCCESS, device="boiler")
    assert stamp == boiler.last_success_timestamp

    boiler.record_failure(TimeoutError("no reply"), now=1.0)
    assert value(registry, "gatebeat_device_up", device="boiler", driver="modbus") == 1
    assert value(registry, "gatebeat_reading_supply_temperature_celsius", device="boiler") is None
    assert "gatebeat_reading_" not in generate_latest(registry).decode()
    boiler.record_failure(TimeoutError("no reply"), now=2.0)
    assert value(registry, "gatebeat_device_up", device="boiler", driver="modbus") == 0
    assert (
        value(registry, "gatebeat_device_errors_total", device="boiler", error="TimeoutError") == 2
    )
    assert value(registry, "gatebeat_device_consecutive_failures", device="boiler") == 2
    assert value(registry, LAST_SUCCESS, device="boiler") == stamp

    hub.remove_device("boiler")
    assert value(registry, "gatebeat_device_up", device="boiler", driver="modbus") is None


def test_non_finite_readings_are_never_exported() -> None:
    registry = CollectorRegistry()
    hub = MetricsHub(registry)
    health = DeviceHealth("boiler", "modbus")
    health.record_success({"a": math.inf, "b": 2.0}, now=0.0)
    hub.add_device(health)
    assert value(registry, "gatebeat_reading_a", device="boiler") is None
    assert value(registry, "gatebeat_reading_b", device="boiler") == 2.0


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_bus_wait_histogram_from_a_real_bus() -> None:
    registry = CollectorRegistry()
    hub = MetricsHub(registry)
    bus = Bus("rs485-1", gap=0.03)
    bus.add_observer(hub.observe_bus)

    async def exchange(device: str) -> None:
        async with bus.turn(device):
            await asyncio.sleep(0.1)

    await asyncio.gather(exchange("boiler"), exchange("meter"))
    assert value(registry, "gatebeat_bus_wait_seconds_count", bus="rs485-1") == 2
    waited = value(registry, "gatebeat_bus_wait_seconds_sum", bus="rs485-1")
    assert waited == pytest.approx(0.13)
    assert value(registry, "gatebeat_bus_wait_seconds_bucket", bus="rs485-1", le="0.001") == 1


def test_loop_lag_and_build_info() -> None:
    registry = CollectorRegistry()
    hub = MetricsHub(registry, version="9.9.9")
    hub.observe_loop_lag(0.0004)
    hub.observe_loop_lag(3.0)
    assert value(registry, "gatebeat_loop_lag_seconds_count") == 2
    assert value(registry, "gatebeat_loop_lag_seconds_bucket", le="0.0005") == 1
    assert value(registry, "gatebeat_build_info", version="9.9.9") == 1


def test_dedicated_registry_not_the_global_one() -> None:
    from prometheus_client import REGISTRY

    hub = MetricsHub()
    assert hub.registry is not REGISTRY
    assert REGISTRY.get_sample_value("gatebeat_build_info", {"version": "0.1.0"}) is None


def populated_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    hub = MetricsHub(registry)
    failing = TickRecord("b", 1, 1.0, 1.2, 3.5, 2, Outcome.ERROR, ConnectionError("x"), True)
    hub.observer("boiler", "watchdog", 1.0)(failing)
    hub.observer('we"ird\\dev\nice', "temps", 5.0)(failing)
    boiler = DeviceHealth("boiler", "modbus")
    boiler.record_success({"supply_temperature_celsius": 41.5, "pump_running": False}, now=0.0)
    meter = DeviceHealth("meter", "power_meter")
    meter.record_failure(TimeoutError("t"), now=0.0)
    hub.add_device(boiler)
    hub.add_device(meter)
    hub.observe_bus("rs485-1", "boiler", 0.004)
    hub.observe_loop_lag(0.001)
    return registry


def test_promtool_check_metrics_passes_on_the_real_output() -> None:
    assert shutil.which("promtool"), "promtool is needed (.ci/setup installs Debian 'prometheus')"
    output = generate_latest(populated_registry())
    assert b'device="we\\"ird\\\\dev\\nice"' in output, "label values are escaped"
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=output,
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_openmetrics_output_parses() -> None:
    """promtool reads only the text format; OpenMetrics is checked by the client's parser."""
    from prometheus_client.openmetrics.exposition import generate_latest as generate_om
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    output = generate_om(populated_registry()).decode()
    assert output.endswith("# EOF\n")
    families = {f.name: f for f in text_string_to_metric_families(output)}
    assert families["gatebeat_ticks"].type == "counter"
    assert families["gatebeat_device_up"].type == "gauge"
    assert families["gatebeat_reading_pump_running"].samples[0].value == 0
