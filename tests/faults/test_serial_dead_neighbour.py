"""Case 9: a serial device on a shared RS-485 line goes silent; its neighbour keeps its pace.

A real ``python -m service run`` process polls two ``serial_line`` devices on one bus
(``bus = "rs485"``), each a :class:`SerialSimulator` on its own pseudo-terminal. ``dead`` stops
answering: after its first timeout it is backed off (requests fail fast with
``DeviceUnavailable``), so ``live`` waits for it once per backoff step, not on every poll. Then
``dead`` answers again and recovers on its next attempt.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from service.simulators.serial import SerialSimulator, serial_sensor_profile
from tests.e2e.helpers import free_port, gatebeat, scrape, stop
from tests.faults.support import (
    Samples,
    await_until,
    bucket_delta,
    buckets,
    count_above,
    family,
    scrape_where,
    value,
)

INTERVAL = 0.1
TIMEOUT = 0.3
RECONNECT_DELAY = 1.0
RECONNECT_DELAY_MAX = 2.0
OBSERVE = 3.0  # seconds the dead device is kept silent before the final scrape

_DEVICE = """
[[devices]]
name = "{name}"
driver = "serial_line"
down_after_failures = 1

  [devices.transport]
  kind = "serial"
  port = "{port}"
  bus = "rs485"
  timeout = {timeout}
  reconnect_delay = {reconnect_delay}
  reconnect_delay_max = {reconnect_delay_max}

  [[devices.polls]]
  name = "temperature"
  interval = {interval}
  command = "READ?\\r\\n"
  reply = '^(?P<temperature_celsius>-?\\d+(?:\\.\\d+)?)$'
"""

CONFIG = """
[metrics]
listen = "127.0.0.1:{metrics_port}"

[runtime]
shutdown_timeout = 3.0
"""


def _up(metrics: Samples, device: str) -> float | None:
    return value(metrics, "gatebeat_device_up", device=device, driver="serial_line")


def _errors(metrics: Samples, device: str) -> dict[str, float]:
    return {
        dict(labels)["error"]: v
        for labels, v in family(metrics, "gatebeat_tick_errors_total", device=device).items()
    }


def _durations(metrics: Samples, device: str) -> list[tuple[float, float]]:
    return buckets(metrics, "gatebeat_tick_duration_seconds", device=device, timer="temperature")


def _both_up(metrics: Samples) -> bool:
    return _up(metrics, "dead") == 1.0 and _up(metrics, "live") == 1.0


@pytest.mark.e2e
@pytest.mark.realtime
@pytest.mark.asyncio
async def test_a_silent_serial_device_does_not_stall_its_neighbour_on_the_bus(
    tmp_path: Path,
) -> None:
    dead = SerialSimulator(serial_sensor_profile(temperature_celsius=lambda: 20.0))
    live = SerialSimulator(serial_sensor_profile(temperature_celsius=lambda: 21.5))
    await dead.start()
    await live.start()
    metrics_port = free_port()
    timing = {
        "timeout": TIMEOUT,
        "reconnect_delay": RECONNECT_DELAY,
        "reconnect_delay_max": RECONNECT_DELAY_MAX,
        "interval": INTERVAL,
    }
    config = tmp_path / "gatebeat.toml"
    config.write_text(
        CONFIG.format(metrics_port=metrics_port)
        + _DEVICE.format(name="dead", port=dead.path, **timing)
        + _DEVICE.format(name="live", port=live.path, **timing)
    )
    log = tmp_path / "gatebeat.log"
    try:
        with gatebeat("run", "--config", str(config), log=log) as process:
            await await_until(scrape_where(metrics_port, _both_up), timeout=20, what="both up")
            dead.silent = True
            first = await await_until(
                scrape_where(metrics_port, lambda m: _up(m, "dead") == 0.0),
                timeout=5,
                what="dead down",
            )
            started = time.monotonic()
            await asyncio.sleep(OBSERVE)  # dead stays silent; asserted from the counters
            final = await asyncio.to_thread(scrape, metrics_port)
            assert final is not None
            elapsed = time.monotonic() - started

            dead.silent = False
            t0 = time.monotonic()
            await await_until(
                scrape_where(metrics_port, _both_up), timeout=10, what="dead answers again"
            )
            recovered_s = time.monotonic() - t0
            assert process.poll() is None
            code, seconds = await asyncio.to_thread(stop, process)
    finally:
        await dead.stop()
        await live.stop()

    def error_delta(device: str, kind: str) -> float:
        return _errors(final, device).get(kind, 0.0) - _errors(first, device).get(kind, 0.0)

    live_ticks = (value(final, "gatebeat_ticks_total", device="live", timer="temperature") or 0) - (
        value(first, "gatebeat_ticks_total", device="live", timer="temperature") or 0
    )
    live_durations = bucket_delta(_durations(first, "live"), _durations(final, "live"))
    live_slow = count_above(live_durations, 0.25)
    report = {
        "observed_s": round(elapsed, 2),
        "dead DeviceTimeout": error_delta("dead", "DeviceTimeout"),
        "dead DeviceUnavailable": error_delta("dead", "DeviceUnavailable"),
        "live ticks": live_ticks,
        "live ticks over 0.25 s": live_slow,
        "live errors": _errors(final, "live"),
        "dead recovered_s": round(recovered_s, 2),
    }
    print(f"\n{report}")
    assert code == 0 and seconds < 5.0

    # dead: tried once per backoff step (1 s, then 2 s: two or three attempts in 3 s); every
    # other poll failed fast. Its error kinds say which is which.
    assert 1 <= report["dead DeviceTimeout"] <= 3, report
    assert report["dead DeviceUnavailable"] >= 10, report
    assert _up(final, "dead") == 0.0
    assert value(final, "gatebeat_reading_temperature_celsius", device="dead") is None

    # live: held up (a tick longer than 0.25 s) only while dead really waited on the line, once
    # per dead attempt (one more at the window's edge: the first scrape may come between dead's
    # first timeout and the end of the live tick it held up). Before the backoff: 8 of 8.
    assert live_slow <= min(3, report["dead DeviceTimeout"] + 1), report
    assert live_ticks >= 0.7 * elapsed / INTERVAL, report
    assert report["live errors"] == {}, report
    assert _up(final, "live") == 1.0

    # recovery on the next attempt (at most one capped step away), logged once each way
    assert recovered_s < RECONNECT_DELAY_MAX + 1.0, report
    text = log.read_text()
    assert "Traceback" not in text, text[-5000:]
    assert text.count("device dead stopped answering") == 1, text[-5000:]
    assert text.count("device dead answers again") == 1, text[-5000:]
