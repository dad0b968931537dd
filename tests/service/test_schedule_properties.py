"""Property tests of the pure schedule arithmetic (no event loop).

The simulation below drives ``first / following / catch_up / overrun`` exactly as the timer
engine does (``Timer._complete``), with random callback durations and random loop stalls, and
checks the contract: due times on the grid, never early, no overlap, every elapsed grid point
either run or counted as skipped, the run one always the earliest due.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import DelaySchedule, FixedSchedule, Slot

intervals = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False, allow_infinity=False)
origins = st.floats(min_value=0.0, max_value=1e7, allow_nan=False, allow_infinity=False)
fractions = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
durations = st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=60)

PROPERTY = settings(max_examples=300, deadline=None)


@st.composite
def fixed_schedules(draw: st.DrawFn) -> FixedSchedule:
    interval = draw(intervals)
    phase = draw(fractions) * interval
    if phase >= interval:  # rounding of fraction * interval
        phase = 0.0
    return FixedSchedule(interval, phase, draw(st.booleans()))


@PROPERTY
@given(fixed_schedules(), origins, st.integers(min_value=0, max_value=10**7))
def test_fixed_due_is_origin_plus_phase_plus_n_intervals(
    schedule: FixedSchedule, origin: float, number: int
) -> None:
    assert schedule.due(origin, number) == origin + schedule.phase + number * schedule.interval


@PROPERTY
@given(fixed_schedules(), origins, st.integers(min_value=1, max_value=2000))
def test_fixed_following_never_accumulates(
    schedule: FixedSchedule, origin: float, steps: int
) -> None:
    slot = schedule.first(origin)
    assert slot.number == (0 if schedule.immediate else 1)
    assert slot.origin == origin
    first_number = slot.number
    for _ in range(steps):
        slot = schedule.following(slot, slot.due, slot.due)
    assert slot.number == first_number + steps
    assert slot.due == origin + schedule.phase + slot.number * schedule.interval


@PROPERTY
@given(fixed_schedules(), origins, st.floats(min_value=-10.0, max_value=1e6))
def test_first_number_at_or_after_is_exact(
    schedule: FixedSchedule, origin: float, offset_intervals: float
) -> None:
    when = origin + offset_intervals * schedule.interval
    number = schedule.first_number_at_or_after(origin, when)
    assert schedule.due(origin, number) >= when
    assert schedule.due(origin, number - 1) < when


@PROPERTY
@given(fixed_schedules(), origins, st.integers(0, 1000), st.floats(min_value=0.0, max_value=1e4))
def test_fixed_catch_up_lands_on_the_first_due_time_not_before_busy_until(
    schedule: FixedSchedule, origin: float, number: int, busy_intervals: float
) -> None:
    slot = Slot(number, schedule.due(origin, number), origin)
    busy_until = slot.due + (busy_intervals - 1.0) * schedule.interval
    caught, skipped = schedule.catch_up(slot, busy_until)
    assert caught.origin == origin
    assert caught.due == schedule.due(origin, caught.number)
    assert skipped == caught.number - slot.number >= 0
    if slot.due >= busy_until:
        assert (caught, skipped) == (slot, 0)
    else:
        assert caught.due >= busy_until
        assert schedule.due(origin, caught.number - 1) < busy_until


@dataclass
class Run:
    slot: Slot
    started: float
    finished: float
    skipped_before: int
    overrun: bool


def simulate_fixed(
    schedule: FixedSchedule, start: float, work: list[float], stalls: list[float]
) -> tuple[Slot, list[Run], int]:
    """Run ticks like the engine: start at max(due, loop free), then following + catch_up."""
    slot = schedule.first(start)
    loop_free = start
    runs: list[Run] = []
    total_skipped = 0
    pending_skipped = 0
    for duration, stall in zip(work, stalls, strict=False):
        started = max(slot.due, loop_free) + stall  # a busy loop starts the tick late
        finished = started + duration * schedule.interval
        runs.append(
            Run(slot, started, finished, pending_skipped, schedule.overrun(slot, started, finished))
        )
        following = schedule.following(slot, started, finished)
        slot, pending_skipped = schedule.catch_up(following, finished)
        total_skipped += pending_skipped
        loop_free = finished
    return slot, runs, total_skipped


@PROPERTY
@given(
    fixed_schedules(),
    origins,
    durations,
    st.lists(st.sampled_from([0.0, 0.0, 0.0, 0.3, 1.0, 2.7]), min_size=60, max_size=60),
)
def test_fixed_simulation_keeps_every_rule(
    schedule: FixedSchedule, start: float, work: list[float], stall_intervals: list[float]
) -> None:
    stalls = [s * schedule.interval for s in stall_intervals]
    next_slot, runs, total_skipped = simulate_fixed(schedule, start, work, stalls)
    first = schedule.first(start)
    previous: Run | None = None
    for run in runs:
        # On the grid, exactly.
        assert run.slot.due == start + schedule.phase + run.slot.number * schedule.interval
        # Never early.
        assert run.started >= run.slot.due
        if previous is not None:
            # No overlap.
            assert run.started >= previous.finished
            # Skipped: exactly the grid points strictly between two runs...
            assert run.skipped_before == run.slot.number - previous.slot.number - 1
            # ...all of which were due before the previous callback finished; the one that
            # runs is the first due time at or after it (back on the original grid).
            assert run.slot.number == max(
                previous.slot.number + 1,
                schedule.first_number_at_or_after(start, previous.finished),
            )
            # An overrun is exactly a tick after which due times were skipped.
            assert previous.overrun == (run.skipped_before > 0)
        previous = run
    # Every elapsed grid point is either run or skipped, none twice.
    assert len(runs) + total_skipped == next_slot.number - first.number
    assert next_slot.due >= runs[-1].finished


@PROPERTY
@given(
    intervals,
    origins,
    st.booleans(),
    durations,
    st.lists(st.sampled_from([0.0, 0.0, 0.5, 3.0]), min_size=60, max_size=60),
)
def test_delay_simulation_keeps_every_rule(
    interval: float,
    start: float,
    immediate: bool,
    work: list[float],
    stall_intervals: list[float],
) -> None:
    schedule = DelaySchedule(interval, immediate)
    slot = schedule.first(start)
    assert slot.due == (start if immediate else start + interval)
    previous_finished: float | None = None
    for duration, stall in zip(work, stall_intervals, strict=False):
        started = max(slot.due, previous_finished or start) + stall * interval
        finished = started + duration * interval
        assert started >= slot.due
        if previous_finished is not None:
            assert slot.due == previous_finished + interval
            assert started >= previous_finished
        assert schedule.overrun(slot, started, finished) == (finished - started > interval)
        following = schedule.following(slot, started, finished)
        assert following.number == slot.number + 1
        slot, skipped = schedule.catch_up(following, finished)
        assert skipped == 0  # DELAY never skips
        assert slot == following
        previous_finished = finished


@PROPERTY
@given(intervals, origins, st.floats(min_value=-1e4, max_value=1e4))
def test_delay_catch_up_after_a_restart_waits_a_full_interval(
    interval: float, due: float, busy_offset: float
) -> None:
    schedule = DelaySchedule(interval)
    slot = Slot(1, due, 0.0)
    busy_until = due + busy_offset
    caught, skipped = schedule.catch_up(slot, busy_until)
    assert skipped == 0
    assert caught.number == 1
    if due >= busy_until + interval:
        assert caught == slot
    else:
        assert caught.due == busy_until + interval


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_schedules_refuse_bad_intervals(bad: float) -> None:
    with pytest.raises(ValueError, match="interval must be finite and > 0"):
        FixedSchedule(bad)
    with pytest.raises(ValueError, match="interval must be finite and > 0"):
        DelaySchedule(bad)


@pytest.mark.parametrize("phase", [-0.1, 1.0, 2.0, math.nan])
def test_fixed_schedule_refuses_phase_outside_the_interval(phase: float) -> None:
    with pytest.raises(ValueError, match="phase must be >= 0 and < the interval"):
        FixedSchedule(1.0, phase)
