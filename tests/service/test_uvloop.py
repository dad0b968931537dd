"""The engine's key semantics on uvloop, in real time.

looptime cannot run on uvloop: it mixes itself into ``asyncio.BaseEventLoop`` subclasses and
replaces their selector, and ``uvloop.Loop`` is a libuv loop with neither (checked below). So
these are short real-time variants, with tolerances only where real time decides; every
structural fact (grid, counts, skips, outcomes, never early) is still asserted exactly.

uvloop's ``loop.time()`` is libuv's millisecond clock (the engine reads ``time.monotonic()``
instead, which it truncates) and its timers may fire up to a millisecond before their
``call_at`` time: the never-early rule is tested here for real.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from service import Outcome, SchedulePolicy, Scheduler, TickRecord, Timer

pytestmark = [pytest.mark.realtime]


def on_uvloop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test body on a fresh uvloop loop.

    pytest-asyncio 1.5 deprecates overriding ``event_loop_policy`` and its replacement, the
    ``pytest_asyncio_loop_factories`` hook, would parametrize every async test in the suite;
    a plain ``asyncio.Runner`` keeps uvloop to this module.
    """

    @functools.wraps(test)
    def run() -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(test())

    return run


def on_grid(records: list[TickRecord], interval: float, before: float, after: float) -> bool:
    """Whether every due time is exactly ``origin + N * interval`` for one start time.

    The engine reads uvloop's clock at full resolution (``time.monotonic()``, which uvloop's
    ``loop.time()`` truncates to the millisecond), so the origin is the engine clock's reading
    at ``start()``, between ``before`` and ``after``.
    """
    origin = records[0].due - records[0].number * interval
    return before <= origin <= after and all(r.due == origin + r.number * interval for r in records)


def test_the_engine_reads_uvloop_time_at_full_resolution() -> None:
    async def body() -> float:
        clock = Scheduler.for_loop().clock
        return clock() - time.monotonic()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert -0.001 < runner.run(body()) <= 0.0


def test_looptime_cannot_patch_uvloop() -> None:
    loop = uvloop.new_event_loop()
    try:
        assert not isinstance(loop, asyncio.BaseEventLoop)
        assert not hasattr(loop, "_selector")
    finally:
        loop.close()


@on_uvloop
async def test_running_on_uvloop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


@on_uvloop
async def test_fixed_grid_and_never_early() -> None:
    records: list[TickRecord] = []
    interval = 0.0123  # not a whole number of milliseconds
    timer = Timer(interval, lambda: None, observers=[records.append])
    before = Scheduler.for_loop().clock()
    timer.start()
    after = Scheduler.for_loop().clock()
    await asyncio.sleep(0.3)
    timer.stop()
    assert len(records) >= 20
    assert [r.number for r in records] == list(range(1, len(records) + 1))
    assert on_grid(records, interval, before, after)
    assert all(r.started >= r.due for r in records)
    assert all(r.skipped_before == 0 for r in records)
    assert max(r.lateness for r in records) < 0.05


@on_uvloop
async def test_delay_spacing() -> None:
    records: list[TickRecord] = []

    async def poll() -> None:
        await asyncio.sleep(0.007)

    timer = Timer(0.011, poll, SchedulePolicy.DELAY, observers=[records.append])
    timer.start()
    await asyncio.sleep(0.2)
    timer.stop()
    await timer.wait_stopped()
    assert len(records) >= 5
    for previous, record in itertools.pairwise(records):
        assert record.due == previous.finished + 0.011
        assert record.started >= record.due
    assert all(r.duration >= 0.006 for r in records)


@on_uvloop
async def test_overrun_skips_exactly_and_keeps_the_grid() -> None:
    """Callback takes 2.5 intervals (50 ms of 20 ms): 2 due times skipped per tick."""
    records: list[TickRecord] = []
    running = peak = 0

    async def slow() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1

    interval = 0.02
    timer = Timer(interval, slow, observers=[records.append])
    before = Scheduler.for_loop().clock()
    timer.start()
    after = Scheduler.for_loop().clock()
    await asyncio.sleep(0.25)
    timer.stop()
    await timer.wait_stopped()
    assert len(records) >= 3
    # Each run skips the 2 due times that pass during it (3 if real time is 10 ms late):
    # the skipped ones are exactly the grid points between two runs.
    for previous, record in itertools.pairwise(records):
        assert record.skipped_before == record.number - previous.number - 1
        assert record.skipped_before >= 2
    assert records[0].number == 1
    assert [r.skipped_before for r in records].count(2) >= len(records) - 2
    assert all(r.overrun for r in records)
    assert on_grid(records, interval, before, after)
    assert all(r.started >= r.due for r in records)
    assert peak == 1


@on_uvloop
async def test_stop_paths() -> None:
    records: list[TickRecord] = []

    async def hangs() -> None:
        await asyncio.sleep(10.0)

    timer = Timer(0.01, hangs, observers=[records.append], name="uv")
    timer.start()
    await asyncio.sleep(0.03)
    (task,) = [t for t in asyncio.all_tasks() if t.get_name() == "gatebeat:uv"]
    timer.stop(cancel=True)
    await timer.wait_stopped()
    assert task.cancelled()
    assert [r.outcome for r in records] == [Outcome.CANCELLED]
    timer.stop()  # idempotent

    count = 0

    def tick() -> None:
        nonlocal count
        count += 1
        if count == 2:
            sync_timer.stop()

    sync_timer = Timer(0.005, tick)
    sync_timer.start()
    await asyncio.sleep(0.05)
    assert count == 2
    await sync_timer.wait_stopped()


@on_uvloop
async def test_errors_and_timeouts_are_counted() -> None:
    records: list[TickRecord] = []
    plan = iter(["error", "hang", "ok", "error", "ok", "ok", "ok", "ok"])

    async def work() -> None:
        step = next(plan)
        if step == "error":
            raise OSError("device gone")
        if step == "hang":
            await asyncio.sleep(1.0)

    timer = Timer(0.02, work, SchedulePolicy.DELAY, timeout=0.01, observers=[records.append])
    timer.start()
    await asyncio.sleep(0.11)
    timer.stop()
    await timer.wait_stopped()
    outcomes = [r.outcome for r in records][:4]
    assert outcomes == [Outcome.ERROR, Outcome.TIMEOUT, Outcome.OK, Outcome.ERROR]
    stats = timer.statistics()
    assert stats.timeouts == 1
    assert stats.errors == sum(r.outcome in (Outcome.ERROR, Outcome.TIMEOUT) for r in records)
