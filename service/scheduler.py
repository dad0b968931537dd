"""One heap and one loop handle per event loop: the core of gatebeat's timer engine.

Why not a task per timer: a sleeping task costs a coroutine frame, a future and a loop handle
each, and ten thousand of them make the loop sort ten thousand handles. Here every started timer
owns at most one entry in a binary heap ``(due, sequence, timer, token)``; the scheduler keeps a
single ``loop.call_at`` handle for the earliest entry and, when it fires, runs every entry that
is due in one pass. Scheduling is O(log n), a wake-up costs one handle however many timers are
due together, and a synchronous callback runs inline without creating a task. Stopped timers are
removed lazily: their entries carry an old token and are dropped when popped.

Never early: a loop may fire a ``call_at`` handle slightly before its time (asyncio's
clock-resolution slack, uvloop's millisecond rounding). An entry only runs once ``loop.time()``
has reached its due time; otherwise the handle is armed again (on uvloop, whose timers and
clock move in whole milliseconds, one millisecond on, so an early wake-up never spins).

While a wake-up dispatches, rescheduled timers only go into the heap; the one loop handle is
armed once at the end, for whatever is due first.

Precise wake-ups: asyncio rounds the selector's timeout up to whole milliseconds (twice, through
float rounding), so a bare ``call_at`` starts 1-2 ms late. With ``wakeup="precise"`` a helper
thread sleeps until the due time on the OS's nanosecond timer and wakes the loop through its
self-pipe (``call_soon_threadsafe``). The thread is used only when the loop would otherwise be
idle for at least ``PRECISE_MIN_GAP`` seconds, so thousands of densely packed timers cost no
extra thread wake-ups while sparse heartbeats start within a fraction of a millisecond. The
thread only wakes the loop; whether an entry is due is still decided by ``loop.time()``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import threading
import time
import weakref
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["PRECISE_MIN_GAP", "Scheduler", "WakeupMode"]

WakeupMode = Literal["auto", "loop", "precise"]
PRECISE_MIN_GAP = 0.002
"""Seconds: the precise thread is armed only when the next due time is at least this far off."""

_CLOCK_MATCH_TOLERANCE = 0.005
_MILLISECOND = 0.001
_THREAD_RECHECK = 1.0  # seconds: an idle wake-up thread checks this often whether its loop is gone


class _Schedulable(Protocol):
    _token: int

    def _fire(self, due: float) -> None: ...


class _PreciseWaker:
    """A daemon thread that wakes the loop at a target time on ``time.monotonic``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: _WakeTarget) -> None:
        self._loop = weakref.ref(loop)
        self._wake = weakref.WeakMethod(wake.on_precise_wake)
        self._cond = threading.Condition()
        self._target = math.inf
        self._closed = False
        self._offset = loop.time() - time.monotonic()
        self._thread = threading.Thread(target=self._run, name="gatebeat-precise-wake", daemon=True)
        self._thread.start()

    def arm(self, when: float) -> None:
        """Wake the loop at loop time ``when`` (replaces any earlier target)."""
        target = when - self._offset
        if target == self._target:
            return
        with self._cond:
            self._target = target
            self._cond.notify()

    def disarm(self) -> None:
        if self._target == math.inf:
            return  # already idle: no lock, no thread wake-up
        with self._cond:
            self._target = math.inf

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                loop = self._loop()
                if loop is None or loop.is_closed():
                    return
                remaining = self._target - time.monotonic()
                if remaining > 0:
                    del loop  # hold no strong reference while asleep
                    self._cond.wait(min(remaining, _THREAD_RECHECK))
                    continue
                self._target = math.inf
                wake = self._wake()
                if wake is None:
                    return
                try:
                    loop.call_soon_threadsafe(wake)
                except RuntimeError:  # the loop closed between the check and the call
                    return


class _WakeTarget(Protocol):
    def on_precise_wake(self) -> None: ...


_schedulers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Scheduler] = (
    weakref.WeakKeyDictionary()
)


class Scheduler:
    """The per-loop heap of due timers. Obtain it with :meth:`for_loop`; timers do this."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, wakeup: WakeupMode = "auto") -> None:
        self._loop = loop
        self._time = loop.time
        self._heap: list[tuple[float, int, _Schedulable, int]] = []
        self._sequence = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._handle_when = math.inf
        self._dispatching = False
        self._millisecond_timers = type(loop).__module__.partition(".")[0] == "uvloop"
        self._waker: _PreciseWaker | None = None
        if wakeup == "precise" or (wakeup == "auto" and _clock_is_monotonic(loop)):
            self._waker = _PreciseWaker(loop, self)

    @classmethod
    def for_loop(
        cls, loop: asyncio.AbstractEventLoop | None = None, *, wakeup: WakeupMode | None = None
    ) -> Scheduler:
        """The scheduler of ``loop`` (default: the running loop), created on first use.

        ``wakeup`` applies when the scheduler is created: ``"loop"`` uses only ``call_at``,
        ``"precise"`` adds the wake-up thread, ``"auto"`` (the default) adds it when the loop's
        clock is the real monotonic clock (so never on virtual time in tests). The environment
        variable ``GATEBEAT_WAKEUP`` sets the default.
        """
        loop = loop or asyncio.get_running_loop()
        scheduler = _schedulers.get(loop)
        if scheduler is None:
            mode = wakeup or _wakeup_from_env()
            scheduler = cls(loop, wakeup=mode)
            _schedulers[loop] = scheduler
        return scheduler

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def precise(self) -> bool:
        """Whether the precise wake-up thread is in use."""
        return self._waker is not None

    def __len__(self) -> int:
        """Heap entries, including stale ones not yet dropped."""
        return len(self._heap)

    def schedule(self, when: float, item: _Schedulable) -> None:
        """Run ``item._fire(when)`` once loop time reaches ``when`` (if its token is unchanged)."""
        heapq.heappush(self._heap, (when, next(self._sequence), item, item._token))
        if when < self._handle_when and not self._dispatching:
            self._arm(when)

    def close(self) -> None:
        """Drop every entry and stop the wake-up thread."""
        self._heap.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._handle_when = math.inf
        if self._waker is not None:
            self._waker.close()
            self._waker = None
        if _schedulers.get(self._loop) is self:
            del _schedulers[self._loop]

    def entries(self) -> Iterator[tuple[float, _Schedulable]]:
        """Live entries in no particular order (for diagnostics)."""
        for when, _, item, token in self._heap:
            if token == item._token:
                yield when, item

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            if self._handle_when == when:
                return
            self._handle.cancel()
        self._handle = self._loop.call_at(when, self._on_wake)
        self._handle_when = when
        if self._waker is not None:
            if when - self._loop.time() >= PRECISE_MIN_GAP:
                self._waker.arm(when)
            else:
                self._waker.disarm()

    def on_precise_wake(self) -> None:
        """Called on the loop by the wake-up thread; runs due entries if there are any."""
        if self._heap and self._heap[0][0] <= self._loop.time():
            self._on_wake()

    def _on_wake(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._handle_when = math.inf
        heap = self._heap
        heappop = heapq.heappop
        time_now = self._loop.time
        now = time_now()
        ran = False
        # Entries pushed during this pass wait for the next one, so a schedule that is due
        # again the moment its callback returns cannot hold the loop in this pass forever.
        barrier = next(self._sequence)
        self._dispatching = True
        try:
            while heap:
                entry = heappop(heap)
                when, sequence, item, token = entry
                if token != item._token:
                    continue  # a stopped or restarted timer's old entry
                if sequence > barrier or (when > now and when > (now := time_now())):
                    heapq.heappush(heap, entry)  # not due yet (time read again: ticks take time)
                    break
                ran = True
                item._fire(when)
        finally:
            self._dispatching = False
            while heap and heap[0][3] != heap[0][2]._token:
                heappop(heap)
            if heap:
                when = heap[0][0]
                if self._millisecond_timers and not ran and when > now:
                    # Woken early by a loop that rounds timer delays to whole milliseconds
                    # (uvloop): arm a millisecond on instead of spinning until the clock moves.
                    when = max(when, now + _MILLISECOND)
                self._arm(when)
            elif self._waker is not None:
                self._waker.disarm()


def _clock_is_monotonic(loop: asyncio.AbstractEventLoop) -> bool:
    return abs(loop.time() - time.monotonic()) < _CLOCK_MATCH_TOLERANCE


def _wakeup_from_env() -> WakeupMode:
    import os

    value = os.environ.get("GATEBEAT_WAKEUP", "auto")
    if value not in ("auto", "loop", "precise"):
        raise ValueError(f"GATEBEAT_WAKEUP must be auto, loop or precise, got {value!r}")
    return value  # type: ignore[return-value]
