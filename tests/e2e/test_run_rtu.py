"""``gatebeat run`` with the generic ``modbus`` driver on Modbus RTU over a pseudo-terminal:
two units on one RS-485 line, polls and heartbeats, one bus. Only the second unit asks for a
20 ms gap between frames; the line keeps it for everyone (the largest gap of a bus)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from service.simulators.modbus import ModbusSimulator, boiler_profile, plc_watchdog_profile
from tests.e2e.helpers import free_port, gatebeat, scrape, stop, wait_until

GAP = 0.020
"""Seconds of silence the plc asks for on the shared line."""

CONFIG = """
[metrics]
listen = "127.0.0.1:{metrics_port}"

[[devices]]
name = "boiler"
driver = "modbus"
unit_id = 1

  [devices.transport]
  kind = "modbus-rtu"
  port = "{port}"
  baudrate = 19200
  timeout = 0.3
  bus = "rs485-a"

  [[devices.polls]]
  name = "temps"
  interval = 0.2

    [[devices.polls.registers]]
    field = "supply_temperature_celsius"
    table = "holding"
    address = 0
    type = "int16"
    scale = 0.1

  [[devices.heartbeats]]
  name = "watchdog"
  interval = 0.2
  write = {{ table = "holding", address = 100, value = "counter" }}

[[devices]]
name = "plc"
driver = "modbus"
unit_id = 2

  [devices.transport]
  kind = "modbus-rtu"
  port = "{port}"
  baudrate = 19200
  timeout = 0.3
  bus = "rs485-a"
  gap = "20ms"

  [[devices.heartbeats]]
  name = "toggle"
  interval = 0.2
  phase = 0.1
  write = {{ table = "holding", address = 100, value = "toggle" }}
"""


@pytest.mark.e2e
@pytest.mark.asyncio
async def test_generic_modbus_driver_on_an_rtu_line(tmp_path: Path) -> None:
    simulator = ModbusSimulator([boiler_profile(1), plc_watchdog_profile(2)])
    port = await simulator.start_rtu()
    metrics_port = free_port()
    config = tmp_path / "gatebeat.toml"
    config.write_text(CONFIG.format(metrics_port=metrics_port, port=port))
    try:
        with gatebeat("run", "--config", str(config), log=tmp_path / "log") as process:

            def both_up() -> dict | None:
                m = scrape(metrics_port)
                if not m:
                    return None
                up = [
                    m.get(("gatebeat_device_up", (("device", d), ("driver", "modbus"))))
                    for d in ("boiler", "plc")
                ]
                reading = m.get(
                    ("gatebeat_reading_supply_temperature_celsius", (("device", "boiler"),))
                )
                return m if up == [1.0, 1.0] and reading is not None else None

            metrics = await asyncio.to_thread(wait_until, both_up, timeout=30, what="both up")
            reading = ("gatebeat_reading_supply_temperature_celsius", (("device", "boiler"),))
            assert metrics[reading] == pytest.approx(65.5)
            bus = ("gatebeat_bus_wait_seconds_count", (("bus", "rs485-a"),))
            assert metrics[bus] >= 3

            def written() -> bool:
                counter = simulator.registers("holding", 100, 1, unit=1)[0]
                toggles = {e.unit_id for e in simulator.exchanges if e.function_code == 6}
                return counter >= 3 and toggles == {1, 2}

            await asyncio.to_thread(wait_until, written, timeout=20, what="heartbeat writes")
            # One line: exchanges never overlap, and plc's 20 ms gap is kept between all of
            # them, though boiler (listed first) asks for no more than 3.5 characters (2 ms).
            exchanges = sorted(simulator.exchanges, key=lambda e: e.received)
            gaps = [b.received - a.answered for a, b in itertools.pairwise(exchanges)]
            assert len(gaps) >= 5 and min(gaps) >= GAP - 0.001, gaps
            code, _ = await asyncio.to_thread(stop, process)
            assert code == 0
    finally:
        await simulator.close()
