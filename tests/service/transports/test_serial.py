"""The line-oriented serial transport against simulated devices on real pseudo-terminals.

These run on the real clock (a pty is I/O through the kernel) with short timeouts.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from service.bus import Bus
from service.simulators.serial import Reply, SerialSimulator
from service.transports.errors import DeviceTimeout, DeviceUnavailable, FrameError
from service.transports.serial import (
    SerialLineSession,
    SerialSettings,
    bus_name,
    default_gap,
)
from tests.service.transports.support import once_due

pytestmark = pytest.mark.realtime

CLOCK_SLACK = 0.002
"""Seconds an event loop may wake early (clock resolution), allowed in gap assertions."""


def settings(port: str, **overrides: Any) -> SerialSettings:
    values: dict[str, Any] = {"port": port, "timeout": 0.3, "resync_quiet": 0.02}
    values.update(overrides)
    return SerialSettings.model_validate(values)


@asynccontextmanager
async def session_for(
    port: str, *, bus: Bus | None = None, device: str = "dev", **overrides: Any
) -> AsyncIterator[SerialLineSession]:
    session = SerialLineSession(settings(port, **overrides), device=device, bus=bus or Bus("b"))
    try:
        yield session
    finally:
        await session.close()


def counter_responder() -> Callable[[str], Reply]:
    """Answer ``N?`` with a fresh number every time, so a stale reply is recognisable."""
    numbers = itertools.count(1)
    return lambda command: f"reply-{next(numbers)}" if command == "N?" else None


# -- settings -----------------------------------------------------------------------------


def test_settings_defaults_and_bus() -> None:
    s = SerialSettings(port="/dev/ttyUSB0")
    assert (s.kind, s.baudrate, s.parity, s.stopbits, s.bytesize) == ("serial", 9600, "N", 1, 8)
    assert (
        s.terminator,
        s.timeout,
        s.reconnect_delay,
        s.reconnect_delay_max,
        s.reconnect_jitter,
    ) == ("\r\n", 1.0, 0.1, 10.0, 0.2)
    assert bus_name(s) == "serial:/dev/ttyUSB0"
    assert default_gap(s) == 0.0
    shared = SerialSettings(port="/dev/ttyUSB0", bus="line-1", gap="30ms", timeout="250ms")
    assert bus_name(shared) == "line-1"
    assert default_gap(shared) == pytest.approx(0.03)
    assert shared.timeout == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("values", "field", "fragment"),
    [
        ({"parity": "X"}, "parity", "'N', 'E' or 'O'"),
        ({"baudrate": 0}, "baudrate", "greater than 0"),
        ({"timeout": 0}, "timeout", "timeout must be > 0"),
        ({"request_gap": -1}, "request_gap", "request_gap must be >= 0"),
        ({"encoding": "klingon"}, "encoding", "'klingon'"),
        ({"terminator": ""}, "terminator", "must not be empty"),
        ({"frame_length": 2000}, "frame_length", "exceeds max_frame_length"),
        ({"reconnect_delay": 5, "reconnect_delay_max": 1}, "reconnect_delay_max", "below"),
        ({"reconnect_jitter": 1.5}, "reconnect_jitter", "less than or equal to 1"),
        ({"baud": 9600}, "baud", "Extra inputs"),
    ],
)
def test_settings_errors_name_the_field(values: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SerialSettings.model_validate({"port": "/dev/ttyS0", **values})
    text = str(caught.value)
    assert field in text
    assert fragment in text


# -- request / reply ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_request_reply_and_split_reply() -> None:
    async with (
        SerialSimulator({"READ?": "21.5", "ID?": "SIM-1"}) as sim,
        session_for(sim.path) as session,
    ):
        assert await session.request("READ?\r\n") == "21.5"
        assert await session.request(b"ID?\r\n") == "SIM-1"
        sim.split = 2
        assert await session.request("READ?\r\n") == "21.5"
        assert [r.command for r in sim.requests] == ["READ?", "ID?", "READ?"]


@pytest.mark.asyncio
async def test_fixed_length_frames() -> None:
    frames = {"T": b"\x02+0215\x03", "H": b"\x02+0480\x03"}
    async with (
        SerialSimulator(frames) as sim,
        session_for(sim.path, frame_length=7, encoding="latin-1") as session,
    ):
        assert await session.request("T\r\n") == "\x02+0215\x03"
        sim.split = 3
        assert await session.request("H\r\n") == "\x02+0480\x03"


@pytest.mark.asyncio
async def test_send_and_unsolicited_frame() -> None:
    async with SerialSimulator({}) as sim, session_for(sim.path) as session:
        await session.send("RESET\r\n")
        async with asyncio.timeout(2):
            await sim.wait_requests(1)
        assert sim.requests[0].command == "RESET"
        sim.inject(b"EVENT 7\r\n")
        assert await session.read_frame() == "EVENT 7"


# -- timeouts and resynchronisation -------------------------------------------------------


@pytest.mark.asyncio
async def test_timeout_then_recovery() -> None:
    async with (
        SerialSimulator({"READ?": "21.5"}, silent=True) as sim,
        session_for(sim.path, timeout=0.15) as session,
    ):
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DeviceTimeout, match=r"device 'dev': request b'READ\?\\r\\n'.*0.15 s"):
            await session.request("READ?\r\n")
        assert 0.15 <= loop.time() - started < 1.0
        sim.silent = False
        with pytest.raises(DeviceUnavailable, match="not answering, next attempt in"):
            await session.request("READ?\r\n")  # backing off for up to reconnect_delay
        assert await once_due(lambda: session.request("READ?\r\n")) == "21.5"


@pytest.mark.asyncio
async def test_late_reply_is_not_taken_for_the_next_one() -> None:
    async with (
        SerialSimulator(counter_responder(), delay=0.25) as sim,
        session_for(sim.path, timeout=0.1) as session,
    ):
        with pytest.raises(DeviceTimeout):
            await session.request("N?\r\n")
        async with asyncio.timeout(2):
            await sim.wait_idle()  # reply-1 is on the line now, too late: it is stale input
        sim.delay = 0.0
        assert await session.request("N?\r\n") == "reply-2"


@pytest.mark.asyncio
async def test_cancelled_request_resyncs_before_the_next() -> None:
    async with (
        SerialSimulator(counter_responder(), delay=0.15) as sim,
        session_for(sim.path, timeout=0.5, resync_quiet=0.2) as session,
    ):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):  # the caller gives up (a timer stopped)
                await session.request("N?\r\n")
        sim.delay = 0.0
        # reply-1 arrives during the quiet wait and is dropped; the answer is the fresh one.
        assert await session.request("N?\r\n") == "reply-2"


@pytest.mark.asyncio
async def test_noise_between_requests_is_discarded() -> None:
    async with SerialSimulator({"READ?": "21.5"}) as sim, session_for(sim.path) as session:
        assert await session.request("READ?\r\n") == "21.5"
        sim.inject(b"\x00\xffnoise\r\n19.0\r\npartial")
        async with asyncio.timeout(2):
            await sim.wait_idle()
        assert await session.request("READ?\r\n") == "21.5"


@pytest.mark.asyncio
async def test_half_frame_then_recovery() -> None:
    replies: list[Reply] = [b"21.", "21.5"]
    async with (
        SerialSimulator(lambda command: replies.pop(0)) as sim,
        session_for(sim.path, timeout=0.15) as session,
    ):
        with pytest.raises(DeviceTimeout, match=r"received b'21\.'"):
            await session.request("READ?\r\n")
        assert await once_due(lambda: session.request("READ?\r\n")) == "21.5"
        assert len(sim.requests) == 2


@pytest.mark.asyncio
async def test_64k_random_garbage_reply_then_recovery() -> None:
    garbage = random.Random(1234).randbytes(64 * 1024)
    replies: list[Reply] = [garbage, "21.5"]
    async with (
        SerialSimulator(lambda command: replies.pop(0)) as sim,
        session_for(sim.path, timeout=0.5) as session,
    ):
        with pytest.raises(FrameError, match="device 'dev': request"):
            await session.request("READ?\r\n")
        assert await session.request("READ?\r\n") == "21.5"


@pytest.mark.asyncio
async def test_64k_random_garbage_while_idle_then_recovery() -> None:
    async with SerialSimulator({"READ?": "21.5"}) as sim, session_for(sim.path) as session:
        assert await session.request("READ?\r\n") == "21.5"
        sim.inject(random.Random(99).randbytes(64 * 1024))
        async with asyncio.timeout(2):
            await sim.wait_idle()
        assert await session.request("READ?\r\n") == "21.5"


@pytest.mark.asyncio
async def test_overlong_and_undecodable_frames() -> None:
    replies: list[Reply] = ["A" * 300, b"\xff\xfe\r\n", "ok"]
    async with (
        SerialSimulator(lambda command: replies.pop(0)) as sim,
        session_for(sim.path, max_frame_length=100) as session,
    ):
        with pytest.raises(FrameError, match="max_frame_length 100"):
            await session.request("X\r\n")
        with pytest.raises(FrameError, match=r"reply b'\\xff\\xfe' is not ascii"):
            await session.request("X\r\n")
        assert await session.request("X\r\n") == "ok"
        assert len(sim.requests) == 3


# -- connection loss and reconnect --------------------------------------------------------


@pytest.mark.asyncio
async def test_missing_port_fails_fast_while_backing_off(tmp_path: Path) -> None:
    port = str(tmp_path / "ttyGONE")
    async with session_for(port, reconnect_delay=0.5, reconnect_delay_max=1.0) as session:
        with pytest.raises(DeviceUnavailable, match=r"cannot open port .*ttyGONE"):
            await session.request("READ?\r\n")
        started = time.perf_counter()
        with pytest.raises(DeviceUnavailable, match="offline, next attempt in"):
            await session.request("READ?\r\n")
        assert time.perf_counter() - started < 0.05
        assert not session.connected


@pytest.mark.asyncio
async def test_port_disappears_and_comes_back(tmp_path: Path) -> None:
    link = tmp_path / "ttyUSB0"
    async with (
        SerialSimulator({"READ?": "21.5"}, link=link) as sim,
        session_for(
            str(link), timeout=0.2, reconnect_delay=0.02, reconnect_delay_max=0.1
        ) as session,
    ):
        assert await session.request("READ?\r\n") == "21.5"
        await sim.stop()  # unplugged: the pty and the link are gone
        with pytest.raises(DeviceUnavailable, match=r"lost|cannot open"):
            await session.request("READ?\r\n")
        with pytest.raises(DeviceUnavailable):
            await session.request("READ?\r\n")
        assert not session.connected

        cpu_before = time.process_time()
        await asyncio.sleep(0.3)  # offline with nobody asking: nothing may spin
        assert time.process_time() - cpu_before < 0.05

        await sim.start()  # plugged back in, on a new pty behind the same path
        async with asyncio.timeout(2):
            while True:
                try:
                    reply = await session.request("READ?\r\n")
                except DeviceUnavailable:
                    await asyncio.sleep(0.02)
                else:
                    break
        assert reply == "21.5"
        assert session.connected


@pytest.mark.asyncio
async def test_closed_session_refuses_requests() -> None:
    async with SerialSimulator({"READ?": "21.5"}) as sim:
        session = SerialLineSession(settings(sim.path), device="dev", bus=Bus("b"))
        assert await session.request("READ?\r\n") == "21.5"
        await session.close()
        await session.close()
        with pytest.raises(DeviceUnavailable, match="session closed"):
            await session.request("READ?\r\n")


# -- the bus and pacing -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_two_sessions_on_one_bus_never_interleave_and_keep_the_gap() -> None:
    gap = 0.03
    bus = Bus("rs485-1", gap=gap)
    async with (
        SerialSimulator({"READ?": "1.0"}, delay=0.01) as sim_a,
        SerialSimulator({"READ?": "2.0"}, delay=0.01) as sim_b,
        session_for(sim_a.path, bus=bus, device="a") as a,
        session_for(sim_b.path, bus=bus, device="b") as b,
    ):

        async def poll(session: SerialLineSession, expected: str) -> None:
            for _ in range(4):
                assert await session.request("READ?\r\n") == expected

        async with asyncio.TaskGroup() as group:
            group.create_task(poll(a, "1.0"))
            group.create_task(poll(b, "2.0"))

        exchanges = sorted(sim_a.requests + sim_b.requests, key=lambda r: r.received_at)
        assert len(exchanges) == 8
        assert {r.command for r in sim_a.requests} == {"READ?"}
        for previous, following in itertools.pairwise(exchanges):
            assert previous.replied_at is not None
            assert following.received_at - previous.replied_at >= gap - CLOCK_SLACK
        # both devices took turns rather than one draining its queue first
        devices = ["a" if r in sim_a.requests else "b" for r in exchanges]
        assert devices.count("a") == devices.count("b") == 4
        assert devices[:2] in (["a", "b"], ["b", "a"])


@pytest.mark.asyncio
async def test_request_gap_paces_one_device() -> None:
    async with (
        SerialSimulator({"READ?": "21.5"}) as sim,
        session_for(sim.path, request_gap=0.04) as session,
    ):
        for _ in range(3):
            await session.request("READ?\r\n")
        times = [r.received_at for r in sim.requests]
        assert all(b - a >= 0.04 - CLOCK_SLACK for a, b in itertools.pairwise(times))
