"""Aligned FIXED grids (``align=True``) and timers due together sharing one heap bucket."""

from __future__ import annotations

import asyncio

import pytest

from service import SchedulePolicy, Scheduler, TickRecord, Timer
from service.schedule import FixedSchedule, Slot
from service.triggers import Every

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


async def test_aligned_timers_started_apart_tick_at_the_same_instants() -> None:
    records: list[TickRecord] = []
    first = Timer(1.0, lambda: None, name="a", phase=0.25, align=True, observers=[records.append])
    second = Timer(1.0, lambda: None, name="b", phase=0.25, align=True, observers=[records.append])
    await asyncio.sleep(10.4)
    first.start()  # next grid point: 10.25 has passed, so 11.25
    await asyncio.sleep(0.7)
    second.start()  # at 11.1: also 11.25
    await asyncio.sleep(3.2)  # until 14.3
    first.stop()
    second.stop()
    due = {name: [r.due for r in records if r.timer == name] for name in ("a", "b")}
    assert due["a"] == [11.25, 12.25, 13.25, 14.25]
    assert due["b"] == [11.25, 12.25, 13.25, 14.25]
    assert [r.number for r in records if r.timer == "a"] == [11, 12, 13, 14]
    assert all(r.started == r.due for r in records)


async def test_aligned_immediate_takes_the_grid_point_at_the_start() -> None:
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    await asyncio.sleep(5.0)
    at_point = Timer(1.0, lambda: starts.append(loop.time()), immediate=True, align=True)
    at_point.start()
    not_immediate = Timer(1.0, lambda: starts.append(-loop.time()), align=True)
    not_immediate.start()
    await asyncio.sleep(0.5)
    at_point.stop()
    not_immediate.stop()
    assert starts == [5.0]  # the immediate one at 5.0; the other waits for 6.0
    assert not_immediate.statistics().next_due is None


async def test_aligned_schedule_arithmetic() -> None:
    schedule = FixedSchedule(0.01, 0.003, aligned=True)
    slot = schedule.first(1234.5678)
    assert slot.origin == 0.0
    assert slot.due == 0.003 + slot.number * 0.01
    assert slot.due > 1234.5678
    assert schedule.due(0.0, slot.number - 1) <= 1234.5678
    assert schedule.following(slot, slot.due, slot.due) == Slot(
        slot.number + 1, schedule.due(0.0, slot.number + 1), 0.0
    )


async def test_align_is_refused_for_delay_timers() -> None:
    with pytest.raises(ValueError, match="timer 'poll': align applies to FIXED timers only"):
        Timer(1.0, lambda: None, SchedulePolicy.DELAY, name="poll", align=True)


async def test_every_passes_align_to_its_schedule() -> None:
    schedule = Every(2.0, phase=0.5, align=True).schedule()
    assert schedule == FixedSchedule(2.0, 0.5, False, True)


async def test_thousand_aligned_timers_share_one_bucket_and_run_in_start_order() -> None:
    order: list[int] = []
    timers = [Timer(1.0, lambda i=i: order.append(i), align=True) for i in range(1000)]
    for timer in timers:
        timer.start()
        await asyncio.sleep(0.0001)  # started at different times, same grid
    scheduler = Scheduler.for_loop()
    assert len(scheduler._heap) == 2  # the first timer's entry, and one bucket for the rest
    await asyncio.sleep(1.5)
    assert len(scheduler._heap) == 2  # rescheduled by the tick path: still one bucket
    await asyncio.sleep(0.5)
    for timer in timers:
        timer.stop()
    assert order == list(range(1000)) * 2
    assert all(timer.statistics().ticks == 2 for timer in timers)


async def test_a_cancelled_error_mid_bucket_loses_no_other_tick() -> None:
    """A sync callback raising CancelledError propagates; the rest of its bucket still runs."""
    ran: list[int] = []

    def tick(i: int) -> None:
        ran.append(i)
        if i == 1 and len(ran) <= 3:
            raise asyncio.CancelledError

    timers = [Timer(1.0, lambda i=i: tick(i), align=True) for i in range(4)]
    for timer in timers:
        timer.start()
    loop = asyncio.get_running_loop()
    errors: list[BaseException] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context.get("exception")))
    await asyncio.sleep(1.5)
    for timer in timers:
        timer.stop()
    assert sorted(ran) == [0, 1, 2, 3]
    assert ran[:2] == [0, 1]
    assert all(timer.statistics().ticks == 1 for timer in timers)
