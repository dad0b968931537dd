"""DeviceHealth: failure tolerance, fresh readings only, staleness, transitions logged once."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from unittest.mock import ANY

import pytest
from prometheus_client import CollectorRegistry

from service import SchedulePolicy, Timer
from service.health import DeviceHealth, InvalidFieldName, validate_field_name
from service.metrics import MetricsHub
from service.watchdog import Watchdog


def transitions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gatebeat.health"]


def test_starts_down_until_the_first_success() -> None:
    health = DeviceHealth("boiler", "modbus")
    assert not health.up
    assert health.readings == {}
    assert health.last_success_timestamp is None
    before = time.time()
    health.record_success({"supply_temperature_celsius": 41.5}, now=1.0)
    assert health.up
    assert health.readings == {"supply_temperature_celsius": 41.5}
    assert health.last_success_timestamp is not None
    assert before <= health.last_success_timestamp <= time.time()


def test_down_after_three_consecutive_failures_and_up_on_next_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gatebeat.health")
    health = DeviceHealth("boiler", "modbus")
    health.record_success({"t": 1.0}, now=0.0)
    health.record_failure(TimeoutError("no reply"), now=1.0)
    health.record_failure(TimeoutError("no reply"), now=2.0)
    assert health.up, "two failures are tolerated"
    health.record_failure(ConnectionError("refused"), now=3.0)
    assert not health.up
    assert health.snapshot().down_reason is not None
    assert "3 consecutive failures" in health.snapshot().down_reason
    health.record_failure(ConnectionError("refused"), now=4.0)
    assert health.consecutive_failures == 4
    assert dict(health.error_counts) == {"TimeoutError": 2, "ConnectionError": 2}
    health.record_success({"t": 2.0}, now=5.0)
    assert health.up
    assert health.consecutive_failures == 0
    assert health.readings == {"t": 2.0}
    messages = transitions(caplog)
    assert messages[0] == "device=boiler up"
    downs = [m for m in messages if m.startswith("device=boiler down")]
    assert len(downs) == 1, messages
    assert "error=ConnectionError" in downs[0]
    recovered = [m for m in messages if "recovered" in m]
    assert len(recovered) == 1
    assert recovered[0].startswith("device=boiler recovered after 4 failures")
    assert len(messages) == 3


def test_a_failure_removes_readings_never_keeps_or_zeroes_them() -> None:
    health = DeviceHealth("boiler", "modbus", down_after_failures=5)
    health.record_success({"t": 41.5, "pump_running": True}, now=0.0)
    health.record_failure(TimeoutError("no reply"), now=1.0)
    assert health.up, "still within the tolerance"
    assert health.readings == {}, "a failed read exports nothing, not the old value"


def test_failure_of_one_poll_drops_only_its_fields() -> None:
    health = DeviceHealth("boiler", "modbus")
    health.record_success({"fast": 1}, now=0.0)
    health.record_success({"slow": 2}, now=0.5)
    assert health.readings == {"fast": 1, "slow": 2}
    health.record_failure(TimeoutError("x"), now=1.0, fields=["slow"])
    assert health.readings == {"fast": 1}


def test_nan_readings_are_dropped() -> None:
    health = DeviceHealth("boiler", "modbus")
    health.record_success({"a": 1.0, "b": math.nan}, now=0.0)
    assert health.readings == {"a": 1.0}
    health.record_success({"a": math.nan}, now=1.0)
    assert health.readings == {}


def test_heartbeat_success_without_readings_keeps_poll_readings() -> None:
    health = DeviceHealth("plc", "plc_watchdog")
    health.record_success({"counter": 7}, now=0.0)
    health.record_success(None, now=1.0)
    assert health.readings == {"counter": 7}


def test_stale_after_marks_down_and_drops_readings_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gatebeat.health")
    health = DeviceHealth("boiler", "modbus", stale_after=10.0)
    health.record_success({"t": 1.0}, now=100.0)
    assert health.check_stale(109.9)
    assert health.readings == {"t": 1.0}
    assert not health.check_stale(110.0)
    assert not health.up
    assert health.readings == {}
    assert not health.check_stale(120.0)
    downs = [m for m in transitions(caplog) if "down" in m]
    assert downs == [
        "device=boiler down reason=stale seconds_since_success=10.000 stale_after=10.0"
    ]
    health.record_success({"t": 2.0}, now=121.0)
    assert health.up
    assert health.check_stale(130.0)
    assert sum("recovered" in m for m in transitions(caplog)) == 1


def test_never_successful_device_goes_stale_from_the_first_check() -> None:
    health = DeviceHealth("boiler", "modbus", stale_after=5.0)
    assert not health.check_stale(50.0)
    assert not health.check_stale(54.0)
    assert health.snapshot().down_reason == "no successful tick yet"
    assert not health.check_stale(55.0)
    assert health.snapshot().down_reason is not None


def test_without_stale_after_check_stale_changes_nothing() -> None:
    health = DeviceHealth("boiler", "modbus")
    health.record_success({"t": 1}, now=0.0)
    assert health.check_stale(1e9)
    assert health.readings == {"t": 1}


def test_snapshots_are_immutable_and_replaced() -> None:
    health = DeviceHealth("boiler", "modbus")
    health.record_success({"t": 1}, now=0.0)
    first = health.snapshot()
    health.record_failure(OSError("x"), now=1.0)
    assert first.readings == {"t": 1}, "a scrape holding the old snapshot sees a consistent view"
    with pytest.raises(TypeError):
        first.readings["t"] = 2  # type: ignore[index]


def test_invalid_field_names_are_refused_naming_device_and_field() -> None:
    health = DeviceHealth("boiler", "modbus")
    with pytest.raises(InvalidFieldName, match=r"device=boiler.*'supply-temp'"):
        health.record_success({"ok": 1, "supply-temp": 2}, now=0.0)
    assert not health.up, "nothing recorded"
    assert validate_field_name("_x9", device="d") == "_x9"
    for bad in ("9lives", "", "a b", "temp.c", "é"):
        with pytest.raises(InvalidFieldName):
            validate_field_name(bad, device="d")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"down_after_failures": 0}, "down_after_failures must be >= 1, got 0"),
        ({"down_after_failures": 2.5}, "down_after_failures must be an integer"),
        ({"stale_after": 0.0}, "stale_after must be finite and > 0 seconds, got 0.0"),
        ({"stale_after": math.inf}, "got inf"),
    ],
)
def test_bad_arguments_name_device_and_value(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=rf"device=boiler: .*{match}"):
        DeviceHealth("boiler", "modbus", **kwargs)  # type: ignore[arg-type]


# -- the watchdog: loop lag and heartbeat freshness ------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_watchdog_measures_loop_lag_and_reports_a_blocked_loop(
    stall: Callable[[float], None],
) -> None:
    registry = CollectorRegistry()
    hub = MetricsHub(registry)
    watchdog = Watchdog(interval=0.25, max_lag=1.0, on_lag=hub.observe_loop_lag)
    assert watchdog.check() == (False, {"status": "unhealthy", "problems": [ANY]})
    watchdog.start()
    await asyncio.sleep(1.1)  # ticks at 0.25 .. 1.0, never late
    ok, reason = watchdog.check()
    assert ok, reason
    assert reason["loop_lag_seconds"] == 0.0
    assert watchdog.lag_seconds == 0.0

    stall(2.0)  # the loop is blocked from 1.1 to 3.1: no tick can run to measure it
    ok, reason = watchdog.check()
    assert not ok
    assert reason["loop_lag_seconds"] == pytest.approx(1.85)
    assert reason["problems"] == ["loop lag 1.850 s > 1.0 s"]

    await asyncio.sleep(0.1)  # the tick due at 1.25 runs at 3.1; 1.5 .. 3.0 are skipped
    assert watchdog.lag_seconds == pytest.approx(1.85)
    assert not watchdog.check()[0], "the last measurement is still too high"
    assert registry.get_sample_value("gatebeat_loop_lag_seconds_bucket", {"le": "1.0"}) == 4
    assert registry.get_sample_value("gatebeat_loop_lag_seconds_bucket", {"le": "2.5"}) == 5
    assert watchdog.timer.statistics().skipped == 7

    await asyncio.sleep(0.2)  # the tick due at 3.25 is on time again
    ok, reason = watchdog.check()
    assert ok, reason
    watchdog.stop()
    await watchdog.wait_stopped()
    assert watchdog.check()[0] is False


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_watchdog_reports_a_heartbeat_that_stopped_running(
    stall: Callable[[float], None],
) -> None:
    calls = 0

    async def heartbeat() -> None:
        nonlocal calls
        calls += 1

    beat = Timer(1.0, heartbeat, SchedulePolicy.FIXED, name="boiler/watchdog")
    watchdog = Watchdog(interval=0.25, max_lag=1.0)
    watchdog.watch(beat)  # stale after 3 * 1.0 + 1.0 s
    watchdog.start()
    beat.start()
    await asyncio.sleep(2.5)  # ticks finish at 1 and 2
    reports = []

    def wedged_engine() -> None:  # nothing is scheduled for 4.5 s (the loop stands still)
        stall(4.5)
        reports.append(watchdog.check())

    asyncio.get_running_loop().call_soon(wedged_engine)
    await asyncio.sleep(0)
    ok, reason = reports[0]
    assert not ok
    assert reason["stale_timers"] == {"boiler/watchdog": 5.0}
    assert "timer boiler/watchdog last ran 5.000 s ago (stale after 4.0 s)" in reason["problems"]

    beat.stop(cancel=True)  # a stopped timer (device removed) is not required to run
    await beat.wait_stopped()
    await asyncio.sleep(0.5)  # the loop lag measured after the stall ages out
    assert watchdog.check()[0]
    beat.start()
    watchdog.unwatch(beat)
    # off the tick grid: stop(cancel=True) at the very instant a tick is created is an engine case
    await asyncio.sleep(10.5)
    assert watchdog.check()[0], "unwatched"
    beat.stop(cancel=True)
    watchdog.stop()
    await beat.wait_stopped()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_watchdog_does_not_call_a_heartbeat_waiting_on_its_device_stale() -> None:
    """A tick in flight (a slow device) is the device's problem, not the service's:
    ``gatebeat_device_up`` reports it; restarting the gateway would not fix the device. Up to
    a bound: a tick still in flight stale_after + stale_after seconds after the previous one
    finished is wedged (a driver awaiting what never comes), and the timer is stale."""
    calls = 0

    async def heartbeat() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            await asyncio.sleep(5.5)  # a device that takes 5.5 s to answer
        if calls == 5:
            await asyncio.Event().wait()  # a driver awaiting something that never comes

    beat = Timer(1.0, heartbeat, SchedulePolicy.FIXED, name="boiler/watchdog")
    watchdog = Watchdog(interval=0.25, max_lag=1.0)
    watchdog.watch(beat)  # stale after 3 * 1.0 + 1.0 s; in flight: 8.0 s
    watchdog.start()
    beat.start()
    await asyncio.sleep(7.5)  # ticks finish at 1 and 2; tick 3 waits from 3.0 to 8.5
    assert beat.in_flight
    ok, reason = watchdog.check()
    assert ok, reason
    await asyncio.sleep(3.0)  # tick 3 finished at 8.5, tick 4 at 9.0; tick 5 hangs from 10.0
    assert calls == 5 and beat.in_flight
    assert watchdog.check()[0]
    await asyncio.sleep(6.0)  # 16.5: 7.5 s since tick 4 finished: still within 8.0
    assert watchdog.check()[0]
    await asyncio.sleep(1.0)  # 17.5: 8.5 s
    ok, reason = watchdog.check()
    assert not ok
    assert reason["stale_timers"] == {"boiler/watchdog": 8.5}
    assert (
        "timer boiler/watchdog last ran 8.500 s ago (stale after 8.0 s, a tick in flight)"
        in reason["problems"]
    )
    beat.stop(cancel=True)
    watchdog.stop()
    await beat.wait_stopped()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_watchdog_marks_stale_devices_down_without_making_the_service_unhealthy() -> None:
    registry = CollectorRegistry()
    hub = MetricsHub(registry)
    health = DeviceHealth("boiler", "modbus", stale_after=2.0)
    hub.add_device(health)
    watchdog = Watchdog(interval=0.25, devices=hub.devices)
    watchdog.start()
    health.record_success({"t": 40.0}, now=asyncio.get_running_loop().time())
    await asyncio.sleep(1.9)
    assert registry.get_sample_value("gatebeat_reading_t", {"device": "boiler"}) == 40.0
    await asyncio.sleep(0.2)  # the tick at 2.0 finds it stale
    assert not health.up
    assert registry.get_sample_value("gatebeat_reading_t", {"device": "boiler"}) is None
    up = registry.get_sample_value("gatebeat_device_up", {"device": "boiler", "driver": "modbus"})
    assert up == 0
    assert watchdog.check()[0]
    watchdog.stop()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"interval": 0}, "interval must be finite and > 0 seconds, got 0"),
        ({"max_lag": math.nan}, "max_lag must be finite and > 0 seconds, got nan"),
    ],
)
def test_watchdog_refuses_bad_settings(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Watchdog(**kwargs)


def test_watchdog_needs_stale_after_for_timers_without_interval() -> None:
    watchdog = Watchdog()
    beat = Timer(1.0, lambda: None, name="boiler/watchdog")
    with pytest.raises(ValueError, match=r"'boiler/watchdog' stale_after .* got -1"):
        watchdog.watch(beat, stale_after=-1)


def test_a_device_that_never_answers_goes_stale_and_says_so() -> None:
    health = DeviceHealth("mute", "modbus", stale_after=2.0)
    assert health.check_stale(10.0) is False  # starts the clock; down, not yet judged stale
    assert health.snapshot().stale is False
    assert health.snapshot().down_reason == "no successful tick yet"
    assert health.check_stale(12.5) is False
    stale = health.snapshot()
    assert stale.stale is True
    assert stale.down_reason is not None and stale.down_reason.startswith("no success for 2.500")
    health.record_success({"t": 1.0}, now=13.0)
    assert health.snapshot().stale is False and health.up
