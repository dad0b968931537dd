"""The example PLC watchdog driver: an incrementing counter, written on a FIXED schedule."""

from __future__ import annotations

import asyncio

import pytest

from drivers import example_plc_watchdog as watchdog
from service import SchedulePolicy, Timer
from service.bus import Bus
from service.driver import Device, Tick, TimerSpec
from service.simulators.modbus import ModbusSimulator, plc_watchdog_profile
from service.transports.modbus import ModbusSession, ModbusTcpSettings


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_counter_written_every_second_and_wraps() -> None:
    async with ModbusSimulator(plc_watchdog_profile()) as sim:
        port = await sim.start_tcp()
        session = ModbusSession(
            ModbusTcpSettings(host="127.0.0.1", port=port), device="plc", unit_id=1, bus=Bus("b")
        )
        device = Device("plc", "example_plc_watchdog", watchdog.Config(wrap=3), session)
        spec = TimerSpec("watchdog", "heartbeat", 1.0)
        loop = asyncio.get_running_loop()
        seen: list[tuple[float, int]] = []
        number = 0

        async def beat() -> None:
            nonlocal number
            number += 1
            await watchdog.heartbeat(Tick(device, spec, number, loop.time()))
            seen.append((loop.time(), sim.registers("holding", 100)[0]))

        start = loop.time()
        timer = Timer(1.0, beat, SchedulePolicy.FIXED, name="plc/watchdog")
        timer.start()
        await asyncio.sleep(5.5)
        timer.stop()
        await timer.wait_stopped()
        assert [value for _, value in seen] == [1, 2, 3, 1, 2]
        assert [round(t - start, 2) for t, _ in seen] == [1.0, 2.0, 3.0, 4.0, 5.0]
        await session.close()


def test_defaults() -> None:
    assert watchdog.DEFAULT_HEARTBEATS == [{"name": "watchdog", "interval": 1.0}]
    assert not hasattr(watchdog, "poll")
    assert watchdog.Config().address == 100
