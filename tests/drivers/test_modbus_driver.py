"""The generic ``modbus`` driver against the boiler simulator."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from drivers import modbus
from service.bus import Bus
from service.driver import Device, Tick, TimerSpec
from service.simulators.modbus import ModbusSimulator, boiler_profile
from service.transports.errors import WriteRefused
from service.transports.modbus import ModbusSession, ModbusTcpSettings

POLL = modbus.Poll.model_validate(
    {
        "registers": [
            {"field": "supply_temperature_celsius", "table": "holding", "address": 0,
             "type": "int16", "scale": 0.1},
            {"field": "pump_running", "table": "coil", "address": 3, "type": "bool"},
        ]
    }
)  # fmt: skip


def tick(device: Device, name: str, kind: str, options: object, number: int = 1) -> Tick:
    return Tick(device, TimerSpec(name, kind, 1.0, options), number, 0.0)  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_poll_and_heartbeats() -> None:
    async with ModbusSimulator(boiler_profile(7)) as sim:
        port = await sim.start_tcp()
        session = ModbusSession(
            ModbusTcpSettings(host="127.0.0.1", port=port), device="boiler", unit_id=7, bus=Bus("b")
        )
        device = Device("boiler", "modbus", modbus.Config(), session)
        readings = await modbus.poll(tick(device, "temps", "poll", POLL))
        assert readings == {"supply_temperature_celsius": pytest.approx(65.5), "pump_running": True}

        counter = modbus.Heartbeat.model_validate(
            {"write": {"table": "holding", "address": 100, "value": "counter"}}
        )
        toggle = modbus.Heartbeat.model_validate(
            {"write": {"table": "coil", "address": 9, "value": "toggle"}}
        )
        constant = modbus.Heartbeat.model_validate(
            {"write": {"table": "holding", "address": 101, "value": 77}}
        )
        seen_counter, seen_toggle = [], []
        for n in range(1, 4):
            await modbus.heartbeat(tick(device, "watchdog", "heartbeat", counter, n))
            await modbus.heartbeat(tick(device, "keepalive", "heartbeat", toggle, n))
            await modbus.heartbeat(tick(device, "fixed", "heartbeat", constant, n))
            seen_counter += sim.registers("holding", 100, unit=7)
            seen_toggle += sim.registers("coil", 9, unit=7)
        assert seen_counter == [1, 2, 3]
        assert seen_toggle == [1, 0, 1]
        assert sim.registers("holding", 101, unit=7) == [77]
        await session.close()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_read_only_device_refuses_heartbeat_writes() -> None:
    async with ModbusSimulator(boiler_profile()) as sim:
        port = await sim.start_tcp()
        settings = ModbusTcpSettings(host="127.0.0.1", port=port)
        session = ModbusSession(settings, device="boiler", unit_id=1, bus=Bus("b"), read_only=True)
        device = Device("boiler", "modbus", modbus.Config(), session)
        beat = modbus.Heartbeat.model_validate({"write": {"table": "holding", "address": 100}})
        with pytest.raises(WriteRefused, match="read-only"):
            await modbus.heartbeat(tick(device, "watchdog", "heartbeat", beat))
        assert sim.registers("holding", 100) == [0]
        await session.close()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"write": {"table": "coil", "address": 1, "value": "counter"}},
            "a coil cannot hold a counter",
        ),
        ({"write": {"table": "coil", "address": 1, "value": 2}}, "value: 2 is outside 0..1"),
        ({"write": {"table": "input", "address": 1}}, "write.table"),
        ({"write": {"table": "holding", "address": 70000}}, "write.address"),
    ],
)
def test_heartbeat_config_errors(entry: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        modbus.Heartbeat.model_validate(entry)


def test_poll_config_errors_name_the_register() -> None:
    with pytest.raises(ValidationError, match=r"registers\.1\.type"):
        modbus.Poll.model_validate(
            {"registers": [{"field": "a", "table": "holding", "address": 0},
                           {"field": "b", "table": "holding", "address": 1, "type": "int12"}]}
        )  # fmt: skip
    with pytest.raises(ValidationError, match=r"registers\[1\]\.field: 'a' appears twice"):
        modbus.Poll.model_validate(
            {"registers": [{"field": "a", "table": "holding", "address": 0},
                           {"field": "a", "table": "input", "address": 1}]}
        )  # fmt: skip
    assert modbus.TRANSPORTS == ["modbus-tcp", "modbus-rtu", "modbus-rtu-over-tcp"]
