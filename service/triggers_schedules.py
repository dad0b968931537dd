"""Schedules behind the triggers, and the timer that keeps wall-clock schedules honest.

The engine only knows loop time. Triggers that are defined on the wall clock (``At``, ``Cron``,
``Once(at=...)``) answer one pure question, "the first fire time strictly after this instant"
(:class:`WallClockRule`); :class:`WallClockSchedule` turns those answers into loop-time slots by
pairing one reading of the injected wall clock with the loop time it was taken at. It is the
one place that reads the wall clock, and it holds per-timer state (the armed fire time, the last
one that ran), so every timer gets its own instance from :func:`service.triggers.schedule_for`.

Wall-clock steps (NTP corrections, a gateway without an RTC battery that boots in 1970 and then
syncs): :class:`TriggerTimer` checks every ``check_every`` seconds whether wall time and loop
time have moved apart by more than ``step_tolerance`` seconds since the plan was made, and if
so re-plans through the timer's own ``stop()``/``start()``. The rules:

* forward step: the fire time the timer was waiting for, if the step carried the clock past
  it, runs once, at once (it is due, however late: the engine's FIXED rule). The other fire
  times the step jumped over never run and are not counted as skipped: they never passed in
  real (loop) time, so a gateway that boots in 1970 and syncs does not report 19 000 skipped
  daily runs. A step noticed when a callback finishes just re-plans from the new wall time.
  (Fire times that pass in loop time while a callback runs are skipped and counted, as for
  FIXED timers.)
* backward step: the next fire time is recomputed from the new wall time, so the timer never
  waits for the old time to come round again. A fire time that already ran is not repeated
  when the clock went back by at most :data:`REPEAT_GUARD` seconds (a small NTP correction
  just after 07:30:00 must not run the 07:30 job twice); after a bigger step the replayed
  wall-clock period runs normally.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from service.records import SchedulePolicy
from service.schedule import Schedule, Slot
from service.timer import Timer, TimerCallback

__all__ = [
    "REPEAT_GUARD",
    "AnySchedule",
    "ForeverSchedule",
    "OnceSchedule",
    "Replannable",
    "TriggerTimer",
    "WallClock",
    "WallClockRule",
    "WallClockSchedule",
    "utc_now",
]

logger = logging.getLogger("gatebeat.triggers")

WallClock = Callable[[], datetime]
"""Returns the current wall-clock time as a time-zone-aware ``datetime``."""

REPEAT_GUARD = 3600.0
"""Seconds: a backward step up to this size never repeats a fire time that already ran."""

_REPEAT_GUARD = timedelta(seconds=REPEAT_GUARD)
_SKIP_COUNT_LIMIT = 10_000
_COINCIDENT = 1e-6  # seconds: members of Any due this close together fire as one tick


def utc_now() -> datetime:
    """The default wall clock: the current time in UTC."""
    return datetime.now(UTC)


class WallClockRule(Protocol):
    """A trigger defined on the wall clock: pure fire-time arithmetic."""

    def next_fire(self, after: datetime) -> datetime | None:
        """The first fire time strictly after ``after`` (aware, UTC), ``None`` if none."""
        ...


@runtime_checkable
class Replannable(Protocol):
    """A schedule that depends on the wall clock and can be re-planned after a step."""

    def stale(self, loop_now: float) -> float | None:
        """Seconds the wall clock stepped since the plan was made, if beyond tolerance."""
        ...

    def begin_replan(self) -> None:
        """Make the next ``first()`` call re-plan the running schedule instead of a fresh one."""
        ...


class OnceSchedule:
    """One tick, ``delay`` seconds after start; then the timer stops itself."""

    interval: float | None = None

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def first(self, start: float) -> Slot:
        return Slot(1, start + self.delay, start)

    def following(self, slot: Slot, started: float, finished: float) -> Slot | None:
        return None

    def catch_up(self, slot: Slot, busy_until: float) -> tuple[Slot, int]:
        return slot, 0

    def overrun(self, slot: Slot, started: float, finished: float) -> bool:
        return False


class ForeverSchedule:
    """The next tick is due the moment the previous callback finished.

    The timer must run its callback as a task (``TriggerTimer`` wraps synchronous callbacks), so
    the next tick starts from a fresh loop iteration and other work runs in between.
    """

    interval: float | None = None

    def first(self, start: float) -> Slot:
        return Slot(0, start, start)

    def following(self, slot: Slot, started: float, finished: float) -> Slot:
        return Slot(slot.number + 1, finished, slot.origin)

    def catch_up(self, slot: Slot, busy_until: float) -> tuple[Slot, int]:
        if slot.due >= busy_until:
            return slot, 0
        return Slot(slot.number, busy_until, slot.origin), 0

    def overrun(self, slot: Slot, started: float, finished: float) -> bool:
        return False


class WallClockSchedule:
    """Loop-time slots for a :class:`WallClockRule`, re-reading the wall clock at each step.

    Args:
        rule: the trigger's fire-time arithmetic.
        wall_clock: returns the current aware wall-clock time (injected in tests).
        step_tolerance: seconds the wall clock may move against loop time before
            :meth:`stale` reports a step (slow NTP slewing accumulates too, and a re-plan then
            simply re-aligns the armed fire time to the wall clock).
    """

    interval: float | None = None

    def __init__(
        self, rule: WallClockRule, *, wall_clock: WallClock = utc_now, step_tolerance: float = 1.0
    ) -> None:
        if not step_tolerance > 0:
            raise ValueError(f"step_tolerance must be > 0 seconds, got {step_tolerance!r}")
        self.rule = rule
        self.wall_clock = wall_clock
        self.step_tolerance = step_tolerance
        self._wall_ref: datetime | None = None  # one wall-clock reading (UTC) ...
        self._loop_ref = 0.0  # ... and the loop time it was taken at
        self._pending: datetime | None = None  # the wall fire time of the armed slot
        self._last: datetime | None = None  # the wall fire time that ran last
        self._replanning = False
        self._jumped = False  # the slot in flight ran a fire time a forward step passed

    @property
    def pending(self) -> datetime | None:
        """The wall-clock fire time (UTC) of the slot armed now, if any."""
        return self._pending

    def _read(self, loop_now: float) -> datetime:
        wall = self.wall_clock()
        if wall.tzinfo is None:
            raise ValueError(f"the wall clock must return aware datetimes, got {wall!r}")
        wall = wall.astimezone(UTC)
        self._wall_ref, self._loop_ref = wall, loop_now
        return wall

    def _to_loop(self, when: datetime) -> float:
        """The loop time at which the wall clock reads ``when``, rounded up to the microsecond
        (the wall clock's resolution), so float rounding never fires a wall-clock tick early."""
        assert self._wall_ref is not None
        seconds = self._loop_ref + (when - self._wall_ref).total_seconds()
        return math.ceil(seconds * 1e6) / 1e6

    def first(self, start: float) -> Slot | None:
        wall = self._read(start)
        pending, replanning = self._pending, self._replanning
        self._replanning = False
        if replanning and pending is not None and pending <= wall:
            logger.info("wall clock passed fire time %s: it runs once now", pending.isoformat())
            self._jumped = True
            return Slot(1, start, start)
        self._jumped = False
        base = wall
        if self._last is not None and wall < self._last <= wall + _REPEAT_GUARD:
            base = self._last
        self._pending = self.rule.next_fire(base)
        if self._pending is None:
            return None
        return Slot(1, max(start, self._to_loop(self._pending)), start)

    def following(self, slot: Slot, started: float, finished: float) -> Slot | None:
        step = self.stale(finished)
        wall = self._read(finished)
        last = self._last = self._pending
        jumped, self._jumped = self._jumped, False
        if last is None or last > wall + _REPEAT_GUARD:  # far back: follow the new wall time
            base = wall
        elif step is not None or jumped:  # no catch-up for times only a step jumped over
            base = max(last, wall)
        else:  # fire times passed while the callback ran are skipped by catch_up, counted
            base = last
        self._pending = self.rule.next_fire(base)
        if self._pending is None:
            return None
        return Slot(slot.number + 1, self._to_loop(self._pending), slot.origin)

    def catch_up(self, slot: Slot, busy_until: float) -> tuple[Slot, int]:
        if slot.due >= busy_until or self._pending is None:
            return slot, 0
        skipped, when = 0, self._pending
        while self._to_loop(when) < busy_until:
            following = self.rule.next_fire(when)
            if following is None:  # nothing after the passed one: it runs once, late
                break
            skipped += 1
            when = following
            if skipped >= _SKIP_COUNT_LIMIT:  # stop counting; jump to after busy_until
                assert self._wall_ref is not None
                target = self._wall_ref.timestamp() + (busy_until - self._loop_ref)
                jump = self.rule.next_fire(datetime.fromtimestamp(target, UTC))
                when = jump if jump is not None else when
                break
        self._pending = when
        return Slot(slot.number + skipped, self._to_loop(when), slot.origin), skipped

    def overrun(self, slot: Slot, started: float, finished: float) -> bool:
        if self._pending is None:
            return False
        base = self._pending
        if self._jumped and self._wall_ref is not None:
            # A fire time a forward step passed ran late on purpose: the fire times in between
            # never passed in loop time, so only those after the new wall time count.
            base = max(base, self._wall_ref)
        following = self.rule.next_fire(base)
        return following is not None and finished > self._to_loop(following)

    def stale(self, loop_now: float) -> float | None:
        if self._wall_ref is None:
            return None
        wall = self.wall_clock().astimezone(UTC)
        step = (wall - self._wall_ref).total_seconds() - (loop_now - self._loop_ref)
        return step if abs(step) > self.step_tolerance else None

    def begin_replan(self) -> None:
        self._replanning = True


class AnySchedule:
    """Fires when any member schedule fires; members due at the same instant fire once.

    Members are schedules with their own state (one :class:`AnySchedule` per timer). The combined
    tick is due at the earliest member due time (members within 1 µs of it join the same tick,
    which is then due at the latest of them, so none starts early).
    """

    interval: float | None = None

    def __init__(self, members: Sequence[Schedule]) -> None:
        self.members = tuple(members)
        self.watches_wall_clock = any(isinstance(m, Replannable) for m in self.members)
        self._current: list[Slot | None] = [None] * len(self.members)
        self._replanning = False

    def _combined(self, number: int, origin: float) -> Slot | None:
        dues = [slot.due for slot in self._current if slot is not None]
        if not dues:
            return None
        earliest = min(dues)
        return Slot(number, max(d for d in dues if d <= earliest + _COINCIDENT), origin)

    def first(self, start: float) -> Slot | None:
        replanning, self._replanning = self._replanning, False
        for index, member in enumerate(self.members):
            if not replanning:
                self._current[index] = member.first(start)
            elif isinstance(member, Replannable) and self._current[index] is not None:
                # A member that is done (a Once that fired) stays done across a re-plan.
                self._current[index] = member.first(start)
        return self._combined(1, start)

    def following(self, slot: Slot, started: float, finished: float) -> Slot | None:
        for index, member in enumerate(self.members):
            current = self._current[index]
            if current is not None and current.due <= slot.due:
                self._current[index] = member.following(current, started, finished)
        return self._combined(slot.number + 1, slot.origin)

    def catch_up(self, slot: Slot, busy_until: float) -> tuple[Slot, int]:
        """Move every member past the due times that passed; an instant that several members
        were due at counts as one skipped tick, as it would have been one tick."""
        passed: list[float] = []  # the skipped due times, walked one at a time ...
        uncounted = 0  # ... up to _SKIP_COUNT_LIMIT; beyond that, counted per member
        for index, member in enumerate(self.members):
            current = self._current[index]
            while current is not None:
                if current.due >= busy_until or len(passed) >= _SKIP_COUNT_LIMIT:
                    current, skipped = member.catch_up(current, busy_until)  # Delay moves here
                    uncounted += skipped
                    break
                step, skipped = member.catch_up(current, math.nextafter(current.due, math.inf))
                if not skipped:  # a member that does not skip (Delay, Once): its own rule
                    current, _ = member.catch_up(current, busy_until)
                    break
                passed.append(current.due)
                current = step
            self._current[index] = current
        passed.sort()
        instants = sum(
            1 for i, due in enumerate(passed) if i == 0 or due > passed[i - 1] + _COINCIDENT
        )
        combined = self._combined(slot.number, slot.origin)
        return (combined if combined is not None else slot), instants + uncounted

    def overrun(self, slot: Slot, started: float, finished: float) -> bool:
        for index, member in enumerate(self.members):
            current = self._current[index]
            if current is None:
                continue
            if current.due <= slot.due:
                if member.overrun(current, started, finished):
                    return True
            elif finished > current.due:
                return True
        return False

    def stale(self, loop_now: float) -> float | None:
        for member in self.members:
            if isinstance(member, Replannable):
                step = member.stale(loop_now)
                if step is not None:
                    return step
        return None

    def begin_replan(self) -> None:
        self._replanning = True
        for member in self.members:
            if isinstance(member, Replannable):
                member.begin_replan()


class TriggerTimer(Timer):
    """A :class:`~service.Timer` for a trigger's schedule, watching the wall clock if needed.

    Behaves exactly like a ``Timer`` (same guarantees, statistics and tick records). For a
    :class:`Replannable` schedule it also wakes every ``check_every`` seconds (loop time) and,
    when the wall clock stepped, re-plans via ``stop()``/``start()`` (never while a callback
    is in flight: finishing callbacks re-read the wall clock anyway). ``wall_clock_steps``
    counts the re-plans.

    Args:
        schedule: the trigger's schedule (one instance per timer).
        callback: a plain function or coroutine function without arguments.
        name: shown in logs and tick records.
        policy: the label for metrics (``FIXED`` for grids and wall-clock triggers, ``DELAY``
            for ``Delay`` and ``Forever``).
        check_every: seconds between wall-clock step checks (> 0).
        as_task: run synchronous callbacks as a task (``Forever``: yields to the loop).
        **options: ``timeout``, ``run_in_thread``, ``observers`` as for ``Timer``.
    """

    def __init__(
        self,
        schedule: Schedule,
        callback: TimerCallback,
        *,
        name: str | None = None,
        policy: SchedulePolicy = SchedulePolicy.FIXED,
        check_every: float = 60.0,
        as_task: bool = False,
        **options: Any,
    ) -> None:
        if not check_every > 0:
            raise ValueError(f"check_every must be > 0 seconds, got {check_every!r}")
        if as_task and callable(callback) and not inspect.iscoroutinefunction(callback):
            callback = _as_coroutine_function(callback)
        super().__init__(1.0, callback, policy, name=name, schedule=schedule, **options)
        self._check_every = check_every
        self._watch: asyncio.TimerHandle | None = None
        self.wall_clock_steps = 0

    def start(self) -> None:
        super().start()
        if self.statistics().next_due is None and not self.in_flight:
            super().stop()  # the schedule never fires (a Once whose time has passed)
            return
        schedule = self.schedule
        if isinstance(schedule, Replannable) and getattr(schedule, "watches_wall_clock", True):
            self._arm_watch()

    def stop(self, cancel: bool = False) -> None:
        super().stop(cancel)
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def _arm_watch(self) -> None:
        loop = asyncio.get_running_loop()
        self._watch = loop.call_at(loop.time() + self._check_every, self._check)

    def _check(self) -> None:
        self._watch = None
        schedule = self.schedule
        if not self.running or not isinstance(schedule, Replannable):
            return
        if not self.in_flight:
            step = schedule.stale(asyncio.get_running_loop().time())
            if step is not None:
                self.wall_clock_steps += 1
                logger.warning(
                    "timer=%s wall clock stepped by %+.3f s: re-planning", self.name, step
                )
                schedule.begin_replan()
                Timer.stop(self)
                Timer.start(self)
        if self.running:
            self._arm_watch()


def _as_coroutine_function(callback: TimerCallback) -> Callable[[], Any]:
    async def run() -> Any:
        result = callback()
        if inspect.isawaitable(result):
            return await result
        return result

    return run
