"""Wall-clock triggers on virtual time: At, Cron, Once(at), DST days, wall-clock steps.

The wall clock is injected: ``MovableClock`` reads ``base + loop.time() + stepped`` and a test
moves it with ``step()`` the way NTP or an RTC-less boot does. Loop time starts at 0.0 and every
expected due time is whole seconds, so values are compared with ``==``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from service.records import TickRecord
from service.triggers import Any, At, Cron, Every, Once, Trigger, resolve_local
from service.triggers_schedules import TriggerTimer

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
MONDAY = datetime(2024, 5, 6, 12, 0, tzinfo=UTC)  # a Monday, noon UTC


class MovableClock:
    """A wall clock that runs with loop time and can be stepped."""

    def __init__(self, base: datetime) -> None:
        self.base = base
        self.stepped = 0.0

    def __call__(self) -> datetime:
        loop_now = asyncio.get_running_loop().time()
        return self.base + timedelta(seconds=loop_now + self.stepped)

    def step(self, seconds: float) -> None:
        self.stepped += seconds


def run(
    trigger: Trigger, clock: MovableClock, **options: object
) -> tuple[TriggerTimer, list[TickRecord], list[datetime]]:
    """A started timer for ``trigger``, its tick records and the wall time of each run."""
    records: list[TickRecord] = []
    walls: list[datetime] = []
    timer = trigger.timer(
        lambda: walls.append(clock()),
        name="t",
        wall_clock=clock,
        observers=[records.append],
        **options,  # type: ignore[arg-type]
    )
    timer.start()
    return timer, records, walls


async def sleep_until(when: float) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(when - loop.time())


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc, arg-type]


# -- At: daily, DST ----------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_at_daily_follows_local_time_across_spring_forward() -> None:
    clock = MovableClock(utc(2024, 3, 29, 12))
    timer, records, walls = run(At("07:30", tz="Europe/Berlin"), clock)
    await asyncio.sleep(3 * 86400)
    timer.stop()
    # 07:30 CET = 06:30 UTC, then 07:30 CEST = 05:30 UTC: 23 hours apart across the change
    assert [r.due for r in records] == [66600.0, 149400.0, 235800.0]
    assert [r.started for r in records] == [66600.0, 149400.0, 235800.0]
    assert walls == [utc(2024, 3, 30, 6, 30), utc(2024, 3, 31, 5, 30), utc(2024, 4, 1, 5, 30)]


@pytest.mark.parametrize(
    ("zone", "base", "time_of_day", "expected"),
    [
        # spring forward: 02:30 does not exist; fires when the clocks jump (03:00 local)
        (
            "Europe/Berlin",
            utc(2024, 3, 30, 12),
            "02:30",
            [utc(2024, 3, 31, 1), utc(2024, 4, 1, 0, 30)],
        ),
        (
            "America/New_York",
            utc(2024, 3, 9, 12),
            "02:30",
            [utc(2024, 3, 10, 7), utc(2024, 3, 11, 6, 30)],
        ),
        # fall back: 02:30 (Berlin) / 01:30 (New York) happen twice; fires once, the first time
        (
            "Europe/Berlin",
            utc(2024, 10, 26, 12),
            "02:30",
            [utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30)],
        ),
        (
            "America/New_York",
            utc(2024, 11, 2, 12),
            "01:30",
            [utc(2024, 11, 3, 5, 30), utc(2024, 11, 4, 6, 30)],
        ),
    ],
)
@pytest.mark.asyncio
@pytest.mark.looptime
async def test_at_on_dst_days(
    zone: str, base: datetime, time_of_day: str, expected: list[datetime]
) -> None:
    clock = MovableClock(base)
    timer, records, walls = run(At(time_of_day, tz=zone), clock)
    await asyncio.sleep(2 * 86400)
    timer.stop()
    assert walls == expected
    assert [r.due for r in records] == [(e - base).total_seconds() for e in expected]
    assert all(r.started == r.due for r in records)


def test_resolve_local_rules() -> None:
    assert resolve_local(date(2024, 3, 31), time(2, 0), BERLIN) == utc(2024, 3, 31, 1)
    assert resolve_local(date(2024, 3, 31), time(2, 59, 59), BERLIN) == utc(2024, 3, 31, 1)
    assert resolve_local(date(2024, 3, 31), time(3, 0), BERLIN) == utc(2024, 3, 31, 1)
    assert resolve_local(date(2024, 10, 27), time(2, 0), BERLIN) == utc(2024, 10, 27, 0)
    assert resolve_local(date(2024, 10, 27), time(3, 0), BERLIN) == utc(2024, 10, 27, 2)
    assert resolve_local(date(2024, 3, 10), time(2, 15), NEW_YORK) == utc(2024, 3, 10, 7)
    assert resolve_local(date(2024, 11, 3), time(1, 0), NEW_YORK) == utc(2024, 11, 3, 5)


# -- At: weekdays ----------------------------------------------------------------------------


@pytest.mark.parametrize("start", range(7))
@pytest.mark.parametrize("target", range(7))
def test_at_weekday_from_every_start_weekday(start: int, target: int) -> None:
    """Every start weekday x target weekday: the next such day, never another one."""
    after = MONDAY + timedelta(days=start)  # noon: 07:30 on the start day has passed
    days_ahead = (target - start) % 7 or 7
    expected = (after + timedelta(days=days_ahead)).replace(hour=7, minute=30)
    trigger = At("07:30", weekdays=[target])
    assert trigger.next_fire(after) == expected
    assert trigger.next_fire(expected) == expected + timedelta(days=7)
    early = after.replace(hour=6)  # before 07:30 on the start day
    expected_early = early.replace(hour=7, minute=30) + timedelta(days=(target - start) % 7)
    assert trigger.next_fire(early) == expected_early


@pytest.mark.parametrize("start", range(7))
@pytest.mark.asyncio
@pytest.mark.looptime
async def test_at_weekday_timers_from_every_start_weekday(start: int) -> None:
    names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    clock = MovableClock(MONDAY + timedelta(days=start))
    runs = [run(At("07:30", weekdays=name), clock, check_every=3600.0) for name in names]
    await asyncio.sleep(15 * 86400)
    for target, (timer, records, walls) in enumerate(runs):
        timer.stop()
        first = ((target - start) % 7 or 7) * 86400.0 - 4.5 * 3600
        expected = [
            due for due in (first, first + 7 * 86400, first + 14 * 86400) if due < 15 * 86400
        ]
        assert [r.due for r in records] == expected
        assert {w.weekday() for w in walls} == {target}
        assert {(w.hour, w.minute, w.second) for w in walls} == {(7, 30, 0)}


def test_at_weekday_names_and_time_objects() -> None:
    assert At("07:30", weekdays="Mon").weekdays == frozenset({0})
    assert At("07:30", weekdays=("sat", "SUNDAY")).weekdays == frozenset({5, 6})
    assert At(time(7, 30, 15)).time_of_day == time(7, 30, 15)
    assert At("07:30:15").next_fire(MONDAY) == utc(2024, 5, 7, 7, 30, 15)


# -- Cron ------------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_cron_every_quarter_hour() -> None:
    clock = MovableClock(utc(2024, 5, 6, 10, 7))
    timer, records, walls = run(Cron("*/15 * * * *"), clock)
    await asyncio.sleep(3200)
    timer.stop()
    assert [r.due for r in records] == [480.0, 1380.0, 2280.0, 3180.0]
    assert walls == [utc(2024, 5, 6, 10, m) for m in (15, 30, 45)] + [utc(2024, 5, 6, 11)]


@pytest.mark.parametrize(
    ("zone", "base", "expected"),
    [
        (
            "Europe/Berlin",
            utc(2024, 3, 28, 12),  # Thursday; DST starts Sunday 31st
            [utc(2024, 3, 29, 2), utc(2024, 4, 1, 1), utc(2024, 4, 2, 1)],
        ),
        (
            "America/New_York",
            utc(2024, 3, 7, 12),  # Thursday; DST starts Sunday 10th
            [utc(2024, 3, 8, 8), utc(2024, 3, 11, 7), utc(2024, 3, 12, 7)],
        ),
    ],
)
@pytest.mark.asyncio
@pytest.mark.looptime
async def test_cron_weekdays_at_three_across_dst(
    zone: str, base: datetime, expected: list[datetime]
) -> None:
    clock = MovableClock(base)
    timer, records, walls = run(Cron("0 3 * * 1-5", tz=zone), clock, check_every=600.0)
    await asyncio.sleep(5 * 86400 - 3600)
    timer.stop()
    assert walls == expected
    assert [r.due for r in records] == [(e - base).total_seconds() for e in expected]


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York"])
def test_cron_and_at_agree_on_every_day_of_a_year(zone: str) -> None:
    """``At("02:30")`` and ``Cron("30 2 * * *")`` follow the same DST rules (both days)."""
    at, cron = At("02:30", tz=zone), Cron("30 2 * * *", tz=zone)
    a = c = utc(2024, 1, 1)
    for _ in range(366):
        a, c = at.next_fire(a), cron.next_fire(c)  # type: ignore[assignment]
        assert a == c


def test_cron_dst_days() -> None:
    cron = Cron("30 2 * * *", tz="Europe/Berlin")
    assert cron.next_fire(utc(2024, 3, 30, 12)) == utc(2024, 3, 31, 1)  # gap: at the jump
    assert cron.next_fire(utc(2024, 10, 26, 12)) == utc(2024, 10, 27, 0, 30)  # twice: first
    assert cron.next_fire(utc(2024, 10, 27, 0, 30)) == utc(2024, 10, 28, 1, 30)
    hourly = Cron("0 * * * *", tz="Europe/Berlin")  # follows UTC instants through fall-back
    fires = [utc(2024, 10, 26, 23)]
    for _ in range(4):
        fires.append(hourly.next_fire(fires[-1]))  # type: ignore[arg-type]
    assert fires[1:] == [utc(2024, 10, 27, h) for h in (0, 1, 2, 3)]


# -- Once(at=...) ----------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_once_at_a_wall_clock_time() -> None:
    clock = MovableClock(MONDAY)
    timer, records, walls = run(Once(at=MONDAY + timedelta(seconds=100)), clock)
    await asyncio.sleep(1000)
    assert [r.due for r in records] == [100.0]
    assert walls == [MONDAY + timedelta(seconds=100)]
    assert not timer.running


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_once_at_a_past_time_never_fires() -> None:
    clock = MovableClock(MONDAY)
    timer, records, _ = run(Once(at=MONDAY - timedelta(seconds=1)), clock)
    assert not timer.running
    await asyncio.sleep(100)
    await timer.wait_stopped()
    assert records == []


# -- wall-clock steps ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "expected_dues", "expected_walls"),
    [
        # a day forward: the 07:30 that was jumped over runs once, at the next check (3660)
        (86400.0, [3660.0, 70200.0], [utc(2024, 5, 7, 13, 1), utc(2024, 5, 8, 7, 30)]),
        # 30 h forward
        (30 * 3600.0, [3660.0, 48600.0], [utc(2024, 5, 7, 19, 1), utc(2024, 5, 8, 7, 30)]),
        # three days forward: still one run; the two other jumped-over 07:30s never run
        (3 * 86400.0, [3660.0, 70200.0], [utc(2024, 5, 9, 13, 1), utc(2024, 5, 10, 7, 30)]),
        # 30 h back: Sunday 07:30 comes in 29 minutes, not after the old Tuesday 07:30
        (-30 * 3600.0, [5400.0, 91800.0], [utc(2024, 5, 5, 7, 30), utc(2024, 5, 6, 7, 30)]),
    ],
)
@pytest.mark.asyncio
@pytest.mark.looptime
async def test_at_recomputes_after_a_wall_clock_step(
    step: float, expected_dues: list[float], expected_walls: list[datetime]
) -> None:
    clock = MovableClock(MONDAY)
    timer, records, walls = run(At("07:30"), clock)
    await sleep_until(3630.0)
    clock.step(step)
    await sleep_until(expected_dues[-1] + 10)
    timer.stop()
    assert [r.due for r in records] == expected_dues
    assert [r.started for r in records] == expected_dues
    assert walls == expected_walls
    assert timer.wall_clock_steps == 1
    assert [r.skipped_before for r in records] == [0, 0]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_cron_step_forward_runs_once_then_resumes_on_the_new_time() -> None:
    clock = MovableClock(utc(2024, 5, 6, 10, 7))
    timer, records, walls = run(Cron("*/15 * * * *"), clock)
    await sleep_until(3630.0)  # 11:07:30; 11:15 is armed at 4080
    clock.step(86400.0)
    await sleep_until(4500.0)
    timer.stop()
    assert [r.due for r in records] == [480.0, 1380.0, 2280.0, 3180.0, 3660.0, 4080.0]
    assert walls[-2:] == [utc(2024, 5, 7, 11, 8), utc(2024, 5, 7, 11, 15)]
    # 11:15 of day 1 ran late (once); day 1 11:30 ... day 2 11:00 never passed in loop time:
    # not run, not counted
    assert [r.skipped_before for r in records] == [0] * 6
    # the late run took no time: not an overrun (the times the step jumped never passed)
    assert not any(r.overrun for r in records) and timer.statistics().overruns == 0


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_small_backward_step_does_not_repeat_a_fire_time() -> None:
    clock = MovableClock(MONDAY)
    timer, records, walls = run(At("07:30"), clock)
    await sleep_until(70230.0)  # Tuesday 07:30 ran at 70200
    clock.step(-120.0)  # NTP: back to 07:28:30
    await sleep_until(160000.0)
    timer.stop()
    assert [r.due for r in records] == [70200.0, 156720.0]
    assert walls == [utc(2024, 5, 7, 7, 30), utc(2024, 5, 8, 7, 30)]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_once_at_follows_a_backward_step() -> None:
    clock = MovableClock(MONDAY)
    timer, records, walls = run(Once(at=MONDAY + timedelta(seconds=100)), clock)
    await sleep_until(30.0)
    clock.step(-3600.0)
    await sleep_until(4000.0)
    assert [r.due for r in records] == [3700.0]
    assert walls == [MONDAY + timedelta(seconds=100)]
    assert not timer.running


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_once_at_jumped_over_by_a_forward_step_runs_once() -> None:
    clock = MovableClock(MONDAY)
    timer, records, _ = run(Once(at=MONDAY + timedelta(seconds=1000)), clock)
    await sleep_until(30.0)
    clock.step(86400.0)
    await sleep_until(5000.0)
    assert [r.due for r in records] == [60.0]
    assert not timer.running


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_boot_in_1970_then_ntp_sync() -> None:
    """A gateway without an RTC battery boots at the epoch and syncs 30 s later."""
    clock = MovableClock(datetime(1970, 1, 1, tzinfo=UTC))
    timer, records, walls = run(At("07:30", tz="Europe/Berlin"), clock)
    await sleep_until(30.0)
    clock.step((MONDAY - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())  # wall = MONDAY
    await sleep_until(2 * 86400.0)
    timer.stop()
    # the 1970 fire time counts as passed: it runs once at the first check after the sync,
    # then the schedule is on time (07:30 CEST = 05:30 UTC, Tuesday and Wednesday)
    assert walls == [MONDAY + timedelta(seconds=60), utc(2024, 5, 7, 5, 30), utc(2024, 5, 8, 5, 30)]
    assert [r.due for r in records] == [60.0, 63000.0, 149400.0]
    assert [r.skipped_before for r in records] == [0, 0, 0]
    assert not any(r.overrun for r in records) and timer.statistics().overruns == 0
    assert timer.wall_clock_steps == 1


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_step_during_a_callback_is_handled_when_it_finishes() -> None:
    clock = MovableClock(MONDAY)
    records: list[TickRecord] = []

    async def job() -> None:
        if not records:
            await asyncio.sleep(10)
            clock.step(-30 * 3600.0)

    timer = At("07:30").timer(job, name="t", wall_clock=clock, observers=[records.append])
    timer.start()
    await sleep_until(70200.0 + 86400.0)
    timer.stop()
    # Tuesday 07:30 ran (70200 .. 70210); the clock went back to Monday 01:30:10 meanwhile,
    # so the next run is the replayed Monday 07:30, 6 h later, not Wednesday 07:30
    assert [r.due for r in records] == [70200.0, 91800.0]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_fire_times_passed_while_a_callback_runs_are_skipped_and_counted() -> None:
    clock = MovableClock(utc(2024, 5, 6, 10, 7))
    records: list[TickRecord] = []

    async def job() -> None:
        await asyncio.sleep(150.0 if not records else 0.0)

    timer = Cron("* * * * *").timer(job, name="t", wall_clock=clock, observers=[records.append])
    timer.start()
    await sleep_until(310.0)
    timer.stop()
    assert [(r.due, r.finished, r.skipped_before) for r in records] == [
        (60.0, 210.0, 0),
        (240.0, 240.0, 2),  # 10:09 and 10:10 passed while 10:08 ran
        (300.0, 300.0, 0),
    ]
    assert records[0].overrun and timer.statistics().skipped == 2


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_any_mixes_wall_clock_and_loop_time_members_through_a_step() -> None:
    clock = MovableClock(MONDAY)
    timer, records, _ = run(Any(At("13:00"), Every(1000.0)), clock)
    await sleep_until(2500.0)
    clock.step(-3600.0)  # noticed at the check at 2520: wall 11:42, 13:00 is 78 min away
    await sleep_until(8000.0)
    timer.stop()
    # the Every grid is untouched by the re-plan; 13:00 moved from 3600 to 7200
    assert [r.due for r in records] == [1000.0 * n for n in range(1, 8)] + [7200.0, 8000.0]
    assert timer.wall_clock_steps == 1


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_any_keeps_a_fired_once_done_across_a_big_backward_step() -> None:
    """A standalone Once(at=T) runs once however the clock steps; inside Any it must too."""
    clock = MovableClock(MONDAY)
    fire = MONDAY + timedelta(seconds=100)
    timer, records, walls = run(Any(Once(at=fire), Every(7000.0)), clock)
    await sleep_until(200.0)
    clock.step(-2 * 3600.0)  # beyond REPEAT_GUARD: the wall-clock period is replayed
    await sleep_until(7700.0)
    timer.stop()
    assert walls.count(fire) == 1
    assert [r.due for r in records] == [100.0, 7000.0]
