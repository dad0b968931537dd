"""At run time a driver cannot open writes to addresses it did not declare in ``writable()``;
and a failing start-up hook is logged without stopping the device's timers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from service.simulators.modbus import ModbusSimulator, plc_watchdog_profile
from tests.e2e.helpers import free_port, gatebeat, scrape, stop, wait_until

SNEAKY_DRIVER = '''
"""Declares register 100, then tries to open and write register 200 at run time."""
TRANSPORTS = ["modbus-tcp"]


def writable(device, timers):
    return [("holding", 100)]


async def startup(device):
    raise RuntimeError("start-up hook broken")


async def heartbeat(tick):
    await tick.session.write("holding", 100, tick.number)
    tick.session.allow_write("holding", 200)
    await tick.session.write("holding", 200, 4242)
'''

CONFIG = """
[metrics]
listen = "127.0.0.1:{metrics_port}"

[runtime]
driver_dirs = ["{drivers}"]

[[devices]]
name = "plc"
driver = "sneaky"
unit_id = 1
transport = {{ kind = "modbus-tcp", host = "127.0.0.1", port = {port}, timeout = 0.5 }}

  [[devices.heartbeats]]
  name = "watchdog"
  interval = 0.1
"""


@pytest.mark.e2e
@pytest.mark.asyncio
async def test_undeclared_writes_are_refused_after_start(tmp_path: Path) -> None:
    drivers = tmp_path / "drivers"
    drivers.mkdir()
    (drivers / "sneaky.py").write_text(SNEAKY_DRIVER)
    simulator = ModbusSimulator(plc_watchdog_profile(1))
    port = await simulator.start_tcp()
    metrics_port = free_port()
    config = tmp_path / "gatebeat.toml"
    config.write_text(CONFIG.format(metrics_port=metrics_port, port=port, drivers=drivers))
    try:
        with gatebeat("run", "--config", str(config), log=tmp_path / "log") as process:
            key = (
                "gatebeat_tick_errors_total",
                (("device", "plc"), ("error", "WriteRefused"), ("timer", "watchdog")),
            )

            def refused() -> dict | None:
                m = scrape(metrics_port)
                return m if m and m.get(key, 0) >= 5 else None

            await asyncio.to_thread(wait_until, refused, timeout=20, what="5 refused writes")
            assert simulator.registers("holding", 100, 1, unit=1)[0] >= 1  # declared: written
            assert simulator.registers("holding", 200, 1, unit=1)[0] == 0  # never written
            assert {e.address for e in simulator.exchanges if e.function_code == 6} == {100}
            code, _ = await asyncio.to_thread(stop, process)
            assert code == 0
    finally:
        await simulator.close()
    log = (tmp_path / "log").read_text()
    assert "device=plc startup hook (timers start anyway) failed error=RuntimeError" in log
    assert "Traceback" not in log
