"""Timer options: phase (incl. "auto"), immediate, timeout, run_in_thread, interval validation."""

from __future__ import annotations

import asyncio
import math
import threading
import time
import zlib
from datetime import timedelta
from typing import Any

import pytest

from service import FixedSchedule, Outcome, SchedulePolicy, TickRecord, Timer

# -- phase -----------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_phase_offsets_every_due_time() -> None:
    records: list[TickRecord] = []
    timer = Timer(1.0, lambda: None, phase=0.25, observers=[records.append])
    await asyncio.sleep(2.0)
    timer.start()
    await asyncio.sleep(3.5)
    timer.stop()
    assert [(r.number, r.due, r.started) for r in records] == [
        (1, 3.25, 3.25),
        (2, 4.25, 4.25),
        (3, 5.25, 5.25),
    ]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_phase_as_timedelta_with_immediate() -> None:
    records: list[TickRecord] = []
    timer = Timer(
        timedelta(seconds=2),
        lambda: None,
        phase=timedelta(milliseconds=500),
        immediate=True,
        observers=[records.append],
    )
    timer.start()
    await asyncio.sleep(5.0)
    timer.stop()
    assert [(r.number, r.due) for r in records] == [(0, 0.5), (1, 2.5), (2, 4.5)]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_auto_phase_is_deterministic_and_inside_the_interval() -> None:
    names = [f"meter-{i}/heartbeat" for i in range(200)]
    phases = []
    for name in names:
        timer = Timer(10.0, lambda: None, phase="auto", name=name)
        schedule = timer.schedule
        assert isinstance(schedule, FixedSchedule)
        assert 0.0 <= schedule.phase < 10.0
        assert schedule.phase == zlib.crc32(name.encode()) / 2**32 * 10.0
        again = Timer(10.0, lambda: None, phase="auto", name=name).schedule
        assert isinstance(again, FixedSchedule) and again.phase == schedule.phase
        phases.append(schedule.phase)
    assert len(set(phases)) == len(phases)  # spread, not bunched
    assert min(phases) < 1.0 and max(phases) > 9.0

    records: list[TickRecord] = []
    timer = Timer(10.0, lambda: None, phase="auto", name=names[0], observers=[records.append])
    timer.start()
    await asyncio.sleep(25.0)
    timer.stop()
    assert [r.due for r in records] == [phases[0] + 10.0, phases[0] + 20.0]


@pytest.mark.parametrize("phase", [1.0, 1.5, -0.25, math.nan, math.inf])
def test_phase_out_of_range_is_refused_naming_it(phase: float) -> None:
    with pytest.raises(ValueError, match=repr(phase).replace(".", r"\.")):
        Timer(1.0, lambda: None, phase=phase, name="p")


# -- immediate -------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_immediate_first_tick_fixed() -> None:
    records: list[TickRecord] = []
    timer = Timer(1.0, lambda: None, immediate=True, observers=[records.append])
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
async def test_immediate_tick_does_not_run_inside_start() -> None:
    calls: list[float] = []
    timer = Timer(1.0, lambda: calls.append(0.0), immediate=True)
    timer.start()
    assert calls == []  # start() only schedules; the tick runs on the loop
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert calls == [0.0]
    timer.stop()


# -- timeout ---------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_timeout_cancels_the_tick_counts_it_and_keeps_the_grid() -> None:
    records: list[TickRecord] = []
    cancelled: list[float] = []
    loop = asyncio.get_running_loop()
    durations = iter([5.0, 0.25, 5.0, 0.25])

    async def hangs() -> None:
        try:
            await asyncio.sleep(next(durations))
        except asyncio.CancelledError:
            cancelled.append(loop.time())
            raise

    timer = Timer(1.0, hangs, timeout=1.5, observers=[records.append])
    timer.start()
    await asyncio.sleep(6.5)
    timer.stop()
    assert cancelled == [2.5, 5.5]
    assert [(r.number, r.started, r.finished, r.outcome, r.skipped_before) for r in records] == [
        (1, 1.0, 2.5, Outcome.TIMEOUT, 0),
        (3, 3.0, 3.25, Outcome.OK, 1),
        (4, 4.0, 5.5, Outcome.TIMEOUT, 0),
        (6, 6.0, 6.25, Outcome.OK, 1),
    ]
    assert isinstance(records[0].error, TimeoutError)
    stats = timer.statistics()
    assert (stats.errors, stats.timeouts, stats.skipped, stats.overruns) == (2, 2, 2, 2)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_timeout_as_timedelta_on_a_delay_timer() -> None:
    records: list[TickRecord] = []

    async def hangs() -> None:
        await asyncio.sleep(60.0)

    timer = Timer(
        1.0,
        hangs,
        SchedulePolicy.DELAY,
        timeout=timedelta(milliseconds=250),
        observers=[records.append],
    )
    timer.start()
    await asyncio.sleep(3.0)
    timer.stop()
    assert [(r.due, r.finished, r.outcome) for r in records] == [
        (1.0, 1.25, Outcome.TIMEOUT),
        (2.25, 2.5, Outcome.TIMEOUT),
    ]


@pytest.mark.parametrize("timeout", [0, -1.0, math.nan, math.inf])
def test_timeout_out_of_range_is_refused(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        Timer(1.0, lambda: None, timeout=timeout)


# -- interval validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "error"),
    [
        (0, ValueError),
        (0.0, ValueError),
        (-1.0, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        (-math.inf, ValueError),
        (timedelta(0), ValueError),
        (timedelta(seconds=-5), ValueError),
        (True, TypeError),
        (None, TypeError),
        ([1.0], TypeError),
        ("soon", ValueError),
    ],
    ids=repr,
)
def test_bad_intervals_are_refused_naming_the_value(interval: Any, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        Timer(interval, lambda: None, name="meter-7/poll")
    message = str(info.value)
    assert repr(interval) in message
    assert "interval" in message or "duration" in message


@pytest.mark.parametrize(
    ("interval", "seconds"),
    [(2, 2.0), (0.25, 0.25), (timedelta(milliseconds=250), 0.25), (timedelta(minutes=1), 60.0)],
)
def test_intervals_in_seconds_or_timedelta(interval: Any, seconds: float) -> None:
    timer = Timer(interval, lambda: None)
    assert timer.interval == seconds
    assert isinstance(timer.interval, float)


def test_callback_must_be_callable() -> None:
    with pytest.raises(TypeError, match="callback must be callable, got 42"):
        Timer(1.0, 42)  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_timedelta_interval_ticks_exactly() -> None:
    records: list[TickRecord] = []
    timer = Timer(timedelta(milliseconds=250), lambda: None, observers=[records.append])
    timer.start()
    await asyncio.sleep(1.0)
    timer.stop()
    assert [r.due for r in records] == [0.25, 0.5, 0.75, 1.0]


# -- run_in_thread (real time: threads do not run on virtual time) ----------------------------


@pytest.mark.asyncio
@pytest.mark.realtime
async def test_blocking_callback_in_a_thread_does_not_stall_other_timers() -> None:
    blocking_records: list[TickRecord] = []
    heartbeat_records: list[TickRecord] = []
    threads: set[str] = set()

    def blocking_read() -> None:
        threads.add(threading.current_thread().name)
        time.sleep(0.15)  # a blocking serial read

    reader = Timer(0.05, blocking_read, run_in_thread=True, observers=[blocking_records.append])
    heartbeat = Timer(0.02, lambda: None, observers=[heartbeat_records.append])
    reader.start()
    heartbeat.start()
    await asyncio.sleep(0.45)
    reader.stop()
    heartbeat.stop()
    await reader.wait_stopped()
    assert threading.current_thread().name not in threads
    assert len(blocking_records) >= 2
    assert all(r.outcome is Outcome.OK and r.duration >= 0.15 for r in blocking_records)
    assert all(r.overrun for r in blocking_records)  # 0.15 s > one 0.05 s interval
    assert len(heartbeat_records) >= 15  # 22 due in 0.45 s; none bunched behind the thread
    assert max(r.lateness for r in heartbeat_records) < 0.1  # vs 0.15 s if the thread blocked


@pytest.mark.asyncio
@pytest.mark.realtime
async def test_thread_callback_that_returns_late_counts_as_timeout() -> None:
    records: list[TickRecord] = []
    timer = Timer(
        0.02,
        lambda: time.sleep(0.06),
        run_in_thread=True,
        timeout=0.03,
        observers=[records.append],
    )
    timer.start()
    await asyncio.sleep(0.05)
    timer.stop()
    await timer.wait_stopped()
    assert [r.outcome for r in records] == [Outcome.TIMEOUT]
    assert records[0].duration >= 0.06  # a thread cannot be cancelled: it ran to the end
    assert isinstance(records[0].error, TimeoutError)
    assert timer.statistics().timeouts == 1


class ThreadCount:
    """A blocking callback that sleeps ``seconds`` and counts how many of its threads overlap."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.running = self.peak = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(self.seconds)
        with self._lock:
            self.running -= 1


@pytest.mark.asyncio
@pytest.mark.realtime
async def test_stop_cancel_then_restart_never_overlaps_a_running_thread() -> None:
    """A thread cannot be cancelled: the tick stays in flight until it returns."""
    threads = ThreadCount(0.08)
    records: list[TickRecord] = []
    timer = Timer(0.01, threads, run_in_thread=True, immediate=True, observers=[records.append])
    timer.start()
    await asyncio.sleep(0.02)
    timer.stop(cancel=True)
    timer.start()  # its first tick waits until the cancelled tick's thread has returned
    await asyncio.sleep(0.1)
    timer.stop(cancel=True)
    await timer.wait_stopped()
    assert threads.running == 0  # wait_stopped returned only after the thread did
    assert threads.peak == 1
    assert [r.outcome for r in records] == [Outcome.CANCELLED, Outcome.CANCELLED]
    assert records[1].started >= records[0].finished


@pytest.mark.asyncio
@pytest.mark.realtime
async def test_a_thread_tick_cancelled_before_its_task_ran_still_waits_for_the_thread() -> None:
    """stop(cancel=True) from a callback in the same scheduler pass, after the thread started
    but before its tick's task took a step: the tick stays in flight until the thread returns."""
    threads = ThreadCount(0.2)
    reader = Timer(0.05, threads, run_in_thread=True, align=True, name="reader")
    killer = Timer(0.05, lambda: reader.stop(cancel=True), align=True, name="killer")
    reader.start()
    killer.start()  # the same due instants, armed after the reader: runs right after it
    async with asyncio.timeout(5.0):
        while reader.statistics().ticks == 0 and not reader.in_flight:
            await asyncio.sleep(0.005)
    killer.stop()
    await reader.wait_stopped()
    assert threads.running == 0  # wait_stopped returned only once the thread had
    reader.start()
    async with asyncio.timeout(5.0):
        while reader.statistics().ticks < 2:
            await asyncio.sleep(0.01)
    reader.stop()
    await reader.wait_stopped()
    assert threads.peak == 1


@pytest.mark.asyncio
@pytest.mark.realtime
@pytest.mark.parametrize("cancel", [False, True])
async def test_a_thread_callback_may_stop_its_own_timer(cancel: bool) -> None:
    """stop() from the callback's own thread is handed to the loop (asyncio's debug mode
    refuses loop calls from other threads, so it is on here)."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    calls: list[str] = []

    def once_then_stop() -> None:
        calls.append(threading.current_thread().name)
        timer.stop(cancel=cancel)

    records: list[TickRecord] = []
    timer = Timer(0.01, once_then_stop, run_in_thread=True, observers=[records.append])
    timer.start()
    async with asyncio.timeout(5.0):
        await timer.wait_stopped()
    assert len(calls) == 1 and not timer.running and not timer.in_flight
    assert [r.outcome for r in records] == [Outcome.CANCELLED if cancel else Outcome.OK]
