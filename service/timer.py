"""The public timer: a callback on a FIXED or DELAY schedule, with the engine's guarantees.

A :class:`Timer` owns a pure :class:`~service.schedule.Schedule` and at most one entry in its
loop's :class:`~service.scheduler.Scheduler`. The guarantees of DESIGN.md section 2 live here:

* a tick never starts before its due time, and time comes only from the running loop
  (the scheduler's :func:`~service.scheduler.engine_clock`);
* no overlap: while a callback is in flight nothing is armed; the next slot is computed when it
  finishes, and due times that passed meanwhile are skipped and counted (FIXED) or the next
  tick waits a full interval after completion (DELAY);
* ``stop()`` is synchronous and idempotent, callable from inside the callback; no callback
  starts after it returns; ``wait_stopped()`` waits for the in-flight one;
* exceptions are counted and logged, the schedule goes on; ``CancelledError`` is re-raised.

A synchronous callback runs inline on the scheduler's wake-up (no task); if it returns an
awaitable, or is a coroutine function, or ``run_in_thread=True``, the tick runs as a task. What
happens on a tick is :mod:`service.timer_ticks`; this module is the public surface.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable
from datetime import timedelta
from typing import Literal

from service.records import SchedulePolicy, TickObserver, TimerStatistics
from service.schedule import Schedule, Slot, schedule_for
from service.scheduler import Scheduler
from service.timer_ticks import TimerCallback, TimerTicks

__all__ = ["Timer", "TimerCallback"]

logger = logging.getLogger("gatebeat.engine")

_anonymous = 0


class Timer(TimerTicks):
    """Run ``callback`` every ``interval`` seconds on a FIXED or DELAY schedule.

    Args:
        interval: seconds (``float``) or a ``timedelta``; finite and > 0.
        callback: a plain function or coroutine function without arguments.
        schedule_policy: ``SchedulePolicy.FIXED`` (drift-free grid) or ``DELAY``.
        name: shown in logs and tick records (``"meter-1/heartbeat"``).
        phase: FIXED only: seconds in ``[0, interval)`` added to every due time, or ``"auto"``
            for a deterministic phase derived from ``name`` (spreads many timers).
        immediate: the first tick is due at start (+ phase) instead of one interval later.
        align: FIXED only: put the grid on the loop clock's multiples of ``interval`` (plus
            ``phase``) instead of on the start time, so timers with the same interval and phase
            tick at exactly the same instants whenever they were started; the first tick is the
            next grid point (see :class:`~service.schedule.FixedSchedule`).
        timeout: seconds a tick may run before it is cancelled and counted as a timeout. For
            ``run_in_thread`` callbacks (threads cannot be cancelled) the tick is counted as a
            timeout when it returns late, and no new tick starts until it has returned.
        run_in_thread: run a blocking synchronous callback in the loop's default executor.
        observers: functions called with every :class:`~service.records.TickRecord`.
        schedule: an explicit schedule (used by triggers); replaces interval/policy/phase.

    Raises:
        ValueError: interval, phase or timeout out of range (the message names the value).
        TypeError: ``callback`` is not callable.
    """

    __slots__ = ()

    def __init__(
        self,
        interval: float | timedelta,
        callback: TimerCallback,
        schedule_policy: SchedulePolicy = SchedulePolicy.FIXED,
        *,
        name: str | None = None,
        phase: float | timedelta | Literal["auto"] = 0.0,
        immediate: bool = False,
        align: bool = False,
        timeout: float | timedelta | None = None,
        run_in_thread: bool = False,
        observers: Iterable[TickObserver] = (),
        schedule: Schedule | None = None,
    ) -> None:
        global _anonymous
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        if name is None:
            _anonymous += 1
            name = f"timer-{_anonymous}"
        policy = SchedulePolicy(schedule_policy)
        if schedule is None:
            schedule = schedule_for(
                policy, interval, name=name, phase=phase, immediate=immediate, align=align
            )
        super().__init__(
            name,
            callback,
            policy,
            schedule,
            timeout=timeout,
            run_in_thread=run_in_thread,
            observers=observers,
        )

    # -- public surface -------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def schedule(self) -> Schedule:
        return self._schedule

    @property
    def timeout(self) -> float | None:
        """Seconds a tick may run before it is cancelled (a timeout), ``None`` for no bound."""
        return self._timeout

    @property
    def interval(self) -> float | None:
        """Seconds between ticks, ``None`` for schedules without a fixed interval."""
        return self._schedule.interval

    @property
    def schedule_policy(self) -> SchedulePolicy:
        return self._policy

    @property
    def running(self) -> bool:
        """Started and not stopped."""
        return self._running

    @property
    def in_flight(self) -> bool:
        """A callback is running now."""
        return self._inflight_busy

    @property
    def current_tick(self) -> Slot | None:
        """The slot (number, due time) of the callback running now, or ``None``.

        Lets a callback learn which tick it is serving without taking arguments.
        """
        if self._current is not None:
            return self._current
        if self._has_slot and self._inflight_busy:
            return Slot(self._number, self._due, self._origin)
        return None

    def add_observer(self, observer: TickObserver) -> None:
        """Call ``observer`` with every tick record from now on."""
        self._observers = (*self._observers, observer)

    def remove_observer(self, observer: TickObserver) -> None:
        observers = list(self._observers)
        observers.remove(observer)
        self._observers = tuple(observers)

    def start(self) -> None:
        """Start ticking; the first tick is due one interval from now (or now, ``immediate``).

        Needs a running loop. Starting again while the previous run's callback is still in
        flight is allowed: the new schedule begins now, but no tick starts until that callback
        has finished. Raises ``RuntimeError`` if the timer is already running.
        """
        loop = asyncio.get_running_loop()
        if self._running:
            raise RuntimeError(f"timer {self._name!r} is already running")
        if self._scheduler is None or self._scheduler.loop is not loop:
            if self._inflight_busy and self._scheduler is not None:
                if not self._scheduler.loop.is_closed():
                    raise RuntimeError(
                        f"timer {self._name!r} has a callback in flight on another loop"
                    )
                self._abandon_tick()
            self._scheduler = Scheduler.for_loop(loop)
        self._running = True
        self._token += 1
        self._pending_skipped = 0
        self._notifying = False  # started from an observer: the new slot is the next one
        slot = self._schedule.first(self._scheduler.clock())
        self._set_slot(slot)
        if slot is None:  # a schedule that never fires (a one-shot whose time has passed)
            self._running = False
            if not self._inflight_busy:
                self._wake_waiters()
            return
        if not self._inflight_busy:
            self._scheduler.schedule(slot.due, self)

    def _abandon_tick(self) -> None:
        """Forget the tick in flight on a closed loop: it can never complete there."""
        logger.warning(
            "timer=%s its loop closed while a tick was in flight; that tick is abandoned",
            self._name,
        )
        self._settle()
        self._inflight, self._inflight_busy, self._current = None, False, None
        self._waiters.clear()  # futures of the closed loop

    def stop(self, cancel: bool = False) -> None:
        """Stop ticking: after this returns no new callback starts. Idempotent.

        Args:
            cancel: also cancel the in-flight callback (it is recorded as CANCELLED). A
                ``run_in_thread`` callback cannot be interrupted: its tick stays in flight
                until the thread returns.

        A ``run_in_thread`` callback may call it from its thread: the stop is then handed to
        the loop, where it happens before the tick completes.
        """
        scheduler = self._scheduler
        if scheduler is not None and self._run_in_thread and _off_the_loop(scheduler.loop):
            scheduler.loop.call_soon_threadsafe(self.stop, cancel)
            return
        if self._running:
            if self._inflight_busy and self._current is None and self._has_slot:
                # current_tick stays right in the callback
                self._current = Slot(self._number, self._due, self._origin)
            self._running = False
            self._token += 1
            self._set_slot(None)
        if cancel and self._inflight is not None:
            self._inflight.cancel()
        if not self._inflight_busy:
            self._wake_waiters()

    async def wait_stopped(self) -> None:
        """Return once the timer is stopped and no callback of it is in flight."""
        while self._running or self._inflight_busy:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def statistics(self) -> TimerStatistics:
        """A frozen snapshot of the counters."""
        if self._implicit:
            ticks = self._number + self._ticks_offset
            last_due: float | None = self._grid_due(self._number - 1)
        else:
            ticks, last_due = self._ticks, self._last_due
        return TimerStatistics(
            ticks=ticks,
            overruns=self._overruns,
            skipped=self._skipped,
            errors=self._errors,
            timeouts=self._timeouts,
            last_lateness=None if last_due is None else self._last_started - last_due,
            max_lateness=None if self._max_lateness == -math.inf else self._max_lateness,
            last_duration=None if last_due is None else self._last_finished - self._last_started,
            running=self._running,
            in_flight=self._inflight_busy,
            # not known while a tick is in flight or being reported (it may yet be skipped)
            next_due=self._due
            if (self._running and self._has_slot and not self._inflight_busy)
            and not self._notifying
            else None,
        )

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        interval = self.interval
        every = f"{interval!r}s" if interval is not None else type(self._schedule).__name__
        return f"<{type(self).__name__} {self._name!r} {self._policy.name} {every} {state}>"


def _off_the_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether this thread is not ``loop``'s, while ``loop`` runs (a worker thread)."""
    try:
        return asyncio.get_running_loop() is not loop and loop.is_running()
    except RuntimeError:
        return loop.is_running()
