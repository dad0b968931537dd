"""Immutable records the engine hands out: one per tick, and a statistics snapshot per timer."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["Outcome", "SchedulePolicy", "TickObserver", "TickRecord", "TimerStatistics"]


class SchedulePolicy(enum.Enum):
    """How the next due time of a periodic timer is computed.

    FIXED: tick N is due at ``origin + N * interval`` (drift-free heartbeats); due times that pass
    while a tick runs are skipped and counted. DELAY: the next tick is due ``interval`` seconds
    after the previous callback finished (polls that must never crowd a device).
    """

    FIXED = "fixed"
    DELAY = "delay"


class Outcome(enum.Enum):
    """How a tick's callback ended."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


class TickRecord(NamedTuple):
    """What happened in one tick. All times are event-loop times in seconds.

    Immutable (a named tuple: built once per tick on the hot path, about 0.3 µs).

    Attributes:
        timer: the timer's name (``"meter-1/heartbeat"``).
        number: the tick's index on its schedule (FIXED: N in ``origin + N * interval``).
        due: when the tick was due.
        started: when the callback started (never before ``due``).
        finished: when the callback finished.
        skipped_before: due times skipped between the previous tick and this one.
        outcome: how the callback ended.
        error: the exception for ERROR/TIMEOUT outcomes, else ``None``.
        overrun: the tick finished after the next due time (FIXED) or ran longer than its
            interval (DELAY).
    """

    timer: str
    number: int
    due: float
    started: float
    finished: float
    skipped_before: int
    outcome: Outcome
    error: BaseException | None
    overrun: bool

    @property
    def lateness(self) -> float:
        """Seconds between the due time and the start of the callback (>= 0)."""
        return self.started - self.due

    @property
    def duration(self) -> float:
        """Seconds the callback ran."""
        return self.finished - self.started


TickObserver = Callable[[TickRecord], None]
"""An observer receives every tick record; it runs on the loop and must not block."""


@dataclass(frozen=True, slots=True)
class TimerStatistics:
    """A snapshot of a timer's counters (see :meth:`service.Timer.statistics`).

    Attributes:
        ticks: callbacks that finished (any outcome).
        overruns: ticks that finished after the next due time (DELAY: ran longer than interval).
        skipped: due times skipped, never run (FIXED only).
        errors: ticks that raised an exception (timeouts included).
        timeouts: ticks cancelled because they exceeded the per-tick timeout.
        last_lateness: lateness of the most recent tick in seconds, ``None`` before the first.
        max_lateness: the largest lateness seen in seconds, ``None`` before the first tick.
        last_duration: duration of the most recent tick in seconds, ``None`` before the first.
        running: the timer is started (not stopped).
        in_flight: a callback is running right now.
        next_due: loop time of the next due tick, ``None`` when stopped or not yet known.
    """

    ticks: int
    overruns: int
    skipped: int
    errors: int
    timeouts: int
    last_lateness: float | None
    max_lateness: float | None
    last_duration: float | None
    running: bool
    in_flight: bool
    next_due: float | None
