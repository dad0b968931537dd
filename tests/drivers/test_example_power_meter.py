"""The example power meter driver against its simulator profile (TCP and RTU over TCP)."""

from __future__ import annotations

import pytest

from drivers import example_power_meter as meter
from service.bus import Bus
from service.driver import Device, Tick, TimerSpec
from service.simulators.modbus import POWER_METER_SPECS, ModbusSimulator, power_meter_profile
from service.transports.errors import DeviceTimeout, ModbusExceptionResponse
from service.transports.modbus import ModbusRtuOverTcpSettings, ModbusSession, ModbusTcpSettings


def tick(device: Device, kind: str, number: int = 1) -> Tick:
    return Tick(
        device, TimerSpec("readings" if kind == "poll" else "watchdog", kind, 1.0), number, 0.0
    )


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.parametrize("framer", ["socket", "rtu"])
async def test_poll_reads_floats_and_heartbeat_counts(framer: str) -> None:
    async with ModbusSimulator(power_meter_profile(5)) as sim:
        port = await sim.start_tcp(framer=framer)  # type: ignore[arg-type]
        kind = ModbusTcpSettings if framer == "socket" else ModbusRtuOverTcpSettings
        session = ModbusSession(
            kind(host="127.0.0.1", port=port), device="pm", unit_id=5, bus=Bus("b")
        )
        device = Device("pm", "example_power_meter", meter.Config(watchdog_address=40), session)
        sim.set_value(POWER_METER_SPECS[2], 2300.5)
        readings = await meter.poll(tick(device, "poll"))
        assert readings == {
            "voltage_volts": 230.0,
            "current_amperes": 5.0,
            "power_watts": 2300.5,
            "energy_joules": 123456.0 * 3600.0,
        }
        assert session.requests_sent == 1
        for n in range(1, 4):
            await meter.heartbeat(tick(device, "heartbeat", n))
            assert sim.registers("holding", 40, unit=5) == [n]
        await session.close()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_exception_and_timeout_reach_the_caller_typed() -> None:
    async with ModbusSimulator(power_meter_profile()) as sim:
        port = await sim.start_tcp()
        settings = ModbusTcpSettings(host="127.0.0.1", port=port, timeout=0.2, retries=0)
        session = ModbusSession(settings, device="pm", unit_id=1, bus=Bus("b"))
        device = Device("pm", "example_power_meter", meter.Config(), session)
        sim.fail_with(4)
        with pytest.raises(ModbusExceptionResponse, match="exception code 4"):
            await meter.poll(tick(device, "poll"))
        sim.heal()
        sim.delay = 1.0
        with pytest.raises(DeviceTimeout, match="device 'pm'"):
            await meter.poll(tick(device, "poll"))
        await session.close()


def test_driver_and_simulator_agree_on_the_register_map() -> None:
    assert meter.REGISTERS == POWER_METER_SPECS
    assert meter.Config().watchdog_address == 100
    assert meter.Config.model_fields["watchdog_address"].description
