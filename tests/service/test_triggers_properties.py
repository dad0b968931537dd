"""Property tests: for random triggers, fire times are strictly increasing and never early.

The schedules are driven the way the engine drives them (``first``, then ``following`` and
``catch_up`` after each callback) without an event loop: a tick starts at its due time or when
the previous one finished, whichever is later, and runs for a random duration.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from cronsim import CronSim
from hypothesis import given, settings
from hypothesis import strategies as st

from service.schedule import Schedule, Slot
from service.triggers import Any, At, Cron, Delay, Every, Trigger
from service.triggers_schedules import WallClockSchedule

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
CRONS = ["*/15 * * * *", "0 3 * * 1-5", "30 2 * * *", "0 0 1 * *", "5 4 * * sun", "0 */6 * * *"]
AFTER = st.datetimes(datetime(2000, 1, 1), datetime(2040, 1, 1), timezones=st.just(UTC))


class SimClock:
    """A wall clock that reads ``base + now`` seconds; the simulation sets ``now``."""

    def __init__(self, base: datetime) -> None:
        self.base = base
        self.now = 0.0

    def __call__(self) -> datetime:
        return self.base + timedelta(seconds=self.now)


def drive(
    schedule: Schedule, start: float, durations: list[float], clock: SimClock | None = None
) -> list[tuple[Slot, float, float]]:
    """Run the schedule like the engine; returns (slot, started, finished) per tick."""
    ticks: list[tuple[Slot, float, float]] = []
    if clock is not None:
        clock.now = start
    slot = schedule.first(start)
    finished = start
    for duration in durations:
        if slot is None:
            break
        started = max(slot.due, finished)
        finished = started + duration
        ticks.append((slot, started, finished))
        if clock is not None:
            clock.now = finished
        following = schedule.following(slot, started, finished)
        if following is None:
            break
        slot, _ = schedule.catch_up(following, finished)
    return ticks


def assert_monotonic(ticks: list[tuple[Slot, float, float]]) -> None:
    for (before, _, finished), (after, started, _) in itertools.pairwise(ticks):
        assert after.due > before.due
        assert started >= after.due
        assert started >= finished  # no overlap


intervals = st.floats(1e-3, 1e4, allow_nan=False, allow_infinity=False)
durations = st.lists(st.floats(0, 5.0), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(intervals, st.floats(0, 0.999), st.booleans(), st.floats(0, 1e6), durations)
def test_every_fire_times_increase_and_are_never_early(
    interval: float, phase: float, immediate: bool, start: float, lengths: list[float]
) -> None:
    trigger = Every(interval, phase=phase * interval, immediate=immediate)
    ticks = drive(trigger.schedule(), start, [d * interval for d in lengths])
    assert_monotonic(ticks)
    assert ticks[0][0].due >= start


@settings(max_examples=200, deadline=None)
@given(intervals, st.floats(0, 1e6), durations)
def test_delay_fire_times_increase_and_are_never_early(
    interval: float, start: float, lengths: list[float]
) -> None:
    ticks = drive(Delay(interval).schedule(), start, lengths)
    assert_monotonic(ticks)
    for (_, _, finished), (slot, _, _) in itertools.pairwise(ticks):
        assert slot.due == finished + interval


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(intervals, st.floats(0, 0.999)), min_size=1, max_size=4),
       st.floats(0, 1e5), durations)  # fmt: skip
def test_any_fires_once_per_instant_in_order(
    members: list[tuple[float, float]], start: float, lengths: list[float]
) -> None:
    triggers: list[Trigger] = [Every(i, phase=p * i) for i, p in members]
    ticks = drive(Any(*triggers).schedule(), start, lengths)
    assert_monotonic(ticks)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
    st.none() | st.frozensets(st.integers(0, 6), min_size=1),
    st.sampled_from(ZONES),
    AFTER,
)
def test_at_next_fire_is_later_and_on_the_right_day(
    hour: int, minute: int, second: int, weekdays: frozenset[int] | None, zone: str, after: datetime
) -> None:
    trigger = At(f"{hour:02}:{minute:02}:{second:02}", weekdays=weekdays, tz=zone)
    when = after
    for _ in range(10):
        fire = trigger.next_fire(when)
        assert when < fire <= when + timedelta(days=8)
        local = fire.astimezone(ZoneInfo(zone))
        assert weekdays is None or local.weekday() in weekdays
        if (local.hour, local.minute, local.second) != (hour, minute, second):
            # only in a spring-forward gap: then it fires at the jump, just after the gap
            assert (fire - timedelta(seconds=1)).astimezone(ZoneInfo(zone)).utcoffset() != (
                local.utcoffset()
            )
        when = fire


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(CRONS), st.sampled_from(ZONES), AFTER)
def test_cron_next_fire_is_strictly_increasing(expression: str, zone: str, after: datetime) -> None:
    trigger = Cron(expression, tz=zone)
    when = after
    for _ in range(10):
        fire = trigger.next_fire(when)
        assert fire is not None and fire > when
        when = fire


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(CRONS), st.sampled_from(ZONES), AFTER, st.floats(0, 1e5),
       st.lists(st.floats(0, 4000), min_size=1, max_size=30))  # fmt: skip
def test_wall_clock_schedule_never_fires_before_the_wall_time(
    expression: str, zone: str, base: datetime, start: float, lengths: list[float]
) -> None:
    clock = SimClock(base - timedelta(seconds=start))
    trigger = Cron(expression, tz=zone)
    schedule = trigger.schedule(wall_clock=clock)
    assert isinstance(schedule, WallClockSchedule)
    fires: list[datetime] = []
    ticks: list[tuple[Slot, float, float]] = []
    clock.now = start
    slot = schedule.first(start)
    finished = start
    for duration in lengths:
        assert slot is not None and schedule.pending is not None
        fire = schedule.pending
        started = max(slot.due, finished)
        assert clock.base + timedelta(seconds=started) >= fire  # never early on the wall clock
        fires.append(fire)
        finished = started + duration
        ticks.append((slot, started, finished))
        clock.now = finished
        following = schedule.following(slot, started, finished)
        assert following is not None
        slot, _ = schedule.catch_up(following, finished)
    assert_monotonic(ticks)
    assert all(a < b for a, b in itertools.pairwise(fires))


# Cron against an oracle that walks real time minute by minute, written from the documented rules
# alone: real-time expressions fire at every instant whose local time matches; fixed-time ones
# (minute and hour fields not starting with "*") fire at the first occurrence of a matching local
# time, and at the instant the clocks jump for matching local times the jump skips.
WILD_CRONS = ["*/15 * * * *", "0 * * * *", "30 * * * *", "*/7 * * * *", "0 */7 * * *",
              "* 2 * * *", "*/20 1-3 * * *", "10 */2 * * *", "0 */15 * * * *"]  # fmt: skip
FIXED_CRONS = ["30 2 * * *", "0,30 2 * * *", "0 2-3 * * *", "59 1 * * *", "0 0 * * *",
               "15 3 * * 1-5", "0 30 2 * * *", "45 1,2 * * *"]  # fmt: skip
DST_DAYS = {
    "Europe/Berlin": [datetime(2024, 3, 31), datetime(2024, 10, 27)],
    "America/New_York": [datetime(2024, 3, 10), datetime(2024, 11, 3)],
    "Australia/Lord_Howe": [datetime(2024, 4, 7), datetime(2024, 10, 6)],
}


def _local_matches(expression: str, local: datetime) -> bool:
    """Whether naive local time ``local`` matches ``expression`` (cronsim as a plain matcher)."""
    return next(CronSim(expression, local - timedelta(seconds=1))) == local


def _oracle_fires(expression: str, zone: ZoneInfo, begin: datetime, hours: int) -> list[datetime]:
    fixed = expression in FIXED_CRONS
    fires = []
    instant = begin
    for _ in range(hours * 60):
        previous, instant = instant, instant + timedelta(minutes=1)
        local = instant.astimezone(zone)
        naive = local.replace(tzinfo=None)
        if not fixed:
            if _local_matches(expression, naive):
                fires.append(instant)
            continue
        first_occurrence = naive.replace(tzinfo=zone, fold=0).astimezone(UTC) == instant
        if _local_matches(expression, naive) and first_occurrence:
            fires.append(instant)
            continue
        jumped = previous.astimezone(zone).replace(tzinfo=None) + timedelta(minutes=1)
        while jumped < naive:  # local times the clocks skipped on the way to this minute
            if _local_matches(expression, jumped):
                fires.append(instant)
                break
            jumped += timedelta(minutes=1)
    return fires


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(WILD_CRONS + FIXED_CRONS),
    st.sampled_from(sorted(DST_DAYS)),
    st.integers(0, 1),
    st.integers(-20 * 60, 10 * 60),
)
def test_cron_matches_a_minute_by_minute_oracle_across_dst(
    expression: str, zone_name: str, which: int, minutes: int
) -> None:
    zone = ZoneInfo(zone_name)
    begin = (DST_DAYS[zone_name][which] + timedelta(minutes=minutes)).replace(tzinfo=UTC)
    expected = _oracle_fires(expression, zone, begin, hours=30)
    trigger = Cron(expression, tz=zone)
    got: list[datetime] = []
    when = begin
    while len(got) < len(expected):
        fire = trigger.next_fire(when)
        assert fire is not None
        got.append(fire)
        when = fire
    assert got == expected
