"""Pure schedule arithmetic: where the next tick of a timer is due.

Schedules are frozen value objects. They never read a clock: the timer passes in loop times
(seconds) and gets due times back, so every rule here can be tested exhaustively, including with
hypothesis, without an event loop.

The drift rule: a FIXED due time is always computed from its tick number,
``origin + phase + number * interval``, never by adding the interval to the previous due time,
so a million ticks later the grid is exactly where it started.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, NamedTuple, Protocol

from service.intervals import to_seconds
from service.records import SchedulePolicy

__all__ = [
    "DelaySchedule",
    "FixedSchedule",
    "Schedule",
    "Slot",
    "SlotFields",
    "as_slot",
    "schedule_for",
]


class Slot(NamedTuple):
    """One due tick: its number, its due time and the schedule origin (seconds)."""

    number: int
    due: float
    origin: float


SlotFields = tuple[int, float, float]
"""A :class:`Slot`'s fields as a plain tuple. The timer's tick path keeps its next slot as this,
since building a tuple subclass costs several times more; :func:`as_slot` makes it a ``Slot``."""


def as_slot(fields: SlotFields) -> Slot:
    return fields if type(fields) is Slot else Slot._make(fields)


class Schedule(Protocol):
    """What the timer engine needs from a schedule. Times are event-loop seconds."""

    @property
    def interval(self) -> float | None:
        """The nominal interval in seconds, when the schedule has one (for metrics)."""
        ...

    def first(self, start: float) -> Slot | None:
        """The first slot for a timer started at ``start``; ``None`` if it never fires."""
        ...

    def following(self, slot: Slot, started: float, finished: float) -> Slot | None:
        """The slot after ``slot``, whose callback ran from ``started`` to ``finished``."""
        ...

    def catch_up(self, slot: Slot, busy_until: float) -> tuple[Slot, int]:
        """Move ``slot`` past due times that passed while the timer was busy until ``busy_until``.

        Returns the slot to arm and how many due times were skipped on the way.
        """
        ...

    def overrun(self, slot: Slot, started: float, finished: float) -> bool:
        """Whether the tick for ``slot`` overran (see the policies)."""
        ...


@dataclass(frozen=True, slots=True)
class FixedSchedule:
    """Tick N due at ``origin + phase + N * interval``; passed due times are skipped.

    Attributes:
        interval: seconds between due times (> 0).
        phase: seconds added to every due time, in ``[0, interval)``; spreads many timers with
            the same interval over the interval instead of waking them all at once.
        immediate: the first tick is number 0 (due at ``start + phase``) instead of number 1.
        aligned: the grid's origin is the loop clock's zero instead of the start time, so every
            timer with the same interval and phase ticks at exactly the same instants, however
            and whenever it was started (a restarted device keeps its place in the interval).
            The first tick is the first grid point after the start (at or after it with
            ``immediate``); tick numbers count from the clock's zero.
    """

    interval: float
    phase: float = 0.0
    immediate: bool = False
    aligned: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.interval) and self.interval > 0):
            raise ValueError(f"interval must be finite and > 0 seconds, got {self.interval!r}")
        if not (math.isfinite(self.phase) and 0 <= self.phase < self.interval):
            raise ValueError(
                f"phase must be >= 0 and < the interval ({self.interval!r} s), got {self.phase!r}"
            )

    def due(self, origin: float, number: int) -> float:
        """The due time of tick ``number`` on the grid that starts at ``origin``."""
        return origin + self.phase + number * self.interval

    def first(self, start: float) -> Slot:
        if self.aligned:
            number = self.first_number_at_or_after(0.0, start)
            if not self.immediate and self.due(0.0, number) == start:
                number += 1
            return Slot(number, self.due(0.0, number), 0.0)
        number = 0 if self.immediate else 1
        return Slot(number, self.due(start, number), start)

    def following(self, slot: Slot, started: float, finished: float) -> Slot:
        number = slot.number + 1
        return Slot(number, self.due(slot.origin, number), slot.origin)

    def first_number_at_or_after(self, origin: float, when: float) -> int:
        """The smallest tick number whose due time is ``>= when``.

        Estimated with one division, then corrected against :meth:`due` itself so that float
        rounding can never put the answer one tick off the grid that ``due`` defines.
        """
        number = math.ceil((when - origin - self.phase) / self.interval)
        while self.due(origin, number - 1) >= when:
            number -= 1
        while self.due(origin, number) < when:
            number += 1
        return number

    def catch_up(self, slot: Slot, busy_until: float) -> tuple[Slot, int]:
        if slot.due >= busy_until:
            return slot, 0
        number = self.first_number_at_or_after(slot.origin, busy_until)
        return Slot(number, self.due(slot.origin, number), slot.origin), number - slot.number

    def overrun(self, slot: Slot, started: float, finished: float) -> bool:
        return finished > self.due(slot.origin, slot.number + 1)


@dataclass(frozen=True, slots=True)
class DelaySchedule:
    """The next tick is due ``interval`` seconds after the previous callback finished.

    Nothing is ever skipped; a tick that ran longer than ``interval`` counts as an overrun.

    Attributes:
        interval: seconds between the end of one callback and the next due time (> 0).
        immediate: the first tick is due at start instead of one interval after it.
    """

    interval: float
    immediate: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.interval) and self.interval > 0):
            raise ValueError(f"interval must be finite and > 0 seconds, got {self.interval!r}")

    def first(self, start: float) -> Slot:
        if self.immediate:
            return Slot(0, start, start)
        return Slot(1, start + self.interval, start)

    def following(self, slot: Slot, started: float, finished: float) -> Slot:
        return Slot(slot.number + 1, finished + self.interval, slot.origin)

    def catch_up(self, slot: Slot, busy_until: float) -> tuple[Slot, int]:
        if slot.due >= busy_until + self.interval:
            return slot, 0
        return Slot(slot.number, busy_until + self.interval, slot.origin), 0

    def overrun(self, slot: Slot, started: float, finished: float) -> bool:
        return finished - started > self.interval


def schedule_for(
    policy: SchedulePolicy,
    interval: float | timedelta,
    *,
    name: str,
    phase: float | timedelta | Literal["auto"] = 0.0,
    immediate: bool = False,
    align: bool = False,
) -> FixedSchedule | DelaySchedule:
    """The schedule of a :class:`~service.Timer` from its options (see there).

    ``phase="auto"`` is ``crc32(name) / 2**32 * interval``: deterministic and spread evenly.

    Raises:
        ValueError: a value out of range, or ``phase``/``align`` on a DELAY timer; the message
            names the timer and the value.
    """
    seconds = to_seconds(interval, what=f"timer {name!r} interval")
    if policy is SchedulePolicy.FIXED:
        if phase == "auto":
            offset = (zlib.crc32(name.encode()) / 2**32) * seconds
        else:
            offset = to_seconds(phase, what=f"timer {name!r} phase", allow_zero=True)
            if offset >= seconds:
                raise ValueError(
                    f"timer {name!r}: phase must be < interval ({seconds} s), got {phase!r}"
                )
        return FixedSchedule(seconds, offset, immediate, align)
    if phase == "auto" or to_seconds(phase, what="phase", allow_zero=True) != 0:
        raise ValueError(f"timer {name!r}: phase applies to FIXED timers only")
    if align:
        raise ValueError(f"timer {name!r}: align applies to FIXED timers only")
    return DelaySchedule(seconds, immediate)
