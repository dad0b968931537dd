"""``statistics()`` agrees with the tick records, whatever path each tick took.

A FIXED timer with a synchronous callback that succeeds leaves its tick count and last due time
implicit (derived from the slot number) for as long as such ticks follow each other; errors,
async ticks, overruns and stop/start from inside the callback store them again. These tests
mix all of those paths at random (seeded, so every run is the same) on virtual time and check,
in the callback, in an observer and at the end, that the counters are exactly what the records
say.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable

import pytest

from service import Outcome, SchedulePolicy, TickRecord, Timer, TimerStatistics

INTERVAL = 0.25
ACTIONS = ("ok", "ok", "ok", "ok", "raise", "stall", "async", "async_long", "restart", "stop")


def check_against(
    records: list[TickRecord], stats: TimerStatistics, *, in_observer: bool = False
) -> None:
    """``stats`` says what ``records`` say. Skips are counted when the timer reschedules and
    reported with the next tick, so only an observer sees them all reported."""
    assert stats.ticks == len(records)
    assert stats.errors == sum(r.outcome is Outcome.ERROR for r in records)
    assert stats.overruns == sum(r.overrun for r in records)
    reported = sum(r.skipped_before for r in records)
    assert stats.skipped == reported if in_observer else stats.skipped >= reported
    if not records:
        assert stats.last_lateness is None and stats.last_duration is None
        return
    last = records[-1]
    assert stats.last_lateness == last.started - last.due
    assert stats.last_duration == last.finished - last.started
    assert stats.max_lateness == max(r.started - r.due for r in records)


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.parametrize("seed", range(24))
async def test_counters_match_records_across_every_tick_path(
    seed: int, stall: Callable[[float], None]
) -> None:
    rng = random.Random(seed)
    records: list[TickRecord] = []
    checks = [0]
    stopped_by_callback = asyncio.Event()

    def callback() -> object:
        check_against(records, timer.statistics())  # the running tick is not counted yet
        checks[0] += 1
        action = rng.choice(ACTIONS)
        if action == "raise":
            raise RuntimeError(f"tick {len(records)} failed on purpose")
        if action == "stall":
            stall(rng.choice((0.1, 0.3, 0.6, 1.1)))  # up to four grid points pass
        elif action == "async":
            return asyncio.sleep(rng.choice((0.0, 0.05)))
        elif action == "async_long":
            return asyncio.sleep(rng.choice((0.3, 0.7)))
        elif action == "restart":
            timer.stop()
            timer.start()
        elif action == "stop":
            timer.stop()
            stopped_by_callback.set()
        return None

    def observer(record: TickRecord) -> None:
        records.append(record)
        check_against(records, timer.statistics(), in_observer=True)

    timer = Timer(
        INTERVAL,
        callback,
        SchedulePolicy.FIXED,
        name=f"mixed-{seed}",
        phase=rng.choice((0.0, 0.1, 0.2)),
        align=rng.random() < 0.5,
        observers=[observer],
    )
    timer.start()
    for _ in range(40):
        await asyncio.sleep(INTERVAL * rng.choice((1, 2, 3)))
        if stopped_by_callback.is_set():
            await timer.wait_stopped()
            check_against(records, timer.statistics())
            stopped_by_callback.clear()
            timer.start()
    timer.stop()
    await timer.wait_stopped()
    stats = timer.statistics()
    check_against(records, stats)
    assert checks[0] == len(records) > 40
    assert all(r.started >= r.due for r in records)
    assert all(a.finished <= b.started for a, b in itertools.pairwise(records))


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_long_run_of_lean_ticks_then_a_failure_keeps_the_count() -> None:
    """Ten thousand plain ticks (counted implicitly), one failure, then stop: all counted."""
    records: list[TickRecord] = []
    fail_at = 10_000
    calls = [0]

    def callback() -> None:
        calls[0] += 1
        if calls[0] == fail_at:
            raise ValueError("the ten-thousandth tick fails")

    timer = Timer(0.5, callback, SchedulePolicy.FIXED, observers=[records.append])
    timer.start()
    await asyncio.sleep(0.5 * fail_at + 0.25)
    stats = timer.statistics()
    assert (stats.ticks, stats.errors) == (fail_at, 1)
    assert stats.last_lateness == 0.0
    await asyncio.sleep(0.5 * 10)
    timer.stop()
    stats = timer.statistics()
    assert (stats.ticks, stats.errors, len(records)) == (fail_at + 10, 1, fail_at + 10)
    assert stats.last_lateness == records[-1].started - records[-1].due == 0.0
    assert stats.next_due is None


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.parametrize("path", ["inline", "task"])
async def test_an_observer_sees_the_overrun_already_counted(
    path: str, stall: Callable[[float], None]
) -> None:
    """Both tick paths count an overrun before observers see its record."""
    seen: list[tuple[bool, int, int]] = []

    def slow() -> None:
        stall(1.5)

    async def slow_async() -> None:
        await asyncio.sleep(1.5)

    def observer(record: TickRecord) -> None:
        stats = timer.statistics()
        seen.append((record.overrun, stats.ticks, stats.overruns))

    timer = Timer(1.0, slow if path == "inline" else slow_async, observers=[observer])
    timer.start()
    await asyncio.sleep(1.2)
    timer.stop()
    await timer.wait_stopped()
    assert seen == [(True, 1, 1)]


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_next_due_is_never_in_the_past(kind: str) -> None:
    """``next_due`` is a due time still ahead, or ``None`` while it is not known: in the
    callback, while the tick is in flight, and while observers hear about it."""
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, float, float | None]] = []

    def look(where: str) -> None:
        seen.append((where, loop.time(), timer.statistics().next_due))

    def sync_callback() -> None:
        look("callback")

    async def async_callback() -> None:
        look("callback")
        await asyncio.sleep(0.3)

    timer = Timer(
        1.0,
        sync_callback if kind == "sync" else async_callback,
        observers=[lambda _record: look("observer")],
    )
    timer.start()
    await asyncio.sleep(1.1)
    look("between")
    await asyncio.sleep(1.3)
    look("idle")
    timer.stop()
    await timer.wait_stopped()
    assert len(seen) == 6
    assert all(due is None or due > now for _, now, due in seen), seen
    assert seen[-1] == ("idle", 2.4, 3.0)
