"""A timer's state and its tick path: what happens when the scheduler runs a due entry.

:class:`TimerTicks` holds everything a :class:`~service.timer.Timer` is made of and the methods
that run on a tick (``_fire``, ``_complete``, ``_reschedule``); the public surface (start,
stop, statistics) is :class:`~service.timer.Timer`, its subclass.

The hot path: a synchronous FIXED callback that succeeds is completed inline in ``_fire``
(no task, no record unless there are observers, the next entry pushed straight onto the
scheduler's heap); everything else goes through ``_complete``. A tick on that path keeps as
little as it can, because on a big gateway every object a tick keeps is released cold one
interval later, and every per-timer object it reads is a cache line: the next slot is three
fields of the timer rather than a tuple, the grid is one float (origin + phase) and the
interval, and while such ticks follow each other the tick count and the last due time are
implicit (the count is the slot number plus an offset, the last due time the grid point before
the next; ``_settle`` stores them before anything else changes the slot).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from heapq import heappush
from typing import Any

from service.intervals import to_seconds
from service.records import Outcome, SchedulePolicy, TickObserver, TickRecord
from service.schedule import FixedSchedule, Schedule, Slot, SlotFields, as_slot
from service.scheduler import Scheduler
from service.tick_task import TickTaskSpec, start_tick_task

__all__ = ["TimerCallback", "TimerTicks"]

logger = logging.getLogger("gatebeat.engine")

TimerCallback = Callable[[], Any]
"""A plain function or a coroutine function taking no arguments."""

_new_record = tuple.__new__  # builds a TickRecord without NamedTuple's Python-level __new__


class TimerTicks:
    """A timer's state and tick path; use :class:`~service.timer.Timer`, which validates."""

    # Slots, in this order on purpose: the first sixteen are what a tick reads and writes, kept
    # together so that a tick touches three cache lines of the timer instead of five.
    # fmt: off
    __slots__ = (  # noqa: RUF023
        "_inflight_busy", "_scheduler", "_number", "_due", "_token", "_run_in_thread",
        "_callback", "_lean", "_grid_base", "_grid_interval", "_implicit", "_last_started",
        "_last_finished", "_max_lateness", "_observers", "_pending_skipped",
        "__weakref__", "_current", "_error_streak", "_errors", "_fixed", "_grid_phase",
        "_has_slot", "_inflight", "_last_due", "_name", "_notifying", "_origin", "_overruns",
        "_policy",
        "_running", "_schedule", "_skipped", "_task_spec", "_ticks", "_ticks_offset", "_timeout",
        "_timeouts", "_waiters",
    )
    # fmt: on

    def __init__(
        self,
        name: str,
        callback: TimerCallback,
        policy: SchedulePolicy,
        schedule: Schedule,
        *,
        timeout: float | timedelta | None,
        run_in_thread: bool,
        observers: Iterable[TickObserver],
    ) -> None:
        self._name = name
        self._callback = callback
        self._policy = policy
        self._schedule = schedule
        # FIXED grids get an inlined fast path in _complete (same arithmetic as FixedSchedule).
        self._fixed = fixed = schedule if type(schedule) is FixedSchedule else None
        self._grid_phase = fixed.phase if fixed is not None else 0.0
        self._grid_interval = fixed.interval if fixed is not None else 0.0
        self._timeout = (
            None if timeout is None else to_seconds(timeout, what=f"timer {name!r} timeout")
        )
        self._run_in_thread = run_in_thread
        self._task_spec: TickTaskSpec | None = None
        # A tuple, replaced on change: observers may add or remove observers while notified.
        self._observers: tuple[TickObserver, ...] = tuple(observers)

        self._scheduler: Scheduler | None = None
        self._token = 0
        self._running = False
        # The next slot (number, due, origin), kept as three fields rather than a tuple: a
        # tuple would be allocated every tick and freed, cold, an interval later.
        self._has_slot = False
        self._number = 0
        self._due = 0.0
        self._origin = 0.0
        # FIXED: origin + phase, the first sum of FixedSchedule.due's arithmetic, kept so that
        # a tick reads one float of the timer's grid instead of two.
        self._grid_base = self._grid_phase
        self._inflight: asyncio.Task[None] | None = None
        self._inflight_busy = False
        self._current: Slot | None = None
        self._pending_skipped = 0
        self._waiters: list[asyncio.Future[None]] = []
        # Observers are being told about a tick whose successor is not armed yet (start()
        # from an observer arms one and clears it).
        self._notifying = False

        self._ticks = 0
        self._overruns = 0
        self._skipped = 0
        self._errors = 0
        self._timeouts = 0
        self._error_streak = 0
        # The inline completion in _fire applies (FIXED, in the loop, no failure streak).
        self._lean = self._fixed is not None and not run_in_thread
        # The last tick's times, as the very float objects the tick produced: lateness and
        # duration are computed when asked, so a tick allocates no float for them.
        self._last_due: float | None = None
        # While True, a run of lean ticks leaves the tick count and the last due time implicit
        # (ticks == _number + _ticks_offset; the last tick was _number - 1 on _origin's grid),
        # so such a tick replaces no int or float of the timer but the two times below; every
        # other path first stores them (_settle).
        self._implicit = False
        self._ticks_offset = 0
        self._last_started = 0.0
        self._last_finished = 0.0
        self._max_lateness = -math.inf

    def _fire(self, due: float, started: float) -> float:
        """Run the tick due at ``due``; the scheduler's clock read ``started`` just now.

        Returns the clock reading after the tick, so a scheduler running many ticks in a row
        reads the clock once per tick. A synchronous FIXED callback that succeeds (the hot path
        of a big gateway) is completed inline; everything else goes through :meth:`_complete`.
        """
        if self._inflight_busy:  # never with a live entry; kept as a guard against overlap
            return started
        # Set while an entry is live (start() sets them before scheduling); read before the
        # callback, which may stop or restart the timer.
        scheduler: Scheduler = self._scheduler  # type: ignore[assignment]
        number = self._number
        token = self._token
        self._inflight_busy = True
        if self._run_in_thread:
            future = scheduler.loop.run_in_executor(None, self._callback)
            self._start_task((number, due, self._origin), token, started, future)
            return started
        try:
            result = self._callback()
        except asyncio.CancelledError:
            finished = scheduler.clock()
            tick = self._tick_slot(number, due, token)
            self._complete(tick, token, started, finished, Outcome.CANCELLED)
            raise
        except Exception as exc:
            finished = scheduler.clock()
            self._complete(
                self._tick_slot(number, due, token), token, started, finished, Outcome.ERROR, exc
            )
            return finished
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: recorded, then on its way
            finished = scheduler.clock()
            self._complete(
                self._tick_slot(number, due, token), token, started, finished, Outcome.ERROR, exc
            )
            raise
        finished = scheduler.clock()
        if result is not None and inspect.isawaitable(result):
            self._start_task(self._tick_slot(number, due, token), token, started, result)
            return finished
        if not self._lean or token != self._token:
            self._complete(
                self._tick_slot(number, due, token), token, started, finished, Outcome.OK
            )
            return finished
        # What _complete does for exactly this case, inline: the same arithmetic as
        # FixedSchedule.due(origin, number + 1), so the same float.
        self._inflight_busy = False
        following = number + 1
        next_due = self._grid_base + following * self._grid_interval
        lateness = started - due
        if not self._implicit:  # a run of lean ticks begins: count them by the slot number
            self._ticks_offset = self._ticks - number
            self._implicit = True
        self._number = following  # counts this tick; _due moves on below
        self._last_started = started
        self._last_finished = finished
        if lateness > self._max_lateness:
            self._max_lateness = lateness
        overrun = finished > next_due
        if overrun:  # counted before observers see the record, as in _complete
            self._overruns += 1
        if self._observers:
            fields = (number, due, started, finished, self._pending_skipped, Outcome.OK, None)
            self._notify(_new_record(TickRecord, (self._name, *fields, overrun)))
            if token != self._token:  # an observer stopped it (see _complete): nothing to arm
                return finished
        if self._pending_skipped:
            self._pending_skipped = 0
        if overrun:
            self._reschedule((number, due, self._origin), token, started, finished)
            return finished
        self._due = next_due
        # Scheduler.schedule, inline: this runs inside the scheduler's dispatch, which arms
        # the wake-up once the pass is over.
        if next_due == scheduler._fill_when:
            fill = scheduler._fill
            if fill is not None:
                fill.append(self)
                fill.append(token)
            else:
                scheduler.schedule(next_due, self)  # the second timer due then opens a bucket
        else:
            heappush(scheduler._heap, (next_due, next(scheduler._sequence), self, token))
            scheduler._fill_when = next_due
            scheduler._fill = None
        return finished

    def _start_task(
        self, tick: SlotFields, token: int, started: float, awaitable: Awaitable[Any]
    ) -> None:
        """Run the rest of a tick (an awaitable, or a thread's future) as a task."""
        scheduler = self._scheduler
        assert scheduler is not None
        spec = self._task_spec
        if spec is None or spec.loop is not scheduler.loop:  # built once per loop, not per tick
            spec = self._task_spec = TickTaskSpec(
                loop=scheduler.loop,
                clock=scheduler.clock,
                name=self._name,
                timeout=self._timeout,
                in_thread=self._run_in_thread,
                complete=self._complete,
                is_current=lambda task: self._inflight is task,
            )
        slot = self._current = as_slot(tick)
        self._inflight = start_tick_task(spec, slot, token, started, awaitable)

    def _notify(self, record: TickRecord) -> None:
        self._notifying = True
        try:
            for observer in self._observers:
                try:
                    observer(record)
                except Exception:
                    logger.exception("timer=%s observer %r failed", self._name, observer)
        finally:
            self._notifying = False

    def _complete(
        self,
        slot: SlotFields,
        token: int,
        started: float,
        finished: float,
        outcome: Outcome,
        error: BaseException | None = None,
    ) -> None:
        self._settle()
        self._inflight = None
        self._inflight_busy = False
        self._current = None
        fixed = self._fixed
        if fixed is not None:
            # FixedSchedule.due(origin, number + 1), inlined: the same expression, so the
            # same float, as the schedule's own arithmetic.
            next_due = slot[2] + fixed.phase + (slot[0] + 1) * fixed.interval
            overrun = finished > next_due
        else:
            overrun = self._schedule.overrun(as_slot(slot), started, finished)
        lateness = started - slot[1]
        self._ticks += 1
        if overrun:
            self._overruns += 1
        self._last_due = slot[1]
        self._last_started = started
        self._last_finished = finished
        if lateness > self._max_lateness:
            self._max_lateness = lateness
        if outcome is Outcome.OK:
            if self._error_streak:
                logger.info(
                    "timer=%s recovered after %d failed ticks", self._name, self._error_streak
                )
                self._error_streak = 0
                self._lean = fixed is not None and not self._run_in_thread
        elif outcome is not Outcome.CANCELLED:
            self._errors += 1
            if outcome is Outcome.TIMEOUT:
                self._timeouts += 1
            self._error_streak += 1
            self._lean = False  # until it recovers: _complete logs the recovery
            if self._error_streak == 1:
                logger.warning(
                    "timer=%s tick failed outcome=%s error=%r (further failures are counted, "
                    "not logged, until it recovers)",
                    self._name,
                    outcome.value,
                    error,
                )
        skipped_before = self._pending_skipped
        if self._observers:
            token_before = self._token
            fields = (slot[0], slot[1], started, finished, skipped_before, outcome, error)
            self._notify(TickRecord(self._name, *fields, overrun))
            if self._token != token_before:
                # An observer stopped the timer, and maybe started it again: the tick was no
                # longer in flight, so stop() and start() did all there is to do.
                return
        self._pending_skipped = 0
        if fixed is not None and token == self._token and next_due >= finished and self._running:
            # The common case: the tick ended before the next grid point; nothing skipped.
            assert self._scheduler is not None
            self._number, self._due = slot[0] + 1, next_due
            self._scheduler.schedule(next_due, self)
            return
        self._reschedule(slot, token, started, finished)

    def _reschedule(self, slot: SlotFields, token: int, started: float, finished: float) -> None:
        """Arm the slot after ``slot`` (catching up past skipped due times), or wind down."""
        self._settle()
        if not self._running:
            self._wake_waiters()
            return
        scheduler = self._scheduler
        assert scheduler is not None
        following: SlotFields | None
        if token == self._token:
            following = self._schedule.following(as_slot(slot), started, finished)
        elif self._has_slot:  # restarted while this callback was in flight: go on from there
            following = (self._number, self._due, self._origin)
        else:
            following = None
        if following is None:
            self._pending_skipped = 0
            self._set_slot(None)
            self._running = False
            self._wake_waiters()
            return
        caught_up, skipped = self._schedule.catch_up(as_slot(following), finished)
        self._skipped += skipped
        self._pending_skipped = skipped
        self._set_slot(caught_up)
        scheduler.schedule(caught_up.due, self)

    def _set_slot(self, slot: SlotFields | None) -> None:
        """Make ``slot`` the next one (``None``: no next slot)."""
        self._settle()
        if slot is None:
            self._has_slot = False
            return
        self._number, self._due, origin = slot
        if origin != self._origin:
            self._origin = origin
            self._grid_base = origin + self._grid_phase
        self._has_slot = True

    def _tick_slot(self, number: int, due: float, token: int) -> SlotFields:
        """The slot of the tick whose callback just returned: the timer's own, unless the
        callback stopped (and maybe restarted) it; stop() kept that slot in ``_current``."""
        if token != self._token and self._current is not None:
            return self._current
        return (number, due, self._origin)

    def _settle(self) -> None:
        """Store the tick count and last due time that a run of lean ticks left implicit."""
        if self._implicit:
            self._implicit = False
            self._ticks = self._number + self._ticks_offset
            self._last_due = self._grid_due(self._number - 1)

    def _grid_due(self, number: int) -> float:
        """Tick ``number``'s due time on the current FIXED grid: ``FixedSchedule.due``'s
        arithmetic, so the very float the tick was due at."""
        return self._grid_base + number * self._grid_interval

    def _wake_waiters(self) -> None:
        for waiter in self._waiters:
            if not waiter.done() and not waiter.get_loop().is_closed():
                waiter.set_result(None)
