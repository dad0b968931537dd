"""Stopping and restarting: every stop path, ``wait_stopped``, no overlap across restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from service import Outcome, SchedulePolicy, TickRecord, Timer


class Probe:
    """An async callback that counts concurrent runs and records what happened to it."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.running = 0
        self.peak = 0
        self.calls = 0
        self.cancelled = 0

    async def __call__(self) -> None:
        self.calls += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.duration)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1


def engine_tasks(name: str) -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == f"gatebeat:{name}"]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_stop_before_the_first_tick() -> None:
    calls: list[float] = []
    timer = Timer(1.0, lambda: calls.append(0.0))
    timer.start()
    await asyncio.sleep(0.5)
    timer.stop()
    await timer.wait_stopped()
    await asyncio.sleep(5.0)
    assert calls == []
    stats = timer.statistics()
    assert (stats.ticks, stats.running, stats.in_flight, stats.next_due) == (0, False, False, None)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_wait_stopped_returns_at_once_when_idle() -> None:
    loop = asyncio.get_running_loop()
    never_started = Timer(1.0, lambda: None)
    await never_started.wait_stopped()
    timer = Timer(1.0, lambda: None)
    timer.start()
    await asyncio.sleep(1.5)
    timer.stop()
    await timer.wait_stopped()
    assert loop.time() == 1.5


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_stop_from_inside_a_sync_callback() -> None:
    records: list[TickRecord] = []
    count = 0

    def tick() -> None:
        nonlocal count
        count += 1
        if count == 3:
            timer.stop()
            assert not timer.running

    timer = Timer(0.5, tick, observers=[records.append])
    timer.start()
    await asyncio.sleep(5.0)
    assert count == 3
    assert [(r.number, r.outcome) for r in records] == [(n, Outcome.OK) for n in (1, 2, 3)]
    await timer.wait_stopped()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_stop_from_inside_an_async_callback_lets_it_finish() -> None:
    loop = asyncio.get_running_loop()
    records: list[TickRecord] = []
    finished: list[float] = []

    async def tick() -> None:
        timer.stop()
        await asyncio.sleep(0.75)  # still runs to the end
        finished.append(loop.time())

    timer = Timer(1.0, tick, observers=[records.append])
    timer.start()
    await asyncio.sleep(1.25)
    assert timer.in_flight and not timer.running
    await timer.wait_stopped()
    assert loop.time() == 1.75
    assert finished == [1.75]
    assert [(r.started, r.finished, r.outcome) for r in records] == [(1.0, 1.75, Outcome.OK)]
    await asyncio.sleep(5.0)
    assert len(records) == 1


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_stop_cancel_mid_callback_records_cancelled_and_propagates() -> None:
    loop = asyncio.get_running_loop()
    records: list[TickRecord] = []
    probe = Probe(10.0)
    timer = Timer(1.0, probe, observers=[records.append], name="cancel-me")
    timer.start()
    await asyncio.sleep(2.5)
    (task,) = engine_tasks("cancel-me")
    timer.stop(cancel=True)
    await timer.wait_stopped()
    assert loop.time() == 2.5
    assert probe.cancelled == 1
    assert task.cancelled()  # the CancelledError was re-raised, not swallowed
    assert [(r.started, r.finished, r.outcome, r.error) for r in records] == [
        (1.0, 2.5, Outcome.CANCELLED, None)
    ]
    stats = timer.statistics()
    assert (stats.ticks, stats.errors, stats.in_flight) == (1, 0, False)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_stop_cancel_from_inside_the_async_callback() -> None:
    records: list[TickRecord] = []
    reached: list[str] = []

    async def tick() -> None:
        timer.stop(cancel=True)
        reached.append("before")
        await asyncio.sleep(1.0)
        reached.append("after")  # never: the await above raises CancelledError

    timer = Timer(1.0, tick, observers=[records.append])
    timer.start()
    await asyncio.sleep(1.5)
    await timer.wait_stopped()
    assert reached == ["before"]
    assert [(r.started, r.finished, r.outcome) for r in records] == [(1.0, 1.0, Outcome.CANCELLED)]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_stop_is_idempotent() -> None:
    timer = Timer(1.0, lambda: None)
    timer.stop()
    timer.stop(cancel=True)
    timer.start()
    timer.stop()
    timer.stop()
    timer.stop(cancel=True)
    await timer.wait_stopped()
    await asyncio.sleep(3.0)
    assert timer.statistics().ticks == 0


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_start_twice_is_an_error() -> None:
    timer = Timer(1.0, lambda: None, name="twice")
    timer.start()
    with pytest.raises(RuntimeError, match="'twice' is already running"):
        timer.start()
    timer.stop()


def test_start_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError, match="no running event loop"):
        Timer(1.0, lambda: None).start()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_wait_stopped_waits_for_the_in_flight_callback_and_all_waiters_wake() -> None:
    loop = asyncio.get_running_loop()
    timer = Timer(1.0, Probe(2.0))
    timer.start()
    await asyncio.sleep(1.5)
    timer.stop()
    woke: list[float] = []

    async def waiter() -> None:
        await timer.wait_stopped()
        woke.append(loop.time())

    await asyncio.gather(waiter(), waiter(), waiter())
    assert woke == [3.0, 3.0, 3.0]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_wait_stopped_blocks_while_running() -> None:
    timer = Timer(1.0, lambda: None)
    timer.start()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(5.0):
            await timer.wait_stopped()
    timer.stop()
    await timer.wait_stopped()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_stopping_another_timer_due_at_the_same_time_prevents_its_tick() -> None:
    """No callback starts after ``stop()`` returns, even one due in the same wake-up."""
    calls: list[str] = []

    def first() -> None:
        calls.append("first")
        second.stop()

    first_timer = Timer(1.0, first)
    second = Timer(1.0, lambda: calls.append("second"))
    first_timer.start()
    second.start()
    await asyncio.sleep(3.0)
    first_timer.stop()
    assert calls == ["first", "first", "first"]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_restart_while_in_flight_never_overlaps_fixed() -> None:
    """Tick 1 runs 1.0 -> 3.5; stopped at 1.5, restarted at 2.0 (new grid 3.0, 4.0, ...).

    The restarted timer waits for the in-flight callback: 3.0 passes while it runs and is
    skipped; the next tick starts at 4.0 on the new grid.
    """
    records: list[TickRecord] = []
    probe = Probe(2.5)
    timer = Timer(1.0, probe, observers=[records.append])
    timer.start()
    await asyncio.sleep(1.5)
    timer.stop()
    await asyncio.sleep(0.5)
    timer.start()
    assert timer.in_flight and timer.running
    await asyncio.sleep(4.0)
    timer.stop()
    await timer.wait_stopped()
    assert probe.peak == 1
    assert [(r.number, r.due, r.started, r.finished, r.skipped_before) for r in records] == [
        (1, 1.0, 1.0, 3.5, 0),
        (2, 4.0, 4.0, 6.5, 1),
    ]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_stop_start_cycles_while_in_flight_never_overlap() -> None:
    probe = Probe(0.75)
    for policy in SchedulePolicy:
        timer = Timer(0.5, probe, policy, immediate=True)
        timer.start()
        for _ in range(40):
            await asyncio.sleep(0.125)
            timer.stop()
            timer.start()
        timer.stop()
        await timer.wait_stopped()
    assert probe.peak == 1
    assert probe.calls > 10


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_stop_and_start_inside_a_sync_callback_restarts_the_grid() -> None:
    records: list[TickRecord] = []
    count = 0

    def tick() -> None:
        nonlocal count
        count += 1
        if count == 2:
            timer.stop()
            timer.start()  # new grid from 2.0: 3.0, 4.0, ...

    timer = Timer(1.0, tick, observers=[records.append])
    await asyncio.sleep(0.25)
    timer.start()  # grid 1.25, 2.25
    await asyncio.sleep(3.5)
    timer.stop()
    assert [(r.number, r.due) for r in records] == [(1, 1.25), (2, 2.25), (1, 3.25)]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_restart_after_stop_starts_a_new_grid() -> None:
    records: list[TickRecord] = []
    timer = Timer(1.0, lambda: None, observers=[records.append])
    timer.start()
    await asyncio.sleep(1.5)
    timer.stop()
    await asyncio.sleep(1.25)
    timer.start()
    await asyncio.sleep(2.0)
    timer.stop()
    assert [(r.number, r.due) for r in records] == [(1, 1.0), (1, 3.75), (2, 4.75)]


def inline_or_task(kind: str) -> Callable[[], object]:
    """A callback whose ticks complete inline (``kind`` not "async") or as a task."""

    def callback() -> object:
        return asyncio.sleep(0) if kind == "async" else None

    return callback


def recording_then(
    records: list[TickRecord], count: int, act: Callable[[], None]
) -> Callable[[TickRecord], None]:
    """An observer that records every tick and calls ``act()`` once it has ``count`` records."""

    def observer(record: TickRecord) -> None:
        records.append(record)
        if len(records) == count:
            act()

    return observer


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.parametrize("kind", ["sync", "async", "delay"])
async def test_an_observer_that_restarts_the_timer_gets_one_tick_per_due_time(kind: str) -> None:
    """stop(); start() in an observer: the new grid, each due time once (it was armed twice)."""
    records: list[TickRecord] = []

    def restart() -> None:
        timer.stop()
        timer.start()

    observer = recording_then(records, 3, restart)
    policy = SchedulePolicy.DELAY if kind == "delay" else SchedulePolicy.FIXED
    timer = Timer(1.0, inline_or_task(kind), policy, name=f"restart-{kind}", observers=[observer])
    timer.start()
    await asyncio.sleep(6.5)
    timer.stop()
    assert [(r.number, r.due) for r in records] == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (1, 4.0),  # restarted at 3.0 by the observer
        (2, 5.0),
        (3, 6.0),
    ]
    assert timer.statistics().ticks == 6


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_an_observer_that_stops_the_timer_ends_it(kind: str) -> None:
    records: list[TickRecord] = []
    observer = recording_then(records, 2, lambda: timer.stop())
    timer = Timer(
        1.0, inline_or_task(kind), SchedulePolicy.FIXED, name=f"stop-{kind}", observers=[observer]
    )
    timer.start()
    await asyncio.wait_for(timer.wait_stopped(), timeout=10)
    await asyncio.sleep(5)
    assert [r.number for r in records] == [1, 2]
    stats = timer.statistics()
    assert (stats.ticks, stats.running, stats.next_due) == (2, False, None)


def test_a_timer_whose_loop_closed_mid_tick_starts_on_a_new_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A tick that starts while asyncio.run() shuts down (another task is still cleaning up)
    gets a task nobody cancels: it is destroyed pending with its loop and can never complete.
    A later start() on another loop forgets that tick, with a warning, instead of refusing."""
    slow = True

    async def poll() -> None:
        await asyncio.sleep(1.0 if slow else 0.0)

    async def cleanup_on_cancel() -> None:
        try:
            await asyncio.sleep(10.0)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # closes a connection gracefully
            raise

    timer = Timer(0.02, poll, immediate=True, name="poll")

    async def first_run() -> None:
        asyncio.get_running_loop().create_task(cleanup_on_cancel())
        timer.start()
        await asyncio.sleep(0.001)
        timer.stop(cancel=True)
        await timer.wait_stopped()
        timer.start()  # main ends while it runs: its next tick starts during the clean-up

    async def second_run() -> int:
        timer.stop()
        timer.start()
        async with asyncio.timeout(5.0):
            while timer.statistics().ticks < 3:
                await asyncio.sleep(0.01)
        timer.stop()
        await timer.wait_stopped()
        return timer.statistics().ticks

    asyncio.run(first_run())
    assert timer.in_flight  # the orphaned tick
    slow = False
    with caplog.at_level("WARNING", logger="gatebeat.engine"):
        assert asyncio.run(second_run()) >= 3
    assert "that tick is abandoned" in caplog.text
