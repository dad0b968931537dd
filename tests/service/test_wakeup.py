"""Precise wake-ups through a Linux timerfd (``service.wakeup``), in real time.

The point of these is real time: the kernel's timer and the loop's selector. Bounds on
lateness are generous (two shared cores); counts and states are exact.
"""

from __future__ import annotations

import asyncio
import os
import select

import pytest

from service import Scheduler, TickRecord, Timer
from service.scheduler import PRECISE_SLACK
from service.wakeup import TimerFdWaker

pytestmark = [pytest.mark.asyncio, pytest.mark.realtime]  # Linux: gatebeat's platform


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


async def test_the_waker_fires_once_at_its_time_and_is_quiet_after() -> None:
    loop = asyncio.get_running_loop()
    woke: list[float] = []
    fired = asyncio.Event()

    def on_wake() -> None:
        woke.append(loop.time())
        fired.set()

    waker = TimerFdWaker(loop, on_wake)
    target = loop.time() + 0.02
    waker.arm(target)
    await asyncio.wait_for(fired.wait(), 2.0)
    assert woke[0] >= target  # never early
    assert woke[0] - target < 0.05
    # The handler armed nothing: the waker cleared the descriptor, so the loop does not spin.
    assert not readable(waker.fileno)
    await asyncio.sleep(0.03)
    assert len(woke) == 1
    waker.close()


async def test_rearming_replaces_the_time_and_disarm_cancels() -> None:
    loop = asyncio.get_running_loop()
    woke: list[float] = []
    waker = TimerFdWaker(loop, lambda: woke.append(loop.time()))
    waker.arm(loop.time() + 0.01)
    later = loop.time() + 0.04
    waker.arm(later)  # replaces the first time
    await asyncio.sleep(0.06)
    assert len(woke) == 1 and woke[0] >= later
    waker.arm(loop.time() + 0.01)
    waker.disarm()
    await asyncio.sleep(0.03)
    assert len(woke) == 1
    waker.close()


async def test_a_grid_repeats_without_being_set_again_until_a_one_shot_replaces_it() -> None:
    loop = asyncio.get_running_loop()
    period = 0.005
    woke: list[float] = []
    origins: set[int] = set()
    fifth = asyncio.Event()

    def on_wake() -> None:
        woke.append(loop.time())
        if len(woke) < 5:
            # Asks for a time the running grid covers: kept, only the expiry count is read.
            waker.arm_on_grid(woke[-1], woke[-1] + period, period)
            origins.add(waker._grid_origin_ns)
            assert not readable(waker.fileno)
        else:
            waker.arm(loop.time() + 10.0)  # a one-shot far away ends the grid
            fifth.set()

    waker = TimerFdWaker(loop, on_wake)
    start = loop.time() + 0.01
    waker.arm_on_grid(start - period, start, period)
    await asyncio.wait_for(fifth.wait(), 2.0)
    assert len(origins) == 1  # never set again while on the grid
    assert all(t >= start + k * period for k, t in enumerate(woke))  # never before its point
    await asyncio.sleep(4 * period)
    assert len(woke) == 5  # the one-shot replaced the repeating grid
    waker.close()


async def test_a_grid_point_before_the_requested_time_starts_a_new_grid() -> None:
    loop = asyncio.get_running_loop()
    woke: list[float] = []
    waker = TimerFdWaker(loop, lambda: woke.append(loop.time()))
    waker.arm_on_grid(loop.time(), loop.time() + 0.05, 0.05)
    later = loop.time() + 0.02
    waker.arm_on_grid(later, later, 0.001)  # another period: a new grid, first point `later`
    await asyncio.sleep(0.01)
    assert woke == []
    waker.arm_on_grid(loop.time() + 0.5, loop.time() + 0.5, 0.001)  # the grid's next point
    await asyncio.sleep(0.03)  # comes too soon for this time: a new grid from it
    assert woke == []
    waker.close()


async def test_closing_the_scheduler_closes_the_descriptor() -> None:
    scheduler = Scheduler(asyncio.get_running_loop(), wakeup="precise")
    assert scheduler._waker is not None
    fd = scheduler._waker.fileno
    os.fstat(fd)  # open
    scheduler.close()
    with pytest.raises(OSError):
        os.fstat(fd)


async def test_dense_ticks_are_coalesced_and_stay_under_a_millisecond_late() -> None:
    """50 timers at 10 ms, 0.2 ms apart: wake-ups at most one per PRECISE_SLACK seconds."""
    loop = asyncio.get_running_loop()
    scheduler = Scheduler.for_loop(wakeup="precise")
    assert scheduler._waker is not None
    wakes = 0
    on_wake = scheduler._waker._on_wake

    def counting() -> None:
        nonlocal wakes
        wakes += 1
        on_wake()

    scheduler._waker._on_wake = counting
    records: list[TickRecord] = []
    timers = [
        Timer(0.01, lambda: None, phase=i * 0.0002, observers=[records.append]) for i in range(50)
    ]
    began = loop.time()
    for timer in timers:
        timer.start()
    await asyncio.sleep(0.3)
    for timer in timers:
        timer.stop()
    elapsed = loop.time() - began
    assert len(records) >= 50 * 20  # 29 due per timer; fewer only under heavy load
    assert wakes <= elapsed / PRECISE_SLACK + 2
    assert wakes < len(records) / 2  # ~4 ticks per wake-up (5 due per ms), not one each
    assert min(r.lateness for r in records) >= 0.0
    lateness = sorted(r.lateness for r in records)
    assert lateness[len(lateness) // 2] < PRECISE_SLACK + 0.005  # generous: shared cores


@pytest.mark.parametrize("interval", [1e19, 1e300])
async def test_a_huge_interval_neither_raises_nor_spins(interval: float) -> None:
    """A legal but huge interval: the timerfd is armed at its latest time instead of failing
    (which left the descriptor readable, so the loop woke and failed again, thousands of
    times a second)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    dormant = Timer(interval, lambda: None, name="dormant")
    dormant.start()  # the earliest entry: arms the timerfd at once
    assert Scheduler.for_loop().precise
    wakes: list[float] = []
    probe = Timer(0.01, lambda: wakes.append(loop.time()), name="probe")
    probe.start()
    async with asyncio.timeout(5.0):
        while len(wakes) < 10:
            await asyncio.sleep(0.01)
    probe.stop()
    dormant.stop()
    assert errors == []
    assert dormant.statistics().ticks == 0
