"""Every way a device tick fails reaches the device's health, through ``serve()``.

A failed tick must count as a device failure (``gatebeat_device_errors_total``, consecutive
failures, down after ``down_after_failures``) and drop the readings that timer produced, so no
old value is exported as fresh. Two ways used to slip past: a tick cut off by its per-tick
``timeout`` (the engine cancels it, so the callback saw only a ``CancelledError``), and a
reading whose field name is no metric name (refused after the callback had returned).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from service.http import Exporter
from service.runner import serve
from service.settings import load_settings
from service.simulators.modbus import ModbusSimulator, boiler_profile
from tests.e2e.helpers import free_port
from tests.faults.support import Samples, await_until, scrape_where, value


@asynccontextmanager
async def serving(path: Path, config: str) -> AsyncIterator[int]:
    """Run ``serve()`` on ``config`` (``{metrics_port}`` filled in) written to ``path``; yields
    the metrics port."""
    metrics_port = free_port()
    path.write_text(config.format(metrics_port=metrics_port))
    stop = asyncio.Event()
    ready = asyncio.Event()

    def on_ready(_exporter: Exporter) -> None:
        ready.set()

    settings = load_settings(str(path), env={})
    task = asyncio.create_task(serve(settings, stop=stop, on_ready=on_ready, handle_signals=False))
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        yield metrics_port
    finally:
        stop.set()
        async with asyncio.timeout(10):
            assert await task == 0


async def wait_for(port: int, what: str, condition: Callable[[Samples], bool]) -> Samples:
    return await await_until(scrape_where(port, condition), timeout=10, what=what)


@pytest.mark.asyncio
async def test_a_tick_cut_off_by_its_timeout_is_a_device_failure(tmp_path: Path) -> None:
    simulator = ModbusSimulator(boiler_profile(1))
    port = await simulator.start_tcp()
    config = f"""
[metrics]
listen = "127.0.0.1:{{metrics_port}}"
[[devices]]
name = "boiler"
driver = "modbus"
down_after_failures = 2
stale_after = "60s"
transport = {{{{ kind = "modbus-tcp", host = "127.0.0.1", port = {port}, timeout = "5s" }}}}
  [[devices.polls]]
  name = "temps"
  interval = "100ms"
  immediate = true
  timeout = "200ms"
  registers = [{{{{ field = "supply_temperature_celsius", table = "holding", address = 0, \
type = "int16", scale = 0.1 }}}}]
"""
    try:
        async with serving(tmp_path / "gatebeat.toml", config) as metrics_port:
            reading = "gatebeat_reading_supply_temperature_celsius"
            await wait_for(
                metrics_port,
                "a first reading",
                lambda m: value(m, reading, device="boiler") is not None,
            )
            simulator.delay = 5.0  # every later tick is cut off by its 200 ms timeout
            metrics = await wait_for(
                metrics_port,
                "the device down after two timed-out ticks",
                lambda m: value(m, "gatebeat_device_up", device="boiler", driver="modbus") == 0.0,
            )
    finally:
        await simulator.close()
    errors = value(metrics, "gatebeat_device_errors_total", device="boiler", error="TimeoutError")
    assert errors is not None and errors >= 2
    assert value(metrics, reading, device="boiler") is None, "no old value exported as fresh"


@pytest.mark.asyncio
async def test_a_reading_with_a_bad_field_name_fails_the_tick_for_the_device(
    tmp_path: Path,
) -> None:
    drivers = tmp_path / "drivers"
    drivers.mkdir()
    (drivers / "goes_bad.py").write_text(
        '"""First a valid reading, then the same with a field that is no metric name."""\n'
        'TRANSPORTS = ["modbus-tcp"]\n\n\n'
        "async def poll(tick):\n"
        '    n = tick.device.state["n"] = tick.device.state.get("n", 0) + 1\n'
        '    return {"level_percent": 1.0} if n == 1 else {"level_percent": n, "bad-name": 0.0}\n'
    )
    config = f"""
[metrics]
listen = "127.0.0.1:{{metrics_port}}"
[runtime]
driver_dirs = ["{drivers}"]
[[devices]]
name = "tank"
driver = "goes_bad"
down_after_failures = 2
stale_after = "60s"
transport = {{{{ kind = "modbus-tcp", host = "127.0.0.1", port = 1 }}}}
  [[devices.polls]]
  name = "level"
  interval = "50ms"
  immediate = true
"""
    async with serving(tmp_path / "gatebeat.toml", config) as metrics_port:
        metrics = await wait_for(
            metrics_port,
            "the device down after two refused readings",
            lambda m: value(m, "gatebeat_device_up", device="tank", driver="goes_bad") == 0.0,
        )
    errors = value(metrics, "gatebeat_device_errors_total", device="tank", error="InvalidFieldName")
    assert errors is not None and errors >= 2
    assert value(metrics, "gatebeat_reading_level_percent", device="tank") is None
