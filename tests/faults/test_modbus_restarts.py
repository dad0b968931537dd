"""Case 1: a Modbus device killed and restarted 20 times while a healthy one keeps its beat.

A real ``python -m service run`` process polls two simulators on two endpoints (two buses).
The flaky one is stopped and restarted 20 times; each time the test waits (bounded) until
``gatebeat_device_up`` follows it down and up again and records how long that took. The
healthy device's heartbeat lateness histogram must have no observation above 10 ms at the end.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from service.simulators.modbus import ModbusSimulator, boiler_profile, plc_watchdog_profile
from tests.e2e.helpers import free_port, gatebeat, scrape, stop
from tests.faults.support import Samples, await_until, buckets, count_above, value

INTERVAL = 0.1
BACKOFF_MAX = 0.2
RESTARTS = 20
# device_up must follow a restart within two intervals plus the longest backoff; the rest is
# slack for a loaded 2-core machine (scrape period 10 ms, process scheduling, reconnect).
UP_BOUND = 2 * INTERVAL + BACKOFF_MAX + 0.1
DOWN_BOUND = 2 * INTERVAL + 0.2 + 0.1  # two intervals plus the transport timeout, plus slack

CONFIG = """
[metrics]
listen = "127.0.0.1:{metrics_port}"

[runtime]
shutdown_timeout = 3.0

[[devices]]
name = "flaky"
driver = "modbus"
unit_id = 1
down_after_failures = 1

  [devices.transport]
  kind = "modbus-tcp"
  host = "127.0.0.1"
  port = {flaky_port}
  timeout = 0.2
  retries = 0
  reconnect_delay = 0.05
  reconnect_delay_max = {backoff_max}
  reconnect_jitter = 0.0

  [[devices.polls]]
  name = "temps"
  interval = {interval}

    [[devices.polls.registers]]
    field = "supply_temperature_celsius"
    table = "holding"
    address = 0
    type = "int16"
    scale = 0.1

[[devices]]
name = "steady"
driver = "modbus"
unit_id = 1
transport = {{ kind = "modbus-tcp", host = "127.0.0.1", port = {steady_port}, timeout = 0.5 }}

  [[devices.heartbeats]]
  name = "watchdog"
  interval = {interval}
  write = {{ table = "holding", address = 100, value = "counter" }}
"""


@pytest.mark.e2e
@pytest.mark.realtime
@pytest.mark.asyncio
@pytest.mark.timeout(180)
async def test_device_restarted_20_times_service_follows_healthy_device_unaffected(
    tmp_path: Path,
) -> None:
    flaky = ModbusSimulator(boiler_profile(1))
    steady = ModbusSimulator(plc_watchdog_profile(1))
    flaky_port = await flaky.start_tcp()
    steady_port = await steady.start_tcp()
    metrics_port = free_port()
    config = tmp_path / "gatebeat.toml"
    config.write_text(
        CONFIG.format(
            metrics_port=metrics_port,
            flaky_port=flaky_port,
            steady_port=steady_port,
            interval=INTERVAL,
            backoff_max=BACKOFF_MAX,
        )
    )
    log = tmp_path / "gatebeat.log"
    ups: list[float] = []
    downs: list[float] = []
    steady_down_seen: list[Samples] = []

    def device_is(port: int, device: str, up: float):
        def probe() -> Samples | None:
            metrics = scrape(port)
            if metrics is None:
                return None
            if value(metrics, "gatebeat_device_up", device="steady", driver="modbus") == 0.0:
                steady_down_seen.append(metrics)
            if value(metrics, "gatebeat_device_up", device=device, driver="modbus") == up:
                return metrics
            return None

        return probe

    try:
        with gatebeat("run", "--config", str(config), log=log) as process:
            await await_until(
                device_is(metrics_port, "flaky", 1.0), timeout=20, what="flaky up at start"
            )
            await await_until(
                device_is(metrics_port, "steady", 1.0), timeout=10, what="steady up at start"
            )
            steady_down_seen.clear()  # before its first tick a device is not up yet
            started = time.monotonic()
            for cycle in range(RESTARTS):
                await flaky.stop()
                t0 = time.monotonic()
                down = await await_until(
                    device_is(metrics_port, "flaky", 0.0), timeout=10, what=f"down #{cycle}"
                )
                downs.append(time.monotonic() - t0)
                assert (
                    value(down, "gatebeat_reading_supply_temperature_celsius", device="flaky")
                    is None
                ), "a down device exports no reading"
                await flaky.restart()
                t1 = time.monotonic()
                back = await await_until(
                    device_is(metrics_port, "flaky", 1.0), timeout=10, what=f"up #{cycle}"
                )
                ups.append(time.monotonic() - t1)
                assert value(
                    back, "gatebeat_reading_supply_temperature_celsius", device="flaky"
                ) == pytest.approx(65.5)
                assert process.poll() is None, f"gatebeat exited during cycle {cycle}"
            elapsed = time.monotonic() - started
            final = scrape(metrics_port)
            assert final is not None
            code, seconds = await asyncio.to_thread(stop, process)
    finally:
        await flaky.close()
        await steady.close()

    print(
        f"\nrestarts={RESTARTS} up: max={max(ups):.3f}s mean={sum(ups) / len(ups):.3f}s "
        f"down: max={max(downs):.3f}s mean={sum(downs) / len(downs):.3f}s "
        f"elapsed={elapsed:.1f}s"
    )
    assert code == 0 and seconds < 5.0
    assert max(ups) < UP_BOUND, ups
    assert max(downs) < DOWN_BOUND, downs
    assert steady_down_seen == [], "the healthy device went down while the other one flapped"

    lateness = buckets(final, "gatebeat_tick_lateness_seconds", device="steady", timer="watchdog")
    ticks = lateness[-1][1]
    late_ticks = count_above(lateness, 0.01)
    print(f"steady heartbeat: ticks={ticks:.0f} above 10 ms={late_ticks:.0f}")
    assert ticks >= 0.8 * elapsed / INTERVAL, "the healthy heartbeat kept ticking"
    assert late_ticks == 0, lateness
    errors = value(
        final,
        "gatebeat_tick_errors_total",
        device="flaky",
        timer="temps",
        error="DeviceUnavailable",
    )
    assert errors is not None and errors >= RESTARTS
    text = log.read_text()
    assert "Traceback" not in text, text
