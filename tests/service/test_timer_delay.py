"""DELAY timers on virtual time: the next tick is due ``interval`` after the previous finished."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import pytest

from service import Outcome, SchedulePolicy, TickRecord, Timer


def delay(
    interval: float, callback: Callable[[], object], records: list[TickRecord], **kwargs: object
) -> Timer:
    return Timer(interval, callback, SchedulePolicy.DELAY, observers=[records.append], **kwargs)  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_spacing_is_finish_plus_interval() -> None:
    durations = iter([0.25, 0.5, 0.0, 1.75, 0.125])
    records: list[TickRecord] = []

    async def poll() -> None:
        await asyncio.sleep(next(durations))

    timer = delay(1.0, poll, records)
    timer.start()
    await asyncio.sleep(8.0)
    assert timer.statistics().next_due == 8.625
    timer.stop()
    assert [(r.number, r.due, r.started, r.finished) for r in records] == [
        (1, 1.0, 1.0, 1.25),
        (2, 2.25, 2.25, 2.75),
        (3, 3.75, 3.75, 3.75),
        (4, 4.75, 4.75, 6.5),
        (5, 7.5, 7.5, 7.625),
    ]
    for previous, record in itertools.pairwise(records):
        assert record.due == previous.finished + 1.0
    assert [r.overrun for r in records] == [False, False, False, True, False]
    stats = timer.statistics()
    assert (stats.ticks, stats.overruns, stats.skipped) == (5, 1, 0)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_sync_callback_ticks_every_interval() -> None:
    records: list[TickRecord] = []
    timer = delay(0.5, lambda: None, records)
    timer.start()
    await asyncio.sleep(2.0)
    timer.stop()
    assert [(r.due, r.started) for r in records] == [(t, t) for t in (0.5, 1.0, 1.5, 2.0)]
    assert timer.schedule_policy is SchedulePolicy.DELAY


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_overrun_never_skips() -> None:
    """A callback longer than the interval is an overrun; nothing is skipped or bunched."""
    records: list[TickRecord] = []
    peak = running = 0

    async def slow() -> None:
        nonlocal peak, running
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(2.5)
        running -= 1

    timer = delay(1.0, slow, records)
    timer.start()
    await asyncio.sleep(8.0)
    timer.stop()
    await timer.wait_stopped()
    assert [(r.due, r.finished) for r in records] == [(1.0, 3.5), (4.5, 7.0), (8.0, 10.5)]
    assert all(r.overrun and r.skipped_before == 0 for r in records)
    stats = timer.statistics()
    assert (stats.overruns, stats.skipped) == (3, 0)
    assert peak == 1


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_duration_equal_to_interval_is_not_an_overrun() -> None:
    records: list[TickRecord] = []

    async def work() -> None:
        await asyncio.sleep(1.0)

    timer = delay(1.0, work, records)
    timer.start()
    await asyncio.sleep(2.0)
    timer.stop()
    await timer.wait_stopped()
    assert [(r.due, r.finished, r.overrun) for r in records] == [(1.0, 2.0, False)]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_immediate_first_tick() -> None:
    records: list[TickRecord] = []
    timer = delay(1.0, lambda: None, records, immediate=True)
    await asyncio.sleep(0.5)
    timer.start()
    await asyncio.sleep(2.0)
    timer.stop()
    assert [(r.number, r.due, r.started) for r in records] == [
        (0, 0.5, 0.5),
        (1, 1.5, 1.5),
        (2, 2.5, 2.5),
    ]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_after_a_stall_the_late_tick_runs_then_a_full_interval(
    stall: Callable[[float], None],
) -> None:
    records: list[TickRecord] = []
    timer = delay(1.0, lambda: None, records)

    def hog() -> None:
        stall(2.75)
        blocker.stop()

    blocker = Timer(1.5, hog)
    timer.start()
    blocker.start()
    await asyncio.sleep(6.0)
    timer.stop()
    assert [(r.due, r.started, r.skipped_before) for r in records] == [
        (1.0, 1.0, 0),
        (2.0, 4.25, 0),
        (5.25, 5.25, 0),
    ]
    assert timer.statistics().skipped == 0


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_errors_keep_the_delay_schedule() -> None:
    records: list[TickRecord] = []

    async def broken() -> None:
        await asyncio.sleep(0.25)
        raise OSError("no route to device")

    timer = delay(1.0, broken, records)
    timer.start()
    await asyncio.sleep(4.0)
    timer.stop()
    assert [(r.due, r.outcome) for r in records] == [
        (1.0, Outcome.ERROR),
        (2.25, Outcome.ERROR),
        (3.5, Outcome.ERROR),
    ]
    assert timer.statistics().errors == 3


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_restart_while_in_flight_waits_for_the_callback_and_a_full_interval() -> None:
    """Restarted at 1.5 while tick 1 runs until 3.5: the next tick is due at 4.5, no overlap."""
    records: list[TickRecord] = []
    peak = running = 0

    async def slow() -> None:
        nonlocal peak, running
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(2.5)
        running -= 1

    timer = delay(1.0, slow, records)
    timer.start()
    await asyncio.sleep(1.5)
    timer.stop()
    timer.start()
    await asyncio.sleep(4.0)
    timer.stop()
    await timer.wait_stopped()
    assert [(r.started, r.finished) for r in records] == [(1.0, 3.5), (4.5, 7.0)]
    assert peak == 1


def test_phase_is_refused_for_delay_timers() -> None:
    with pytest.raises(ValueError, match="phase applies to FIXED timers only"):
        Timer(1.0, lambda: None, SchedulePolicy.DELAY, phase=0.25)
    with pytest.raises(ValueError, match="phase applies to FIXED timers only"):
        Timer(1.0, lambda: None, SchedulePolicy.DELAY, phase="auto")
