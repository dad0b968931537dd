"""Case 2: slow, failing, misaddressed and silent devices beside a healthy one.

One real ``python -m service run`` process, five devices, each on its own endpoint (its own
bus), so only the engine and the loop are shared:

* ``slow`` answers after 0.35 s while its heartbeat (FIXED) and poll (DELAY) run every 0.1 s:
  skipped heartbeat due times and poll overruns must be counted;
* ``failing`` answers every request with Modbus exception code 4 once it has been up: errors by
  class, device down, its reading gone;
* ``wrong-unit`` asks for unit 9 of a simulator that only has unit 1;
* ``silent`` talks to a TCP server that accepts, reads and never answers: each tick is bounded
  by the transport timeout;
* ``healthy`` must keep its heartbeat lateness under 10 ms and keep ticking.

Then, at the session level, devices whose replies do not belong to the request: a reply that
comes after its request timed out (or was cancelled) on Modbus RTU, which has no transaction id,
must never be taken for the answer to the next request; and a Modbus TCP reply with another
function code or register count is a ``FrameError``, never a reading.
"""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path
from typing import Literal

import pytest

from service.bus import Bus
from service.simulators.modbus import (
    ModbusSimulator,
    UnitProfile,
    boiler_profile,
    plc_watchdog_profile,
)
from service.transports.errors import DeviceTimeout, DeviceUnavailable, FrameError
from service.transports.modbus import (
    ModbusRtuOverTcpSettings,
    ModbusRtuSettings,
    ModbusSession,
    ModbusTcpSettings,
)
from tests.e2e.helpers import free_port, gatebeat, scrape, stop
from tests.faults.support import (
    Samples,
    await_until,
    buckets,
    count_above,
    family,
    scrape_where,
    value,
)

INTERVAL = 0.1
SLOW_REPLY = 0.35
TIMEOUT = 0.2
OBSERVE = 3.0  # seconds every fault is kept up before the final scrape

_TEMPS = (
    '[{{ field = "supply_temperature_celsius", table = "holding", address = 0, type = "int16", '
    "scale = 0.1 }}]"
)
_TCP = (
    '{{ kind = "modbus-tcp", host = "127.0.0.1", port = {port}, timeout = '
    + str(TIMEOUT)
    + ", retries = 0, reconnect_delay = 0.05, reconnect_delay_max = 0.2 }}"
)
_DEVICE = """
[[devices]]
name = "{name}"
driver = "modbus"
unit_id = {unit}
down_after_failures = 1
transport = """

CONFIG = (
    """
[metrics]
listen = "127.0.0.1:{metrics_port}"

[runtime]
shutdown_timeout = 3.0
"""
    + _DEVICE.replace("{name}", "slow").replace("{unit}", "1")
    + _TCP.replace("{port}", "{slow_port}").replace("timeout = " + str(TIMEOUT), "timeout = 1.0")
    + """
  [[devices.polls]]
  name = "temps"
  interval = {interval}
  registers = """
    + _TEMPS
    + """
  [[devices.heartbeats]]
  name = "watchdog"
  interval = {interval}
  write = {{ table = "holding", address = 100, value = "counter" }}
"""
    + _DEVICE.replace("{name}", "failing").replace("{unit}", "1")
    + _TCP.replace("{port}", "{failing_port}")
    + """
  [[devices.polls]]
  name = "temps"
  interval = {interval}
  registers = """
    + _TEMPS
    + _DEVICE.replace("{name}", "wrong-unit").replace("{unit}", "9")
    + _TCP.replace("{port}", "{wrong_port}")
    + """
  [[devices.polls]]
  name = "temps"
  interval = {interval}
  registers = """
    + _TEMPS
    + _DEVICE.replace("{name}", "silent").replace("{unit}", "1")
    + _TCP.replace("{port}", "{silent_port}")
    + """
  [[devices.polls]]
  name = "temps"
  interval = {interval}
  registers = """
    + _TEMPS
    + _DEVICE.replace("{name}", "healthy").replace("{unit}", "1")
    + _TCP.replace("{port}", "{healthy_port}")
    + """
  [[devices.heartbeats]]
  name = "watchdog"
  interval = {interval}
  write = {{ table = "holding", address = 100, value = "counter" }}
"""
)


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts, reads everything and never answers."""

    def __init__(self) -> None:
        self.received = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: list[asyncio.Task[None]] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.append(task)
        try:
            while data := await reader.read(4096):
                self.received += len(data)
        except ConnectionError:
            pass

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def _up(metrics: Samples, device: str) -> float | None:
    return value(metrics, "gatebeat_device_up", device=device, driver="modbus")


def _errors(metrics: Samples, device: str) -> dict[str, float]:
    return {
        dict(labels)["error"]: v
        for labels, v in family(metrics, "gatebeat_tick_errors_total", device=device).items()
    }


@pytest.mark.e2e
@pytest.mark.realtime
@pytest.mark.asyncio
async def test_slow_failing_misaddressed_and_silent_devices_leave_the_healthy_one_alone(
    tmp_path: Path,
) -> None:
    slow = ModbusSimulator(plc_watchdog_profile(1))
    failing = ModbusSimulator(boiler_profile(1))
    wrong = ModbusSimulator(boiler_profile(1))
    healthy = ModbusSimulator(plc_watchdog_profile(1))
    silent = SilentServer()
    ports = {
        "slow_port": await slow.start_tcp(),
        "failing_port": await failing.start_tcp(),
        "wrong_port": await wrong.start_tcp(),
        "healthy_port": await healthy.start_tcp(),
        "silent_port": await silent.start(),
    }
    slow.delay = SLOW_REPLY
    metrics_port = free_port()
    config = tmp_path / "gatebeat.toml"
    config.write_text(CONFIG.format(metrics_port=metrics_port, interval=INTERVAL, **ports))
    log = tmp_path / "gatebeat.log"
    try:
        with gatebeat("run", "--config", str(config), log=log) as process:
            await await_until(
                scrape_where(
                    metrics_port,
                    lambda m: _up(m, "failing") == 1.0 and _up(m, "healthy") == 1.0,
                ),
                timeout=20,
                what="failing and healthy up",
            )
            failing.fail_with(4)
            down = await await_until(
                scrape_where(metrics_port, lambda m: _up(m, "failing") == 0.0),
                timeout=5,
                what="failing down",
            )
            assert (
                value(down, "gatebeat_reading_supply_temperature_celsius", device="failing") is None
            )
            first = scrape(metrics_port)
            assert first is not None
            started = time.monotonic()
            await asyncio.sleep(OBSERVE)  # the faults act; everything is asserted from counters
            final = scrape(metrics_port)
            assert final is not None
            elapsed = time.monotonic() - started
            assert process.poll() is None
            code, seconds = await asyncio.to_thread(stop, process)
    finally:
        for sim in (slow, failing, wrong, healthy):
            await sim.close()
        await silent.close()

    def delta(name: str, device: str, timer: str) -> float:
        after = value(final, name, device=device, timer=timer) or 0.0
        return after - (value(first, name, device=device, timer=timer) or 0.0)

    report = {
        "slow heartbeat skipped": delta("gatebeat_ticks_skipped_total", "slow", "watchdog"),
        "slow heartbeat overruns": delta("gatebeat_tick_overruns_total", "slow", "watchdog"),
        "slow heartbeat ticks": delta("gatebeat_ticks_total", "slow", "watchdog"),
        "slow poll overruns": delta("gatebeat_tick_overruns_total", "slow", "temps"),
        "slow poll ticks": delta("gatebeat_ticks_total", "slow", "temps"),
        "healthy ticks": delta("gatebeat_ticks_total", "healthy", "watchdog"),
        "failing errors": _errors(final, "failing"),
        "wrong-unit errors": _errors(final, "wrong-unit"),
        "silent errors": _errors(final, "silent"),
        "slow errors": _errors(final, "slow"),
    }
    print(f"\nobserved {elapsed:.2f} s: {report}")
    assert code == 0 and seconds < 5.0

    # slow: FIXED skips and overruns counted, DELAY overruns counted, nothing piles up
    assert report["slow heartbeat skipped"] >= 1
    assert report["slow heartbeat overruns"] >= 1
    assert report["slow poll overruns"] >= 1
    # a tick of either timer needs at least one slow reply; the two share one bus
    assert report["slow heartbeat ticks"] + report["slow poll ticks"] <= elapsed / SLOW_REPLY + 2
    assert report["slow errors"] == {}, "slow replies are late, not failures"

    # failing: Modbus exception responses counted by class, down, no reading
    assert report["failing errors"].get("ModbusExceptionResponse", 0) >= 10
    assert _up(final, "failing") == 0.0
    assert value(final, "gatebeat_reading_supply_temperature_celsius", device="failing") is None

    # wrong unit: never up, errors counted, no reading
    assert sum(report["wrong-unit errors"].values()) >= 10
    assert _up(final, "wrong-unit") == 0.0
    assert value(final, "gatebeat_reading_supply_temperature_celsius", device="wrong-unit") is None

    # silent: requests reached it, every tick ended by the transport timeout
    assert silent.received > 0
    assert report["silent errors"].get("DeviceTimeout", 0) >= 3
    silent_duration = buckets(
        final, "gatebeat_tick_duration_seconds", device="silent", timer="temps"
    )
    assert count_above(silent_duration, 0.5) == 0, silent_duration  # timeout 0.2 s + slack
    assert _up(final, "silent") == 0.0

    # healthy: unaffected
    lateness = buckets(final, "gatebeat_tick_lateness_seconds", device="healthy", timer="watchdog")
    assert count_above(lateness, 0.01) == 0, lateness
    assert report["healthy ticks"] >= 0.8 * elapsed / INTERVAL
    assert _up(final, "healthy") == 1.0
    text = log.read_text()
    assert "Traceback" not in text, text


# -- replies that do not belong to the request -----------------------------------------------

HOLDING = {0: [1000, 1001], 20: [1020, 1021]}
INPUT_10 = [4010, 4011]


async def _rtu_session(
    sim: ModbusSimulator, framing: Literal["pty", "tcp"], *, timeout: float
) -> ModbusSession:
    """A session to unit 1 of ``sim`` over Modbus RTU framing (a pty line, or RTU over TCP)."""
    common = {"timeout": timeout, "retries": 0, "reconnect_jitter": 0.0}
    settings: ModbusRtuSettings | ModbusRtuOverTcpSettings
    if framing == "pty":
        path = await sim.start_rtu()
        settings = ModbusRtuSettings.model_validate({"port": path, "baudrate": 19200, **common})
    else:
        port = await sim.start_tcp(framer="rtu")
        settings = ModbusRtuOverTcpSettings.model_validate(
            {"host": "127.0.0.1", "port": port, **common}
        )
    for address, values in HOLDING.items():
        sim.set_registers("holding", address, values)
    sim.set_registers("input", 10, INPUT_10)
    return ModbusSession(settings, device="meter", unit_id=1, bus=Bus("rs485"))


async def _read_when_due(
    session: ModbusSession, table: Literal["holding", "input"], address: int
) -> list[int] | list[bool]:
    """Read 2 registers once the session's backoff is over (``DeviceUnavailable`` = nothing was
    sent yet); at most 5 s."""
    async with asyncio.timeout(5.0):
        while True:
            try:
                return await session.read_raw(table, address, 2)
            except DeviceUnavailable:
                await asyncio.sleep(0.01)


@pytest.mark.realtime
@pytest.mark.timeout(30)
@pytest.mark.asyncio
@pytest.mark.parametrize("framing", ["pty", "tcp"])
async def test_a_late_rtu_reply_is_never_taken_for_the_next_request(
    framing: Literal["pty", "tcp"],
) -> None:
    async with ModbusSimulator(UnitProfile(unit_id=1)) as sim:
        session = await _rtu_session(sim, framing, timeout=0.3)
        assert await session.read_raw("holding", 0, 2) == HOLDING[0]
        sim.delay = 0.5  # this reply comes 0.2 s after the request gave up
        with pytest.raises(DeviceTimeout, match="device 'meter': read_holding_registers"):
            await session.read_raw("holding", 0, 2)
        sim.delay = 0.15  # later replies are in time
        # The same function, unit and length: only timing tells the replies apart.
        assert await _read_when_due(session, "holding", 20) == HOLDING[20]
        assert await _read_when_due(session, "input", 10) == INPUT_10
        assert await _read_when_due(session, "holding", 0) == HOLDING[0]
        await session.close()


@pytest.mark.realtime
@pytest.mark.timeout(30)
@pytest.mark.asyncio
@pytest.mark.parametrize("framing", ["pty", "tcp"])
async def test_the_reply_to_a_cancelled_rtu_request_is_not_taken_for_the_next(
    framing: Literal["pty", "tcp"],
) -> None:
    async with ModbusSimulator(UnitProfile(unit_id=1)) as sim:
        session = await _rtu_session(sim, framing, timeout=0.5)
        assert await session.read_raw("holding", 0, 2) == HOLDING[0]
        sim.delay = 0.3
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.25):  # the caller gives up (a tick timeout, a stop)
                await session.read_raw("holding", 0, 2)
        sim.delay = 0.15  # the given-up reply comes 0.05 s into the next request
        assert await session.read_raw("holding", 20, 2) == HOLDING[20]
        assert await session.read_raw("input", 10, 2) == INPUT_10
        await session.close()


class OddReplies(SilentServer):
    """A Modbus TCP server on 127.0.0.1 that answers every read with ``mode``'s wrong reply.

    Registers hold ``100 + address``. Modes: ``"other_function"`` answers function 3 with
    function 4 (and 4 with 3), ``"other_function_exception"`` answers with an exception
    response of the other function, ``"short"`` leaves out the last register.
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.append(task)
        try:
            while True:
                tid, _, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                function, address, count = struct.unpack(
                    ">BHH", (await reader.readexactly(length - 1))[:5]
                )
                writer.write(self._reply(tid, unit, function, address, count))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    def _reply(self, tid: int, unit: int, function: int, address: int, count: int) -> bytes:
        other = 4 if function == 3 else 3
        registers = [100 + address + i for i in range(count)]
        if self.mode == "short":
            registers = registers[:-1]
        data = b"".join(struct.pack(">H", r) for r in registers)
        pdu = struct.pack(">BB", function, len(data)) + data
        if self.mode == "other_function":
            pdu = struct.pack(">BB", other, len(data)) + data
        if self.mode == "other_function_exception":
            pdu = struct.pack(">BB", other | 0x80, 2)
        return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        ("other_function", "reply has function code 4, the request had 3"),
        ("other_function_exception", "reply has function code 4, the request had 3"),
        ("short", "asked for 2 registers, got 1"),
    ],
)
async def test_a_reply_for_another_function_or_length_is_a_frame_error(
    mode: str, problem: str
) -> None:
    server = OddReplies(mode)
    port = await server.start()
    session = ModbusSession(
        ModbusTcpSettings(host="127.0.0.1", port=port, timeout=1.0, retries=0),
        device="gateway-unit",
        unit_id=1,
        bus=Bus("gw"),
    )
    try:
        with pytest.raises(FrameError) as caught:
            await session.read_raw("holding", 0, 2)
        assert str(caught.value) == (
            f"device 'gateway-unit': read_holding_registers at address 0 (count 2): {problem}"
            + (" (a late reply to an earlier request, or noise)" if "function" in problem else "")
        )
    finally:
        await session.close()
        await server.close()
