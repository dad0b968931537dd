"""FIXED timers on virtual time: the grid, no drift, overruns, skips, stalls, never early.

Loop time starts at 0.0 in every ``@pytest.mark.looptime`` test, so a timer started at once has
its grid at ``N * interval``. Intervals that are exact binary fractions (0.25, 0.5, 1.0) give
exactly representable due times, so start times can be compared with ``==``; looptime's clock
has a resolution of 1 µs, so a due time that is not representable (``3 * 0.1``) starts up to
1 µs after it (never before: that is the never-early rule at work).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from service import FixedSchedule, Outcome, SchedulePolicy, TickRecord, Timer

LOOPTIME_RESOLUTION = 1e-6


def fixed(
    interval: float, callback: Callable[[], object], records: list[TickRecord], **kwargs: object
) -> Timer:
    return Timer(interval, callback, SchedulePolicy.FIXED, observers=[records.append], **kwargs)  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_ticks_on_the_grid_from_start() -> None:
    records: list[TickRecord] = []
    timer = fixed(0.5, lambda: None, records, name="grid")
    await asyncio.sleep(3.0)  # the grid starts wherever start() is called
    timer.start()
    await asyncio.sleep(2.25)
    timer.stop()
    assert [r.number for r in records] == [1, 2, 3, 4]
    assert [r.due for r in records] == [3.5, 4.0, 4.5, 5.0]
    assert [r.started for r in records] == [3.5, 4.0, 4.5, 5.0]
    assert all(r.outcome is Outcome.OK and r.skipped_before == 0 for r in records)
    assert all(r.timer == "grid" and not r.overrun for r in records)
    stats = timer.statistics()
    assert (stats.ticks, stats.skipped, stats.overruns, stats.errors) == (4, 0, 0, 0)
    assert stats.last_lateness == 0.0 and stats.max_lateness == 0.0


@pytest.mark.asyncio
@pytest.mark.looptime(noop_cycles=0)
async def test_no_drift_over_200k_ticks_through_the_timer() -> None:
    """200 000 ticks of 1 ms: every due time is ``start + N * interval`` exactly.

    A million real loop iterations take ~15 s even with ``noop_cycles=0``; the million-tick
    case is checked on the schedule arithmetic below, and this long run checks that the timer
    uses that arithmetic.
    """
    n_ticks, interval = 200_000, 0.001
    loop = asyncio.get_running_loop()
    await asyncio.sleep(7.25)
    origin = loop.time()
    bad: list[TickRecord] = []
    last: list[TickRecord] = []

    def observe(record: TickRecord) -> None:
        exact = record.due == origin + record.number * interval
        late = 0.0 <= record.lateness <= LOOPTIME_RESOLUTION
        if not (exact and late and record.skipped_before == 0):
            bad.append(record)
        last[:] = [record]

    count = 0

    def tick() -> None:
        nonlocal count
        count += 1
        if count == n_ticks:
            timer.stop()

    timer = Timer(interval, tick, observers=[observe])
    timer.start()
    await timer.wait_stopped()
    assert bad == []
    assert count == n_ticks
    assert last[0].number == n_ticks
    assert last[0].due == origin + n_ticks * interval
    accumulated = origin
    for _ in range(n_ticks):
        accumulated += interval
    assert accumulated != last[0].due  # what `due += interval` would have produced instead
    assert timer.statistics().skipped == 0


def test_no_drift_after_a_million_ticks_of_schedule_arithmetic() -> None:
    """The engine advances a FIXED slot with ``following``; a million steps stay on the grid."""
    for interval, phase in ((0.001, 0.0), (0.1, 0.03)):
        schedule = FixedSchedule(interval, phase)
        origin = 12345.678
        slot = schedule.first(origin)
        accumulated = slot.due
        for _ in range(1_000_000 - 1):
            slot = schedule.following(slot, slot.due, slot.due)
            accumulated += interval
        assert slot.number == 1_000_000
        assert slot.due == origin + phase + 1_000_000 * interval
        assert accumulated != slot.due  # naive accumulation drifts


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_never_early_on_a_grid_the_clock_cannot_represent() -> None:
    """0.1 s steps: ``3 * 0.1 == 0.30000000000000004`` is after the loop clock's 0.3."""
    records: list[TickRecord] = []
    timer = fixed(0.1, lambda: None, records)
    timer.start()
    await asyncio.sleep(5.05)
    timer.stop()
    assert len(records) == 50
    assert all(r.due == r.number * 0.1 for r in records)
    assert all(0.0 <= r.lateness <= LOOPTIME_RESOLUTION for r in records)
    assert any(r.lateness > 0 for r in records)  # the case above did occur


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_never_early_when_the_loop_fires_handles_early() -> None:
    """A loop may run a ``call_at`` handle early (its clock-resolution slack); ticks wait."""
    loop = asyncio.get_running_loop()
    loop._clock_resolution = 0.05  # type: ignore[attr-defined]  # widen asyncio's slack
    early: list[float] = []
    loop.call_at(1.0, lambda: early.append(loop.time()))
    records: list[TickRecord] = []
    timer = fixed(1.0, lambda: None, records)
    timer.start()
    await asyncio.sleep(0.97)  # wakes the loop at 0.97, when 1.0 counts as ready
    await asyncio.sleep(1.5)
    timer.stop()
    assert early == [0.97]  # a bare handle did run early
    assert [(r.due, r.started) for r in records] == [(1.0, 1.0), (2.0, 2.0)]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_overrun_skips_due_times_and_resumes_on_the_grid() -> None:
    """A callback taking 2.5 intervals: two due times skipped per tick, grid kept."""
    records: list[TickRecord] = []
    running = 0
    peak = 0

    async def slow() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(2.5)
        running -= 1

    timer = fixed(1.0, slow, records)
    timer.start()
    await asyncio.sleep(12.0)
    timer.stop()  # tick 10 is in flight (10.0 -> 12.5)
    await timer.wait_stopped()
    loop = asyncio.get_running_loop()
    assert loop.time() == 12.5
    assert [r.number for r in records] == [1, 4, 7, 10]
    assert [(r.due, r.started, r.finished) for r in records] == [
        (1.0, 1.0, 3.5),
        (4.0, 4.0, 6.5),
        (7.0, 7.0, 9.5),
        (10.0, 10.0, 12.5),
    ]
    assert [r.skipped_before for r in records] == [0, 2, 2, 2]
    assert all(r.overrun for r in records)
    stats = timer.statistics()
    assert (stats.ticks, stats.overruns, stats.skipped) == (4, 4, 6)
    assert peak == 1


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_one_overrun_then_back_on_the_original_grid() -> None:
    durations = iter([2.5, 0.25, 1.0, 1.25, 0.0, 0.0])
    records: list[TickRecord] = []

    async def work() -> None:
        await asyncio.sleep(next(durations))

    timer = fixed(1.0, work, records)
    timer.start()
    await asyncio.sleep(9.5)
    timer.stop()
    assert [(r.number, r.started, r.finished, r.skipped_before, r.overrun) for r in records] == [
        (1, 1.0, 3.5, 0, True),  # 2.0 and 3.0 pass while it runs
        (4, 4.0, 4.25, 2, False),
        (5, 5.0, 6.0, 0, False),  # finishing exactly at the next due time is not an overrun
        (6, 6.0, 7.25, 0, True),  # 7.0 passes
        (8, 8.0, 8.0, 1, False),
        (9, 9.0, 9.0, 0, False),
    ]
    assert timer.statistics().skipped == 3
    assert timer.statistics().overruns == 2


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_sync_overrun_is_measured_on_the_loop_clock(stall: Callable[[float], None]) -> None:
    """A synchronous callback that blocks the loop for 2.5 intervals overruns like an async one."""
    records: list[TickRecord] = []
    timer = fixed(1.0, lambda: stall(2.5), records)
    timer.start()
    await asyncio.sleep(7.75)
    timer.stop()
    assert [(r.number, r.started, r.finished, r.skipped_before) for r in records] == [
        (1, 1.0, 3.5, 0),
        (4, 4.0, 6.5, 2),
        (7, 7.0, 9.5, 2),
    ]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_after_a_stall_the_earliest_due_tick_runs_and_later_ones_are_skipped(
    stall: Callable[[float], None],
) -> None:
    """Another timer's synchronous callback blocks the loop from 1.5 to 4.25.

    Ticks 2, 3 and 4 were due during the stall. Tick 2, the earliest, runs (2.25 s late);
    3 and 4 are skipped; tick 5 runs on time.
    """
    records: list[TickRecord] = []
    heartbeat = fixed(1.0, lambda: None, records, name="heartbeat")

    def hog() -> None:
        stall(2.75)
        blocker.stop()

    blocker = Timer(1.5, hog, name="blocker")
    heartbeat.start()
    blocker.start()
    await asyncio.sleep(6.5)
    heartbeat.stop()
    assert [(r.number, r.due, r.started, r.skipped_before) for r in records] == [
        (1, 1.0, 1.0, 0),
        (2, 2.0, 4.25, 0),
        (5, 5.0, 5.0, 2),
        (6, 6.0, 6.0, 0),
    ]
    assert records[1].lateness == 2.25
    stats = heartbeat.statistics()
    assert stats.skipped == 2
    assert stats.max_lateness == 2.25
    assert stats.last_lateness == 0.0
    # The late tick finished (4.25) after the next due time (3.0): by the contract's
    # definition that is an overrun, although the callback itself took no time.
    assert [r.overrun for r in records] == [False, True, False, False]
    assert stats.overruns == 1


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_async_work_of_another_timer_is_not_a_stall() -> None:
    """An async callback that awaits for a long time does not delay other timers."""
    records: list[TickRecord] = []
    heartbeat = fixed(1.0, lambda: None, records)

    async def long_poll() -> None:
        await asyncio.sleep(10.0)

    poller = Timer(0.5, long_poll)
    heartbeat.start()
    poller.start()
    await asyncio.sleep(4.5)
    heartbeat.stop()
    poller.stop(cancel=True)
    await poller.wait_stopped()
    assert [(r.due, r.started) for r in records] == [(t, t) for t in (1.0, 2.0, 3.0, 4.0)]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_many_timers_at_the_same_due_time_run_in_start_order() -> None:
    order: list[tuple[float, int]] = []
    loop = asyncio.get_running_loop()
    timers = [
        Timer(0.5, lambda i=i: order.append((loop.time(), i)), name=f"t{i}")  # type: ignore[misc]
        for i in range(5)
    ]
    for timer in timers:
        timer.start()
    await asyncio.sleep(1.0)
    for timer in timers:
        timer.stop()
    assert order == [(0.5, i) for i in range(5)] + [(1.0, i) for i in range(5)]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_statistics_next_due_and_lateness() -> None:
    timer = Timer(0.25, lambda: None)
    assert timer.statistics().next_due is None
    assert timer.statistics().last_lateness is None
    timer.start()
    assert timer.statistics().next_due == 0.25
    assert timer.statistics().running
    await asyncio.sleep(0.5)
    stats = timer.statistics()
    assert stats.next_due == 0.75
    assert (stats.ticks, stats.last_lateness, stats.last_duration) == (2, 0.0, 0.0)
    timer.stop()
    assert timer.statistics().next_due is None
    assert not timer.statistics().running
