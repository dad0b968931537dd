"""Triggers: when a driver task runs, as frozen value objects on the one timer engine.

Every trigger is validated when it is built and computes fire times by pure arithmetic; the
engine's :class:`~service.Timer` runs it through the :class:`~service.schedule.Schedule`
protocol, so no overlap, never early, stop semantics, tick records, statistics and error
counting hold for all of them. ``trigger.timer(callback, name=...)`` returns a started-ready
timer; :func:`schedule_for` returns just the schedule.

::

    Trigger
    ├── Every(interval, phase=, immediate=)      FIXED grid in loop time
    ├── Delay(interval, immediate=)             DELAY: interval after each callback finished
    ├── Forever()                               again as soon as the callback returns
    ├── Once(delay=) / Once(at=)                one tick (loop time / wall clock)
    ├── At("07:30", weekdays=, tz=)             wall clock, time of day, time zone aware
    ├── Cron("0 3 * * 1-5", tz=)                wall clock, cron expression (cronsim)
    ├── Any(*triggers)                          whenever any member fires
    └── OnStartUp() / OnShutDown()              markers run by run_startup()/run_shutdown()

Wall-clock triggers, DST rules (``At``; ``Cron`` follows Debian cron through cronsim, with the
same outcome): a local time that does not exist on a spring-forward day fires at the instant
the clocks jump (02:30 in Europe/Berlin on 2024-03-31 fires at 03:00 CEST); a local time that
occurs twice on a fall-back day fires once, at its first occurrence. Fire times are strictly
after the instant the timer starts. Wall-clock steps: see :mod:`service.triggers_schedules`.
"""

from __future__ import annotations

import itertools
import re
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import ClassVar
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

from service.intervals import to_seconds
from service.records import SchedulePolicy
from service.schedule import DelaySchedule, FixedSchedule, Schedule
from service.timer import TimerCallback
from service.triggers_schedules import (
    AnySchedule,
    ForeverSchedule,
    OnceSchedule,
    TriggerTimer,
    WallClock,
    WallClockSchedule,
    utc_now,
)

__all__ = [
    "Any",
    "At",
    "Cron",
    "Delay",
    "Every",
    "Forever",
    "OnShutDown",
    "OnStartUp",
    "Once",
    "Trigger",
    "schedule_for",
]

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class Trigger:
    """Base of all triggers: builds a per-timer schedule and a timer for a callback."""

    __slots__ = ()
    policy: ClassVar[SchedulePolicy] = SchedulePolicy.FIXED

    def schedule(self, *, wall_clock: WallClock = utc_now, step_tolerance: float = 1.0) -> Schedule:
        """A fresh schedule for one timer (wall-clock triggers read ``wall_clock``)."""
        raise NotImplementedError

    def timer(
        self,
        callback: TimerCallback,
        *,
        name: str | None = None,
        wall_clock: WallClock = utc_now,
        check_every: float = 60.0,
        step_tolerance: float = 1.0,
        **options: typing.Any,
    ) -> TriggerTimer:
        """A timer that runs ``callback`` on this trigger; call ``start()`` on a running loop.

        Args:
            callback: a plain function or coroutine function without arguments.
            name: shown in logs, tick records and metrics.
            wall_clock: returns the aware current wall-clock time (tests inject their own).
            check_every: seconds between wall-clock step checks (wall-clock triggers only).
            step_tolerance: seconds of wall/loop divergence that count as a step.
            **options: ``timeout``, ``run_in_thread``, ``observers`` as for ``Timer``.
        """
        schedule = self.schedule(wall_clock=wall_clock, step_tolerance=step_tolerance)
        return TriggerTimer(
            schedule,
            callback,
            name=name,
            policy=self.policy,
            check_every=check_every,
            as_task=_contains(self, Forever),
            **options,
        )


def schedule_for(
    trigger: Trigger, *, wall_clock: WallClock = utc_now, step_tolerance: float = 1.0
) -> Schedule:
    """A fresh schedule for ``trigger``, for ``Timer(..., schedule=...)``.

    Prefer ``trigger.timer(...)``: it also watches wall-clock steps and makes ``Forever``
    yield to the loop between runs.
    """
    return trigger.schedule(wall_clock=wall_clock, step_tolerance=step_tolerance)


@dataclass(frozen=True, slots=True, init=False)
class Every(Trigger):
    """Tick N due at ``start + phase + N * interval`` (FIXED): heartbeats, drift-free.

    Args:
        interval: seconds (number, ``timedelta`` or ``"5s"``), > 0.
        phase: seconds in ``[0, interval)`` added to every due time.
        immediate: the first tick is due at start (+ phase) instead of one interval later.
        align: the grid is the loop clock's multiples of ``interval`` (plus ``phase``), not
            the start time: every aligned ``Every`` with the same interval and phase ticks at
            the same instants (see :class:`~service.schedule.FixedSchedule`).
    """

    interval: float
    phase: float
    immediate: bool
    align: bool

    def __init__(
        self, interval: float | timedelta | str, *, phase: float | timedelta = 0.0,
        immediate: bool = False, align: bool = False,
    ) -> None:  # fmt: skip
        seconds = to_seconds(interval, what="Every interval")
        offset = to_seconds(phase, what="Every phase", allow_zero=True)
        FixedSchedule(seconds, offset, immediate, align)  # validates phase < interval
        object.__setattr__(self, "interval", seconds)
        object.__setattr__(self, "phase", offset)
        object.__setattr__(self, "immediate", immediate)
        object.__setattr__(self, "align", align)

    def schedule(self, *, wall_clock: WallClock = utc_now, step_tolerance: float = 1.0) -> Schedule:
        return FixedSchedule(self.interval, self.phase, self.immediate, self.align)


@dataclass(frozen=True, slots=True, init=False)
class Delay(Trigger):
    """The next tick is due ``interval`` seconds after the previous callback finished (DELAY)."""

    policy: ClassVar[SchedulePolicy] = SchedulePolicy.DELAY
    interval: float
    immediate: bool

    def __init__(self, interval: float | timedelta | str, *, immediate: bool = False) -> None:
        object.__setattr__(self, "interval", to_seconds(interval, what="Delay interval"))
        object.__setattr__(self, "immediate", immediate)

    def schedule(self, *, wall_clock: WallClock = utc_now, step_tolerance: float = 1.0) -> Schedule:
        return DelaySchedule(self.interval, self.immediate)


@dataclass(frozen=True, slots=True)
class Forever(Trigger):
    """Run again as soon as the callback returns, yielding to the loop in between.

    For loops that wait on I/O themselves (``await reader.readline()``). A callback that never
    waits makes a busy loop: other tasks and timers still run, but the CPU does not rest.
    """

    policy: ClassVar[SchedulePolicy] = SchedulePolicy.DELAY

    def schedule(self, *, wall_clock: WallClock = utc_now, step_tolerance: float = 1.0) -> Schedule:
        return ForeverSchedule()


@dataclass(frozen=True, slots=True, init=False)
class Once(Trigger):
    """One tick: ``delay`` seconds after start (loop time), or at the wall-clock time ``at``.

    ``at`` must be aware. An ``at`` that has already passed when the timer starts never fires;
    one that a forward wall-clock step jumps over while the timer waits fires once, at once.
    """

    delay: float | None
    at: datetime | None

    def __init__(
        self, delay: float | timedelta | str | None = None, *, at: datetime | None = None
    ) -> None:
        if (delay is None) == (at is None):
            raise ValueError(f"Once needs exactly one of delay= or at=, got {delay=!r} {at=!r}")
        if at is not None and at.tzinfo is None:
            raise ValueError(f"Once(at=...) needs an aware datetime, got {at!r}")
        seconds = None if delay is None else to_seconds(delay, what="Once delay", allow_zero=True)
        object.__setattr__(self, "delay", seconds)
        object.__setattr__(self, "at", None if at is None else at.astimezone(UTC))

    def next_fire(self, after: datetime) -> datetime | None:
        """``at`` if it is strictly after ``after``, else ``None``."""
        return self.at if self.at is not None and self.at > after else None

    def schedule(self, *, wall_clock: WallClock = utc_now, step_tolerance: float = 1.0) -> Schedule:
        if self.delay is not None:
            return OnceSchedule(self.delay)
        return WallClockSchedule(self, wall_clock=wall_clock, step_tolerance=step_tolerance)


@dataclass(frozen=True, slots=True, init=False)
class At(Trigger):
    """Every day (or on the given weekdays) at a local time of day in time zone ``tz``.

    Args:
        time_of_day: ``"07:30"``, ``"07:30:15"`` or a naive ``datetime.time``.
        weekdays: ``None`` for every day, or names (``"mon"``, ``"monday"``) or numbers
            (0 = Monday ... 6 = Sunday, as ``date.weekday()``; not cron's 0 = Sunday).
        tz: an IANA zone name (``"Europe/Berlin"``) or a ``tzinfo``.
    """

    time_of_day: time
    weekdays: frozenset[int] | None
    tz: tzinfo

    def __init__(
        self,
        time_of_day: str | time,
        *,
        weekdays: Iterable[int | str] | int | str | None = None,
        tz: str | tzinfo = "UTC",
    ) -> None:
        object.__setattr__(self, "time_of_day", _parse_time(time_of_day))
        object.__setattr__(self, "weekdays", None if weekdays is None else _weekdays(weekdays))
        object.__setattr__(self, "tz", _zone(tz, "At"))

    def next_fire(self, after: datetime) -> datetime:
        """The first fire time strictly after ``after`` (aware), as an aware UTC datetime."""
        day = after.astimezone(self.tz).date() - timedelta(days=1)
        for _ in range(9):
            if self.weekdays is None or day.weekday() in self.weekdays:
                fire = resolve_local(day, self.time_of_day, self.tz)
                if fire > after:
                    return fire
            day += timedelta(days=1)
        raise AssertionError(f"no fire time within 9 days after {after}")  # pragma: no cover

    def schedule(self, *, wall_clock: WallClock = utc_now, step_tolerance: float = 1.0) -> Schedule:
        return WallClockSchedule(self, wall_clock=wall_clock, step_tolerance=step_tolerance)


@dataclass(frozen=True, slots=True, init=False)
class Cron(Trigger):
    """Fire times of a cron expression in time zone ``tz``; ``cronsim`` parses and matches it.

    Five fields (minute hour day month weekday; 0 or 7 = Sunday) or six (seconds first). DST
    follows Debian cron, for both forms: an expression whose minute and hour fields do not
    start with ``*`` names fixed local times, and those follow ``At``'s rules (a local time in
    a spring-forward gap fires when the clocks jump, one that occurs twice fires once, at its
    first occurrence); any other expression (``*/15 * * * *``, ``0 * * * *``, ``0 */7 * * *``)
    follows real time: it fires at every instant whose local time matches, so none in a gap
    and twice in a repeated hour. This holds for any size of DST shift (Lord Howe's 30 min).

    Raises:
        ValueError: the expression is invalid (the message names it).
    """

    expression: str
    tz: tzinfo
    fixed_time: bool

    def __init__(self, expression: str, *, tz: str | tzinfo = "UTC") -> None:
        zone = _zone(tz, "Cron")
        try:
            CronSim(expression, datetime(2000, 1, 1))
        except (CronSimError, ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"invalid cron expression {expression!r}: {exc}") from exc
        fields = expression.split()
        minute, hour = fields[-5:-3]  # cronsim accepted it: five or six fields
        object.__setattr__(self, "expression", expression)
        object.__setattr__(self, "tz", zone)
        object.__setattr__(
            self, "fixed_time", not minute.startswith("*") and not hour.startswith("*")
        )

    def next_fire(self, after: datetime) -> datetime | None:
        """The first fire time strictly after ``after`` (aware), as an aware UTC datetime.

        cronsim runs on naive local time (plain calendar arithmetic, no DST); this method maps
        its local times to instants with the rules in the class docstring.
        """
        after = after.astimezone(UTC)
        if self.fixed_time:
            return self._next_fixed_time(after)
        return self._next_real_time(after)

    def _next_fixed_time(self, after: datetime) -> datetime | None:
        # Local -> instant (first occurrence, or the jump) never decreases as local time grows,
        # so starting from the least local time "after" can have nearby suffices.
        offsets = [self._offset(after + timedelta(days=d)) for d in (-1, 0, 1)]
        start = (after + min(offsets)).replace(tzinfo=None) - timedelta(seconds=1)
        for local in itertools.islice(CronSim(self.expression, start), 100_000):
            fire = resolve_local(local.date(), local.time(), self.tz)
            if fire > after:
                return fire
        return None

    def _next_real_time(self, after: datetime) -> datetime | None:
        # Between two offset changes local time is the instant plus a constant offset: match
        # there, and where the match lies beyond the next change, go on from that change.
        begin, offset = after, self._offset(after)  # matches strictly after ``begin``
        for _ in range(1_000):
            try:
                local = next(CronSim(self.expression, (begin + offset).replace(tzinfo=None)))
            except StopIteration:
                return None
            fire = (local - offset).replace(tzinfo=UTC)
            change = self._offset_change(begin, fire, offset)
            if change is None:
                return fire
            begin, offset = change - timedelta(microseconds=1), self._offset(change)
        raise AssertionError(f"cron {self.expression!r} made no progress after {after}")

    def _offset(self, instant: datetime) -> timedelta:
        offset = instant.astimezone(self.tz).utcoffset()
        assert offset is not None
        return offset

    def _offset_change(self, begin: datetime, end: datetime, offset: timedelta) -> datetime | None:
        """The first instant in ``(begin, end]`` with another UTC offset than ``offset``
        (to the microsecond), or ``None`` if the offset holds there (checked daily and at
        ``end``: zones change offsets months apart)."""
        probe = begin
        while True:
            probe = min(probe + timedelta(days=1), end)
            if self._offset(probe) != offset:
                break
            if probe == end:
                return None
        low, high = begin, probe
        while high - low > timedelta(microseconds=1):
            middle = low + (high - low) / 2
            if self._offset(middle) == offset:
                low = middle
            else:
                high = middle
        return high

    def schedule(self, *, wall_clock: WallClock = utc_now, step_tolerance: float = 1.0) -> Schedule:
        return WallClockSchedule(self, wall_clock=wall_clock, step_tolerance=step_tolerance)


@dataclass(frozen=True, slots=True)
class OnStartUp(Trigger):
    """Marker: run the callback once when the runner starts (see ``run_startup``)."""

    def schedule(self, *, wall_clock: WallClock = utc_now, step_tolerance: float = 1.0) -> Schedule:
        raise TypeError("OnStartUp is run by run_startup()/TriggerSet.start(), not by a timer")


@dataclass(frozen=True, slots=True)
class OnShutDown(Trigger):
    """Marker: run the callback once when the runner stops (see ``run_shutdown``)."""

    def schedule(self, *, wall_clock: WallClock = utc_now, step_tolerance: float = 1.0) -> Schedule:
        raise TypeError("OnShutDown is run by run_shutdown()/TriggerSet.stop(), not by a timer")


@dataclass(frozen=True, slots=True, init=False)
class Any(Trigger):
    """Fires whenever any member fires; members due at the same instant give one tick.

    Nested ``Any`` are flattened. ``OnStartUp``/``OnShutDown`` members are run by the hooks;
    the timer serves the others (``Any(OnStartUp(), Every(60))``: at start and every minute).
    """

    triggers: tuple[Trigger, ...] = field(default=())

    def __init__(self, *triggers: Trigger) -> None:
        flat: list[Trigger] = []
        for trigger in triggers:
            if not isinstance(trigger, Trigger):
                raise TypeError(f"Any() takes triggers, got {trigger!r}")
            flat.extend(trigger.triggers if isinstance(trigger, Any) else (trigger,))
        if not flat:
            raise ValueError("Any() needs at least one trigger")
        object.__setattr__(self, "triggers", tuple(flat))

    def schedule(self, *, wall_clock: WallClock = utc_now, step_tolerance: float = 1.0) -> Schedule:
        return AnySchedule(
            [
                member.schedule(wall_clock=wall_clock, step_tolerance=step_tolerance)
                for member in self.triggers
                if not isinstance(member, OnStartUp | OnShutDown)
            ]
        )


def _contains(trigger: Trigger, kind: type[Trigger]) -> bool:
    """Whether ``trigger`` is, or is an ``Any`` with, a ``kind`` trigger."""
    if isinstance(trigger, Any):
        return any(isinstance(member, kind) for member in trigger.triggers)
    return isinstance(trigger, kind)


def resolve_local(day: date, time_of_day: time, tz: tzinfo) -> datetime:
    """The UTC instant of local ``time_of_day`` on ``day`` in ``tz``, with the DST rules.

    An ambiguous local time (fall-back) resolves to its first occurrence; a nonexistent one
    (spring-forward gap) to the instant the clocks jump.
    """
    naive = datetime.combine(day, time_of_day)
    earlier = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if earlier.astimezone(tz).replace(tzinfo=None) == naive:
        return earlier
    later = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    low, high = sorted((earlier, later))
    while (high - low) > timedelta(seconds=1):  # the first instant whose local time is later
        middle = low + (high - low) / 2
        if middle.astimezone(tz).replace(tzinfo=None) > naive:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0) if high.microsecond else high


_TIME = re.compile(r"^\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*$")


def _parse_time(value: str | time) -> time:
    if isinstance(value, time):
        if value.tzinfo is not None:
            raise ValueError(f"At() takes a naive time of day and tz=..., got {value!r}")
        return value
    match = _TIME.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"time of day must look like '07:30' or '07:30:15', got {value!r}")
    hour, minute, second = (int(part or 0) for part in match.groups())
    try:
        return time(hour, minute, second)
    except ValueError as exc:
        raise ValueError(f"time of day {value!r} is out of range: {exc}") from exc


def _weekdays(value: Iterable[int | str] | int | str) -> frozenset[int]:
    items = [value] if isinstance(value, int | str) else list(value)
    days: set[int] = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise ValueError(f"weekday must be a name or 0-6 (0 = Monday), got {item!r}")
        if isinstance(item, int):
            if not 0 <= item <= 6:
                raise ValueError(f"weekday must be 0-6 (0 = Monday), got {item!r}")
            days.add(item)
            continue
        name = item.strip().lower()
        matches = [i for i, day in enumerate(WEEKDAYS) if len(name) >= 3 and day.startswith(name)]
        if len(matches) != 1:
            raise ValueError(f"unknown weekday {item!r} (use mon..sun or monday..sunday)")
        days.add(matches[0])
    if not days:
        raise ValueError("weekdays must name at least one day (None means every day)")
    return frozenset(days)


def _zone(tz: str | tzinfo, trigger: str) -> tzinfo:
    """``tz`` as a ``tzinfo``: an IANA zone name or a ``tzinfo`` itself."""
    if isinstance(tz, tzinfo):
        return tz
    if not isinstance(tz, str):
        raise ValueError(
            f"{trigger} tz must be an IANA zone name such as 'Europe/Berlin' or a tzinfo, "
            f"got {tz!r}"
        )
    try:
        return ZoneInfo(tz)
    except (ValueError, KeyError, OSError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise ValueError(f"{trigger} tz: unknown time zone {tz!r}") from exc
