"""Loop-time triggers on virtual time: Every, Delay, Once(delay), Forever, Any, hooks.

Loop time starts at 0.0 in every ``@pytest.mark.looptime`` test; intervals are exact binary
fractions, so due and start times are compared with ``==``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from service.records import Outcome, SchedulePolicy, TickRecord
from service.triggers import (
    Any,
    At,
    Cron,
    Delay,
    Every,
    Forever,
    Once,
    OnShutDown,
    OnStartUp,
    schedule_for,
)
from service.triggers_hooks import TriggeredTask, TriggerSet, run_shutdown, run_startup


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_every_is_a_fixed_grid_with_phase_and_immediate() -> None:
    records: list[TickRecord] = []
    timer = Every(1.0, phase=0.25, immediate=True).timer(
        lambda: None, name="hb", observers=[records.append]
    )
    assert timer.schedule_policy is SchedulePolicy.FIXED and timer.interval == 1.0
    timer.start()
    await asyncio.sleep(3.5)
    timer.stop()
    assert [r.due for r in records] == [0.25, 1.25, 2.25, 3.25]
    assert [r.started for r in records] == [0.25, 1.25, 2.25, 3.25]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_every_skips_and_counts_when_a_tick_overruns() -> None:
    records: list[TickRecord] = []

    async def slow() -> None:
        await asyncio.sleep(2.5 if not records else 0.0)

    timer = Every("1s").timer(slow, name="hb", observers=[records.append])
    timer.start()
    await asyncio.sleep(6.5)
    timer.stop()
    assert [(r.due, r.started, r.skipped_before) for r in records] == [
        (1.0, 1.0, 0),
        (4.0, 4.0, 2),
        (5.0, 5.0, 0),
        (6.0, 6.0, 0),
    ]
    assert records[0].overrun and timer.statistics().skipped == 2


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_delay_waits_after_each_callback() -> None:
    records: list[TickRecord] = []

    async def poll() -> None:
        await asyncio.sleep(0.5)

    timer = Delay(1.0).timer(poll, name="poll", observers=[records.append])
    assert timer.schedule_policy is SchedulePolicy.DELAY
    timer.start()
    await asyncio.sleep(5.0)
    timer.stop()
    await timer.wait_stopped()
    assert [r.due for r in records] == [1.0, 2.5, 4.0]
    assert [r.finished for r in records] == [1.5, 3.0, 4.5]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_delay_immediate_starts_at_once() -> None:
    records: list[TickRecord] = []
    timer = Delay(timedelta(seconds=2), immediate=True).timer(
        lambda: None, name="poll", observers=[records.append]
    )
    timer.start()
    await asyncio.sleep(4.5)
    timer.stop()
    assert [r.due for r in records] == [0.0, 2.0, 4.0]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_once_after_a_delay_fires_once_and_stops() -> None:
    records: list[TickRecord] = []
    timer = Once(2.5).timer(lambda: None, name="once", observers=[records.append])
    timer.start()
    await asyncio.sleep(10.0)
    assert [r.due for r in records] == [2.5]
    assert not timer.running
    await timer.wait_stopped()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_once_with_zero_delay_fires_at_start() -> None:
    records: list[TickRecord] = []
    timer = Once(0).timer(lambda: None, name="once", observers=[records.append])
    await asyncio.sleep(1.0)
    timer.start()
    await asyncio.sleep(1.0)
    assert [r.due for r in records] == [1.0]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_any_fires_once_per_instant() -> None:
    records: list[TickRecord] = []
    timer = Any(Every(1.0), Every(1.5)).timer(lambda: None, name="any", observers=[records.append])
    timer.start()
    await asyncio.sleep(6.25)
    timer.stop()
    assert [r.due for r in records] == [1.0, 1.5, 2.0, 3.0, 4.0, 4.5, 5.0, 6.0]
    assert [r.started for r in records] == [1.0, 1.5, 2.0, 3.0, 4.0, 4.5, 5.0, 6.0]
    assert [r.number for r in records] == [1, 2, 3, 4, 5, 6, 7, 8]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_any_never_overlaps_and_counts_skips() -> None:
    records: list[TickRecord] = []
    running = 0

    async def slow() -> None:
        nonlocal running
        running += 1
        assert running == 1
        await asyncio.sleep(1.2)
        running -= 1

    timer = Any(Every(1.0), Every(1.5)).timer(slow, name="any", observers=[records.append])
    timer.start()
    await asyncio.sleep(6.5)
    timer.stop()
    await timer.wait_stopped()
    assert [(r.due, r.skipped_before) for r in records] == [(1.0, 0), (3.0, 2), (4.5, 1), (6.0, 1)]
    assert [r.overrun for r in records] == [True, True, True, True]
    assert all(r.started == r.due for r in records)
    assert timer.statistics().skipped == 4


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_any_of_every_and_delay() -> None:
    records: list[TickRecord] = []
    timer = Any(Every(2.0), Delay(0.75)).timer(lambda: None, name="mix", observers=[records.append])
    timer.start()
    await asyncio.sleep(4.0)
    timer.stop()
    assert [r.due for r in records] == [0.75, 1.5, 2.0, 2.75, 3.5, 4.0]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_any_counts_an_instant_shared_by_members_as_one_skipped_tick() -> None:
    """Any(Every(2), Every(3)) with a callback busy from 2 to 13: the instants 3, 4, 6, 8, 9,
    10 and 12 pass; 6 and 12 are due for both members but would have been one tick each."""
    records: list[TickRecord] = []

    async def job() -> None:
        if not records:
            await asyncio.sleep(11.0)

    timer = Any(Every(2.0), Every(3.0)).timer(job, name="x", observers=[records.append])
    timer.start()
    await asyncio.sleep(14.5)
    timer.stop()
    assert [(r.due, r.skipped_before) for r in records] == [(2.0, 0), (14.0, 7)]
    assert timer.statistics().skipped == 7


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_forever_yields_to_the_loop_between_runs() -> None:
    """A callback that never waits still lets other tasks run between its runs."""
    runs = 0

    def spin() -> None:
        nonlocal runs
        runs += 1

    timer = Forever().timer(spin, name="spin")
    timer.start()
    seen: list[int] = []
    for _ in range(100):
        await asyncio.sleep(0)
        seen.append(runs)
    timer.stop()
    await timer.wait_stopped()
    assert seen[-1] >= 40  # it ran many times ...
    assert len(set(seen)) >= 40  # ... interleaved with the other task, not in one burst
    assert timer.statistics().ticks == runs


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_forever_runs_back_to_back_beside_a_heartbeat() -> None:
    forever: list[TickRecord] = []
    beats: list[TickRecord] = []

    async def read_line() -> None:
        await asyncio.sleep(0.25)  # stands for awaiting a line from a serial port

    reader = Forever().timer(read_line, name="reader", observers=[forever.append])
    heartbeat = Every(1.0).timer(lambda: None, name="hb", observers=[beats.append])
    reader.start()
    heartbeat.start()
    await asyncio.sleep(3.1)
    reader.stop()
    heartbeat.stop()
    await reader.wait_stopped()
    assert [r.started for r in forever][:5] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert len(forever) == 13
    assert all(r.lateness == 0.0 for r in forever)
    assert [r.started for r in beats] == [1.0, 2.0, 3.0]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_errors_are_counted_and_the_trigger_goes_on() -> None:
    def fail() -> None:
        raise RuntimeError("device said no")

    records: list[TickRecord] = []
    timer = Any(Every(1.0), Once(1.5)).timer(fail, name="f", observers=[records.append])
    timer.start()
    await asyncio.sleep(3.0)
    timer.stop()
    assert [r.due for r in records] == [1.0, 1.5, 2.0, 3.0]
    assert all(r.outcome is Outcome.ERROR for r in records)
    assert timer.statistics().errors == 4


def test_triggers_are_frozen_values() -> None:
    assert Every(1) == Every(1.0) and hash(Every(1)) == hash(Every(1.0))
    assert Every("250ms").interval == 0.25
    assert At("07:30", weekdays=["mon", "Friday"]) == At("7:30", weekdays=[4, 0])
    assert Any(Every(1), Any(Every(2), Forever())).triggers == (Every(1), Every(2), Forever())
    with pytest.raises(dataclasses.FrozenInstanceError):
        Every(1).interval = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Every(0), "Every interval must be > 0"),
        (lambda: Every(float("nan")), "Every interval must be finite"),
        (lambda: Every(1, phase=1), "phase must be >= 0 and < the interval"),
        (lambda: Delay(-1), "Delay interval must be > 0"),
        (lambda: Once(), "exactly one of delay= or at="),
        (lambda: Once(1, at=datetime(2024, 1, 1, tzinfo=UTC)), "exactly one"),
        (lambda: Once(at=datetime(2024, 1, 1)), "aware datetime"),
        (lambda: At("7"), "'7'"),
        (lambda: At("24:00"), "'24:00' is out of range"),
        (lambda: At("07:30", weekdays="xyz"), "unknown weekday 'xyz'"),
        (lambda: At("07:30", weekdays=7), "0-6"),
        (lambda: At("07:30", weekdays=[]), "at least one day"),
        (lambda: At("07:30", tz="Mars/Olympus"), "At tz: unknown time zone 'Mars/Olympus'"),
        (lambda: At("07:30", tz=5), "At tz must be an IANA zone name"),
        (lambda: Cron("* * * * *", tz=5), "Cron tz must be an IANA zone name"),
        (lambda: Cron("* * * * *", tz="Nowhere"), "Cron tz: unknown time zone 'Nowhere'"),
        (lambda: Cron("61 * * * *"), "invalid cron expression '61 * * * *'"),
        (lambda: Cron("* * *"), "invalid cron expression '* * *'"),
        (lambda: Cron("0 0 30 2 *"), "invalid cron expression '0 0 30 2 *'"),
        (lambda: Cron("bogus"), "invalid cron expression 'bogus'"),
        (lambda: Any(), "at least one trigger"),
    ],
)
def test_invalid_triggers_are_refused_naming_the_value(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        build()  # type: ignore[operator]
    assert message in str(info.value)


def test_markers_have_no_schedule() -> None:
    with pytest.raises(TypeError, match="run_startup"):
        schedule_for(OnStartUp())
    with pytest.raises(TypeError, match="run_shutdown"):
        OnShutDown().timer(lambda: None)
    with pytest.raises(TypeError, match="takes triggers"):
        Any(Every(1), "daily")  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_trigger_set_runs_hooks_around_the_timers() -> None:
    events: list[tuple[str, float]] = []
    loop = asyncio.get_running_loop()

    def note(what: str) -> object:
        return lambda: events.append((what, loop.time()))

    async def slow_start() -> None:
        await asyncio.sleep(0.5)
        events.append(("connect", loop.time()))

    def broken() -> None:
        raise OSError("port busy")

    tasks = TriggerSet()
    assert tasks.add(OnStartUp(), slow_start, name="dev/connect") is None
    assert tasks.add(OnStartUp(), broken, name="dev/broken") is None
    tasks.add(Every(1.0), note("beat"), name="dev/beat")  # type: ignore[arg-type]
    tasks.add(Any(OnStartUp(), Every(2.0)), note("sync"), name="dev/sync")  # type: ignore[arg-type]
    tasks.add(OnShutDown(), note("bye"), name="dev/bye")  # type: ignore[arg-type]
    assert [t.name for t in tasks.timers] == ["dev/beat", "dev/sync"]
    failures = await tasks.start()
    assert [(f.name, type(f.error)) for f in failures] == [("dev/broken", OSError)]
    await asyncio.sleep(2.25)
    assert await tasks.stop() == []
    # hooks first (the timers start after the 0.5 s connect), shut-down hooks last;
    # two timers due at one instant may run in either order
    assert sorted(events, key=lambda event: (event[1], event[0])) == [
        ("connect", 0.5),
        ("sync", 0.5),
        ("beat", 1.5),
        ("beat", 2.5),
        ("sync", 2.5),
        ("bye", 2.75),
    ]
    assert not any(timer.running for timer in tasks.timers)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_hooks_are_bounded_by_a_timeout() -> None:
    async def hang() -> None:
        await asyncio.sleep(3600)

    ran: list[str] = []
    tasks = [
        TriggeredTask(OnShutDown(), hang, "dev/hang"),
        TriggeredTask(Any(OnShutDown(), Every(1)), lambda: ran.append("flush"), "dev/flush"),
        TriggeredTask(OnStartUp(), lambda: ran.append("start"), "dev/start"),
    ]
    loop = asyncio.get_running_loop()
    failures = await run_shutdown(tasks, hook_timeout=2.0)
    assert loop.time() == 2.0
    assert [(f.name, type(f.error)) for f in failures] == [("dev/hang", TimeoutError)]
    assert ran == ["flush"]
    assert await run_startup(tasks) == [] and ran == ["flush", "start"]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_trigger_set_stop_cancels_callbacks_that_outlive_the_deadline() -> None:
    records: list[TickRecord] = []

    async def stuck() -> None:
        await asyncio.sleep(3600)

    tasks = TriggerSet(stop_timeout=5.0)
    tasks.add(Every(1.0), stuck, name="dev/stuck", observers=[records.append])
    await tasks.start()
    await asyncio.sleep(2.0)
    await tasks.stop()
    assert asyncio.get_running_loop().time() == 7.0
    assert [(r.due, r.outcome) for r in records] == [(1.0, Outcome.CANCELLED)]


def test_timer_repr_names_the_schedule_when_there_is_no_interval() -> None:
    heartbeat = Every(1.5).timer(lambda: None, name="hb")
    assert repr(heartbeat) == "<TriggerTimer 'hb' FIXED 1.5s stopped>"
    daily = At("07:30").timer(lambda: None, name="daily")
    assert repr(daily) == "<TriggerTimer 'daily' FIXED WallClockSchedule stopped>"
