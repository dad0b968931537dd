"""A serial device that stops answering is backed off, like a Modbus device (FIELD.md item 5).

Real pseudo-terminals (:class:`SerialSimulator`) on the real clock; every wait is bounded.
Backoff jitter is off (``reconnect_jitter = 0``) so the retry times are exact.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from service.bus import Bus
from service.simulators.serial import SerialSimulator
from service.transports.errors import DeviceTimeout, DeviceUnavailable
from service.transports.serial import SerialLineSession, SerialSettings
from tests.service.transports.support import next_attempt_in, once_due

pytestmark = pytest.mark.realtime

LOGGER = "gatebeat.transport.serial"
CLOCK_SLACK = 0.002
"""Seconds an event loop may wake early (clock resolution)."""
READ = "READ?\r\n"


@asynccontextmanager
async def session_for(
    port: str, *, bus: Bus | None = None, device: str = "dev", **overrides: Any
) -> AsyncIterator[SerialLineSession]:
    values: dict[str, Any] = {
        "port": port,
        "timeout": 0.2,
        "resync_quiet": 0.02,
        "reconnect_jitter": 0,
        **overrides,
    }
    session = SerialLineSession(
        SerialSettings.model_validate(values), device=device, bus=bus or Bus("b")
    )
    try:
        yield session
    finally:
        await session.close()


@pytest.mark.asyncio
async def test_silent_device_fails_fast_until_its_next_attempt_is_due() -> None:
    timeout, delay = 0.2, 0.4
    async with (
        SerialSimulator({"READ?": "21.5"}, silent=True) as sim,
        session_for(sim.path, timeout=timeout, reconnect_delay=delay) as session,
    ):
        loop = asyncio.get_running_loop()
        with pytest.raises(DeviceTimeout):
            await session.request(READ)
        failed_at = loop.time()

        fast: list[float] = []
        retried_at: float | None = None
        async with asyncio.timeout(delay + 2.0):
            while retried_at is None:
                started = loop.time()
                try:
                    await session.request(READ)
                except DeviceUnavailable as exc:
                    fast.append(loop.time() - started)
                    assert str(exc).startswith("device 'dev': request b'READ?\\r\\n': ")
                    assert 0 < next_attempt_in(exc) <= delay
                    await asyncio.sleep(0.02)
                except DeviceTimeout:
                    retried_at = started  # tried on the line again, still silent

        assert len(fast) >= 5, fast
        assert max(fast) < timeout / 4, fast  # failed fast, never waited for the device
        assert failed_at + delay - CLOCK_SLACK <= retried_at < failed_at + delay + 0.2
        assert [r.command for r in sim.requests] == ["READ?", "READ?"]  # none while backing off
        # still silent: the next step is twice as long
        with pytest.raises(DeviceUnavailable) as caught:
            await session.request(READ)
        assert 2 * delay - 0.1 < next_attempt_in(caught.value) <= 2 * delay


@pytest.mark.asyncio
async def test_a_silent_device_does_not_hold_a_shared_bus_after_its_first_timeout() -> None:
    timeout, delay, observe = 0.3, 0.6, 1.6
    bus = Bus("rs485-1", gap=0.005)
    waits: dict[str, list[float]] = {"dead": [], "live": []}
    bus.add_observer(lambda _bus, device, waited: waits[device].append(waited))
    dead_errors: dict[str, int] = {"DeviceTimeout": 0, "DeviceUnavailable": 0}
    live_polls: list[float] = []
    async with (
        SerialSimulator({"READ?": "1.0"}, silent=True) as dead_sim,
        SerialSimulator({"READ?": "2.0"}) as live_sim,
        session_for(
            dead_sim.path, bus=bus, device="dead", timeout=timeout, reconnect_delay=delay
        ) as dead,
        session_for(live_sim.path, bus=bus, device="live", timeout=timeout) as live,
    ):
        loop = asyncio.get_running_loop()
        until = loop.time() + observe

        async def poll_dead() -> None:
            while loop.time() < until:
                try:
                    await dead.request(READ)
                except (DeviceTimeout, DeviceUnavailable) as exc:
                    dead_errors[type(exc).__name__] += 1
                await asyncio.sleep(0.05)

        async def poll_live() -> None:
            while loop.time() < until:
                started = loop.time()
                assert await live.request(READ) == "2.0"
                live_polls.append(loop.time() - started)
                await asyncio.sleep(0.02)

        async with asyncio.timeout(observe + 5.0), asyncio.TaskGroup() as group:
            group.create_task(poll_dead())
            group.create_task(poll_live())

    # The dead device held the bus for its first timeout and once more when its backoff step
    # (0.6 s) was due; its other polls failed fast without taking a turn.
    assert dead_errors["DeviceTimeout"] == 2, dead_errors
    assert dead_errors["DeviceUnavailable"] >= 10, dead_errors
    assert len(dead_sim.requests) == 2
    assert len(waits["dead"]) == 2
    # So the live device waited for it at most once per dead attempt, not on every poll.
    held_up = [w for w in waits["live"] if w > timeout / 2]
    assert len(held_up) <= 2, waits["live"]
    assert sum(1 for d in live_polls if d > timeout / 2) <= 2, live_polls
    assert len(live_polls) >= 15, live_polls  # about 40 when nothing holds the bus


@pytest.mark.asyncio
async def test_silent_device_recovers_on_its_next_attempt_and_logs_it_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    delay = 0.2
    async with (
        SerialSimulator({"READ?": "21.5"}, silent=True) as sim,
        session_for(sim.path, timeout=0.15, reconnect_delay=delay) as session,
    ):
        loop = asyncio.get_running_loop()
        with pytest.raises(DeviceTimeout):
            await session.request(READ)
        with pytest.raises(DeviceTimeout):
            await once_due(lambda: session.request(READ))  # retried, still silent
        sim.silent = False
        assert await once_due(lambda: session.request(READ)) == "21.5"
        assert len(sim.requests) == 3  # recovered on the first attempt after it answered
        for _ in range(3):  # the backoff is over: straight to the line
            started = loop.time()
            assert await session.request(READ) == "21.5"
            assert loop.time() - started < 0.1

        records = [r for r in caplog.records if r.name == LOGGER]
        assert [(r.levelno, r.getMessage().split(";")[0]) for r in records] == [
            (logging.WARNING, "device dev stopped answering"),
            (logging.INFO, "device dev answers again"),
        ]

        # A new outage is logged again and backs off from the first step, not the last one.
        sim.silent = True
        with pytest.raises(DeviceTimeout):
            await session.request(READ)
        with pytest.raises(DeviceUnavailable) as caught:
            await session.request(READ)
        assert next_attempt_in(caught.value) <= delay
        warnings = [r for r in caplog.records if r.name == LOGGER and "stopped" in r.getMessage()]
        assert len(warnings) == 2


@pytest.mark.asyncio
async def test_read_frame_timeout_backs_off_and_a_frame_ends_it() -> None:
    async with (
        SerialSimulator({}) as sim,
        session_for(sim.path, timeout=0.1, reconnect_delay=0.3) as session,
    ):
        loop = asyncio.get_running_loop()
        with pytest.raises(DeviceTimeout, match="device 'dev': read_frame: no complete frame"):
            await session.read_frame()
        started = loop.time()
        with pytest.raises(DeviceUnavailable, match="device 'dev': read_frame: not answering"):
            await session.read_frame()
        assert loop.time() - started < 0.05
        sim.inject(b"EVENT 7\r\n")  # arrives while backing off: kept for the next read
        assert await once_due(session.read_frame) == "EVENT 7"
        sim.inject(b"EVENT 8\r\n")
        assert await session.read_frame() == "EVENT 8"  # no backoff left


@pytest.mark.asyncio
async def test_send_is_not_held_back_by_a_silent_device() -> None:
    async with SerialSimulator({}) as sim, session_for(sim.path, reconnect_delay=5.0) as session:
        with pytest.raises(DeviceTimeout):
            await session.request(READ)
        await session.send("RESET\r\n")  # nothing waits for a reply, so nothing to back off
        async with asyncio.timeout(2):
            await sim.wait_requests(2)
        assert [r.command for r in sim.requests] == ["READ?", "RESET"]


@pytest.mark.asyncio
async def test_slow_device_that_answers_in_time_is_never_backed_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with (
        SerialSimulator({"READ?": "21.5"}, delay=0.15) as sim,
        session_for(sim.path, timeout=0.3) as session,
    ):
        for _ in range(5):  # back to back: any backoff would refuse one of them
            assert await session.request(READ) == "21.5"
        assert len(sim.requests) == 5
    assert [r for r in caplog.records if r.name == LOGGER] == []
