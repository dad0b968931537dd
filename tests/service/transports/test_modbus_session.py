"""Modbus sessions against pymodbus's own server on 127.0.0.1 (and a pty pair for RTU)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from itertools import pairwise

import pytest

from service.bus import Bus
from service.simulators.modbus import (
    POWER_METER_SPECS,
    ModbusSimulator,
    UnitProfile,
    power_meter_profile,
)
from service.transports.errors import (
    DeviceTimeout,
    DeviceUnavailable,
    ModbusExceptionResponse,
    TransportError,
    WriteRefused,
)
from service.transports.factory import open_session
from service.transports.modbus import (
    ModbusRtuOverTcpSettings,
    ModbusRtuSettings,
    ModbusSession,
    ModbusTcpSettings,
    bus_name,
    default_gap,
)
from service.values import RegisterSpec

METER = {
    "voltage_volts": 230.0,
    "current_amperes": 5.0,
    "power_watts": 1150.0,
    "energy_joules": 123456.0 * 3600.0,
}


def tcp(port: int, **kw: object) -> ModbusTcpSettings:
    return ModbusTcpSettings.model_validate({"host": "127.0.0.1", "port": port, **kw})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(
    attempt: Callable[[], Awaitable[object]], *, within: float, step: float = 0.05
) -> object:
    """Call ``attempt`` until it returns without a TransportError, for at most ``within`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            return await attempt()
        except TransportError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(step)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_reads_are_grouped_into_one_request() -> None:
    async with ModbusSimulator(power_meter_profile()) as sim:
        port = await sim.start_tcp()
        session = ModbusSession(tcp(port), device="meter", unit_id=1, bus=Bus("b"))
        assert await session.read(POWER_METER_SPECS) == METER
        assert session.requests_sent == 1
        assert [(e.function_code, e.address, e.count) for e in sim.exchanges] == [(4, 0, 8)]
        single = ModbusSession(
            tcp(port, one_request_per_field=True), device="m2", unit_id=1, bus=Bus("c")
        )
        assert await single.read(POWER_METER_SPECS) == METER
        assert single.requests_sent == 4
        await session.close()
        await single.close()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_all_tables_and_scaling() -> None:
    async with ModbusSimulator() as sim:
        port = await sim.start_tcp()
        specs = [
            RegisterSpec(field="t", table="holding", address=10, type="int16", scale=0.1),
            RegisterSpec(field="pump", table="coil", address=3, type="bool"),
            RegisterSpec(field="alarm", table="discrete", address=17, type="bool"),
            RegisterSpec(field="name", table="input", address=20, type="string", length=4),
        ]
        sim.set_value(specs[0], -12.5)
        sim.set_value(specs[1], True)
        sim.set_value(specs[2], True)
        sim.set_value(specs[3], "PM-7")
        session = ModbusSession(tcp(port), device="d", unit_id=1, bus=Bus("b"))
        readings = await session.read(specs)
        assert readings == {"t": pytest.approx(-12.5), "pump": True, "alarm": True, "name": "PM-7"}
        assert await session.read_raw("coil", 0, 5) == [False, False, False, True, False]
        await session.close()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_slow_simulator_holds_a_write_back_once_like_a_read() -> None:
    async with ModbusSimulator() as sim:
        port = await sim.start_tcp()
        session = ModbusSession(
            tcp(port, timeout=5.0), device="plc", unit_id=1, bus=Bus("b"), writable=[("holding", 7)]
        )
        sim.delay = 2.0
        await session.write("holding", 7, 1)
        await session.read_raw("holding", 7, 1)
        assert [(e.function_code, e.answered - e.received) for e in sim.exchanges] == [
            (6, pytest.approx(2.0, abs=0.01)),  # not 4 s: pymodbus checks a write twice
            (3, pytest.approx(2.0, abs=0.01)),
        ]
        await session.close()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_writes_only_what_is_declared() -> None:
    async with ModbusSimulator() as sim:
        port = await sim.start_tcp()
        session = ModbusSession(
            tcp(port),
            device="plc",
            unit_id=1,
            bus=Bus("b"),
            writable=[("holding", 100), ("coil", 2)],
        )
        await session.write("holding", 100, 42)
        await session.write("coil", 2, True)
        assert sim.registers("holding", 100) == [42]
        assert sim.registers("coil", 2) == [1]
        with pytest.raises(
            WriteRefused, match="device 'plc': holding 101 is not declared writable"
        ):
            await session.write("holding", 101, 1)
        with pytest.raises(WriteRefused, match="table 'input' cannot be written"):
            await session.write("input", 100, 1)
        with pytest.raises(ValueError, match=r"value 70000 for holding 100 is outside 0\.\.65535"):
            await session.write("holding", 100, 70000)
        setpoint = RegisterSpec(field="setpoint", table="holding", address=200, type="float32")
        with pytest.raises(WriteRefused, match="holding 200 \\(count 2\\) is not declared"):
            await session.write_value(setpoint, 21.5)
        session.allow_write("holding", 200, 2)
        await session.write_value(setpoint, 21.5)
        assert sim.value(setpoint) == 21.5
        await session.write("holding", 200, [1, 2])
        assert sim.registers("holding", 200, 2) == [1, 2]
        with pytest.raises(ValueError, match="table 'discrete' cannot be written"):
            session.allow_write("discrete", 0)
        readonly = ModbusSession(
            tcp(port),
            device="ro",
            unit_id=1,
            bus=Bus("c"),
            read_only=True,
            writable=[("holding", 100)],
        )
        with pytest.raises(
            WriteRefused, match="device 'ro': read-only, refusing write to holding 100"
        ):
            await readonly.write("holding", 100, 1)
        assert sim.registers("holding", 100) == [42]
        await session.close()
        await readonly.close()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_exception_responses_are_typed() -> None:
    async with ModbusSimulator(UnitProfile(size=16)) as sim:
        port = await sim.start_tcp()
        session = ModbusSession(
            tcp(port), device="m", unit_id=1, bus=Bus("b"), writable=[("holding", 1)]
        )
        with pytest.raises(ModbusExceptionResponse) as info:
            await session.read_raw("holding", 10, 10)  # past the end of the table
        assert (info.value.code, info.value.function, info.value.address) == (
            2,
            "read_holding_registers",
            10,
        )
        sim.fail_with(6, functions=[6])
        with pytest.raises(
            ModbusExceptionResponse,
            match="write_register at address 1: exception code 6 \\(server device busy\\)",
        ):
            await session.write("holding", 1, 5)
        assert await session.read_raw("holding", 0, 2) == [0, 0]  # reads still fine
        sim.heal()
        await session.write("holding", 1, 5)
        await session.close()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_slow_device_times_out_then_backs_off_without_blocking() -> None:
    async with ModbusSimulator(power_meter_profile()) as sim:
        port = await sim.start_tcp()
        session = ModbusSession(
            tcp(port, timeout=0.5, retries=1, reconnect_jitter=0),
            device="slow",
            unit_id=1,
            bus=Bus("b"),
        )
        loop = asyncio.get_running_loop()
        sim.delay = 3.0
        started = loop.time()
        with pytest.raises(
            DeviceTimeout,
            match="device 'slow': read_input_registers at address 0 \\(count 8\\): no reply",
        ):
            await session.read(POWER_METER_SPECS)
        assert loop.time() - started == pytest.approx(1.0, abs=0.05)  # timeout x (retries + 1)
        started = loop.time()
        with pytest.raises(DeviceUnavailable, match="not answering, next attempt in"):
            await session.read(POWER_METER_SPECS)
        assert loop.time() - started < 0.01  # fails fast while backing off
        sim.delay = 0.0
        await asyncio.sleep(4.0)  # the late replies arrive and are dropped
        assert await session.read(POWER_METER_SPECS) == METER
        await session.close()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_device_killed_and_restarted_reconnects_with_backoff() -> None:
    async with ModbusSimulator(power_meter_profile()) as sim:
        port = await sim.start_tcp()
        session = ModbusSession(
            tcp(port, timeout=0.2, retries=0, reconnect_delay=0.1, reconnect_delay_max=1.0),
            device="meter", unit_id=1, bus=Bus("b"),
        )  # fmt: skip
        assert await session.read(POWER_METER_SPECS) == METER
        await sim.stop()
        attempts = 0
        loop = asyncio.get_running_loop()
        until = loop.time() + 5.0
        while loop.time() < until:
            attempts += 1
            with pytest.raises((DeviceUnavailable, DeviceTimeout)):
                await session.read(POWER_METER_SPECS)
            await asyncio.sleep(0.01)
        link = session._link
        assert link.backoff.failures >= 4  # 0.1, 0.2, 0.4, 0.8, 1.0 ... capped
        assert link.backoff.retry_at - loop.time() <= 1.0
        connects = link.backoff.failures
        assert attempts > 10 * connects  # most requests failed fast, without connecting
        sim.set_value(POWER_METER_SPECS[0], 231.5)
        await sim.restart()
        readings = await eventually(lambda: session.read(POWER_METER_SPECS), within=2.0)
        assert readings == {**METER, "voltage_volts": 231.5}
        await session.close()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_device_offline_at_startup_is_retried_and_blocks_nobody() -> None:
    dead_port = free_port()
    async with ModbusSimulator(power_meter_profile()) as alive:
        port = await alive.start_tcp()
        dead = ModbusSession(tcp(dead_port, timeout=0.5), device="dead", unit_id=1, bus=Bus("x"))
        live = ModbusSession(tcp(port), device="live", unit_id=1, bus=Bus("y"))
        loop = asyncio.get_running_loop()
        failures = 0

        async def poll_dead() -> None:
            nonlocal failures
            for _ in range(50):
                try:
                    await dead.read(POWER_METER_SPECS)
                except DeviceUnavailable:
                    failures += 1
                await asyncio.sleep(0.1)

        async def poll_live() -> list[float]:
            durations = []
            for _ in range(50):
                started = loop.time()
                assert await live.read(POWER_METER_SPECS) == METER
                durations.append(loop.time() - started)
                await asyncio.sleep(0.1)
            return durations

        async with asyncio.TaskGroup() as group:
            group.create_task(poll_dead())
            durations = await group.create_task(poll_live())
        assert failures == 50
        assert max(durations) < 0.01
        async with ModbusSimulator(power_meter_profile()) as late:
            await late.start_tcp(port=dead_port)
            assert await eventually(lambda: dead.read(POWER_METER_SPECS), within=12.0) == METER
        await dead.close()
        await live.close()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_two_devices_on_one_bus_never_interleave_and_keep_the_gap() -> None:
    units = [power_meter_profile(1), power_meter_profile(2)]
    async with ModbusSimulator(units) as sim:
        port = await sim.start_tcp()
        bus = Bus("gateway", gap=0.03)
        one = open_session(tcp(port), device="one", unit_id=1, bus=bus)
        two = open_session(tcp(port), device="two", unit_id=2, bus=bus)
        assert isinstance(one, ModbusSession) and isinstance(two, ModbusSession)
        assert one._link is two._link  # one client per physical link

        async def hammer(session: ModbusSession) -> None:
            for _ in range(20):
                assert await session.read(POWER_METER_SPECS) == METER
                await session.write("holding", 100, 1) if session.is_writable(
                    "holding", 100
                ) else None

        one.allow_write("holding", 100)
        await asyncio.gather(hammer(one), hammer(two))
        exchanges = sim.exchanges
        assert len(exchanges) == 60
        assert {e.unit_id for e in exchanges} == {1, 2}
        for before, after in pairwise(exchanges):
            assert after.received >= before.answered + 0.03 - 1e-9
        await one.close()
        await two.close()
        assert not one._link.connected


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_each_device_on_a_shared_link_keeps_its_own_timeout_and_retries() -> None:
    async with ModbusSimulator([power_meter_profile(1), power_meter_profile(2)]) as sim:
        port = await sim.start_tcp()
        bus = Bus("gateway")
        brisk = ModbusSession(tcp(port, timeout=0.2, retries=0), device="brisk", unit_id=1, bus=bus)
        assert await brisk.read(POWER_METER_SPECS) == METER  # the link's client exists now
        patient = ModbusSession(
            tcp(port, timeout=1.5, retries=1), device="patient", unit_id=2, bus=bus
        )
        assert patient._link is brisk._link
        loop = asyncio.get_running_loop()
        sim.delay = 10.0  # nobody answers in time

        async def seconds_to_fail(session: ModbusSession) -> float:
            started = loop.time()
            with pytest.raises(DeviceTimeout, match=f"device '{session.device}': .*no reply"):
                await session.read(POWER_METER_SPECS)
            return loop.time() - started

        assert await seconds_to_fail(brisk) == pytest.approx(0.2, abs=0.01)  # 0.2 s x 1
        assert await seconds_to_fail(patient) == pytest.approx(3.0, abs=0.01)  # 1.5 s x 2
        assert (brisk.requests_sent, patient.requests_sent) == (2, 2)
        await brisk.close()
        await patient.close()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_request_gap_and_connect_pause() -> None:
    async with ModbusSimulator(power_meter_profile()) as sim:
        port = await sim.start_tcp()
        session = ModbusSession(
            tcp(port, request_gap=0.25, connect_pause=0.5, one_request_per_field=True),
            device="quirky", unit_id=1, bus=Bus("b"),
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await session.read(POWER_METER_SPECS) == METER
        assert sim.exchanges[0].received - started >= 0.5
        gaps = [b.received - a.answered for a, b in pairwise(sim.exchanges)]
        assert len(gaps) == 3 and min(gaps) >= 0.25 - 1e-9
        await session.close()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_rtu_over_tcp() -> None:
    async with ModbusSimulator([power_meter_profile(3), power_meter_profile(4)]) as sim:
        port = await sim.start_tcp(framer="rtu")
        settings = ModbusRtuOverTcpSettings(host="127.0.0.1", port=port)
        bus = Bus(bus_name(settings), gap=default_gap(settings))
        three = ModbusSession(
            settings, device="three", unit_id=3, bus=bus, writable=[("holding", 9)]
        )
        four = ModbusSession(settings, device="four", unit_id=4, bus=bus)
        assert await three.read(POWER_METER_SPECS) == METER
        assert await four.read(POWER_METER_SPECS) == METER
        await three.write("holding", 9, 99)
        assert sim.registers("holding", 9, unit=3) == [99]
        assert sim.registers("holding", 9, unit=4) == [0]
        await three.close()
        await four.close()


@pytest.mark.asyncio
@pytest.mark.realtime
@pytest.mark.timeout(20)
async def test_rtu_on_a_pseudo_terminal_line() -> None:
    async with ModbusSimulator([power_meter_profile(1), power_meter_profile(2)]) as sim:
        path = await sim.start_rtu()
        settings = ModbusRtuSettings(port=path, baudrate=19200, timeout=1.0)
        bus = Bus(bus_name(settings), gap=default_gap(settings))
        assert bus.gap == pytest.approx(3.5 * 11 / 19200)
        one = ModbusSession(settings, device="one", unit_id=1, bus=bus, writable=[("coil", 4)])
        two = ModbusSession(settings, device="two", unit_id=2, bus=bus)
        for _ in range(5):
            results = await asyncio.gather(one.read(POWER_METER_SPECS), two.read(POWER_METER_SPECS))
            assert results == [METER, METER]
        await one.write("coil", 4, True)
        assert sim.registers("coil", 4, unit=1) == [1]
        for before, after in pairwise(sim.exchanges):
            assert after.received >= before.answered
        await one.close()
        await two.close()


def test_bus_names_gaps_and_link_clashes() -> None:
    rtu = ModbusRtuSettings(port="/dev/ttyUSB0", baudrate=9600)
    assert bus_name(rtu) == "serial:/dev/ttyUSB0"
    assert bus_name(tcp(5020)) == "tcp:127.0.0.1:5020"
    assert bus_name(tcp(5020, bus="line-1")) == "line-1"
    assert default_gap(rtu) == pytest.approx(3.5 * 11 / 9600)
    assert default_gap(tcp(5020)) == 0.0
    assert default_gap(tcp(5020, gap="30ms")) == pytest.approx(0.03)
    assert tcp(1, timeout="250ms").timeout == 0.25
    bus = Bus("line")
    ModbusSession(rtu, device="a", unit_id=1, bus=bus)
    with pytest.raises(ValueError, match="device 'b': baudrate 19200 differs from 9600"):
        ModbusSession(rtu.model_copy(update={"baudrate": 19200}), device="b", unit_id=2, bus=bus)
    with pytest.raises(ValueError, match=r"unit_id must be 0\.\.255"):
        ModbusSession(rtu, device="c", unit_id=300, bus=bus)
    with pytest.raises(ValueError, match="unknown transport kind 'carrier-pigeon'"):
        open_session(type("S", (), {"kind": "carrier-pigeon"})(), device="d", bus=bus)
