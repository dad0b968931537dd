"""One heap of due-time buckets and one wake-up per event loop: the core of the timer engine.

Why not a task per timer: a sleeping task costs a coroutine frame, a future and a loop handle
each, and ten thousand of them make the loop sort ten thousand handles. Here the scheduler keeps
one binary heap of *buckets* ``(due, sequence, [timer, token, ...])`` and a single wake-up for
the earliest one; when it fires, every due entry runs in one pass and a synchronous callback
runs inline, without a task.

Why buckets: the timers of a big gateway are due together (a thousand aligned heartbeats on the
same 1 s grid). A heap entry is ``(due, sequence, timer, token)``; the timers scheduled right
after it for exactly the same due time go into one bucket entry ``(due, sequence, [timer,
token, timer, token, ...], -1)``, so they cost two list appends each instead of a heap push and
pop whose comparisons all tie on the due time: at ten thousand timers due together that is
cheaper per tick than the bare reference heap. The bucket is flat, without a ``(timer, token)``
tuple per entry: such a tuple lives for a whole interval, so every few hundred ticks the
garbage collector ran and walked them all (cachegrind, 10,000 aligned timers: 27 last-level
and 55 first-level cache misses per tick with the tuples, 14 and 18 without). A timer due at a
time of its own costs one plain entry, as in the reference. Stopped timers are dropped lazily:
their entries carry an old token and are skipped when they come up.

Never early: an entry runs only once the engine's clock has reached its due time; a wake-up
that comes too soon re-arms (on uvloop, whose ``call_at`` rounds to whole milliseconds, a
millisecond on, so an early wake-up never spins).

While a wake-up dispatches, rescheduled timers only go into the heap; the wake-up is armed once
at the end, for whatever is due first. Buckets created during a pass wait for the next pass, so
a schedule that is due again the moment its callback returns cannot hold the loop forever.

The clock: the engine reads time only from the running loop, at full resolution. On asyncio's
own loops ``loop.time()`` *is* ``time.monotonic()``, which the engine then calls directly (the
same value, without a Python-level method call per tick). uvloop's ``loop.time()`` is
``time.monotonic()`` truncated to whole milliseconds; there the engine reads the untruncated
``time.monotonic()``. Any other loop (virtual time in tests) is read through ``loop.time()``.

Precise wake-ups (``wakeup="precise"``, the default on Linux with a real clock): asyncio rounds
the selector's timeout up to whole milliseconds, so a bare ``call_at`` starts 1-2 ms late. The
scheduler instead arms a Linux ``timerfd`` at the due time (:mod:`service.wakeup`), which wakes
the loop's selector within a fraction of a millisecond, with one system call per arm and no
thread. Dense schedules would then wake the loop for every tick, so wake-ups are coalesced like
the kernel's timer slack: after a wake-up that ran ticks, the next one comes at least
``PRECISE_SLACK`` seconds later, and everything due by then runs together. While the schedule
stays that dense, the timerfd repeats on its own every ``PRECISE_SLACK`` seconds
(:meth:`~service.wakeup.TimerFdWaker.arm_on_grid`), so a wake-up costs a ``read()`` instead
of reprogramming the timer. Lateness stays under a millisecond (about ``PRECISE_SLACK`` at p99
on a dense schedule), and the loop wakes about as often as with its own millisecond rounding.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, Protocol

from service.wakeup import TimerFdWaker, timerfd_available

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["PRECISE_SLACK", "Scheduler", "WakeupMode", "engine_clock"]

WakeupMode = Literal["auto", "loop", "precise"]
PRECISE_SLACK = 0.0009
"""Seconds: with precise wake-ups, the least time between two wake-ups that ran ticks."""

_CLOCK_MATCH_TOLERANCE = 0.005
_MILLISECOND = 0.001
_EMPTY_FILL_WHEN = math.nan  # never equal to a due time: no bucket is open for appends


class _Schedulable(Protocol):
    _token: int  # >= 0

    def _fire(self, due: float, now: float) -> float: ...


_Bucket = list[_Schedulable | int]  # flat: timer, token, timer, token, ...
_BUCKET = -1  # the token field of a bucket entry

_schedulers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Scheduler] = (
    weakref.WeakKeyDictionary()
)


class Scheduler:
    """The per-loop heap of due timers. Obtain it with :meth:`for_loop`; timers do this."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, wakeup: WakeupMode = "auto") -> None:
        self._loop = loop
        self.clock: Callable[[], float] = engine_clock(loop)
        """The engine's clock for this loop (seconds); see the module docstring."""
        self._heap: list[tuple[float, int, _Schedulable | _Bucket, int]] = []
        self._sequence = itertools.count()
        # The due time of the newest entry, and its bucket once a second timer joined it.
        self._fill_when = _EMPTY_FILL_WHEN
        self._fill: _Bucket | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._handle_when = math.inf
        self._dispatching = False
        self._millisecond_timers = _is_uvloop(loop)
        self._last_run = -math.inf
        self._waker: TimerFdWaker | None = None
        if wakeup == "precise" or (
            wakeup == "auto" and timerfd_available() and _clock_is_monotonic(loop)
        ):
            self._waker = TimerFdWaker(loop, self._on_wake)

    @classmethod
    def for_loop(
        cls, loop: asyncio.AbstractEventLoop | None = None, *, wakeup: WakeupMode | None = None
    ) -> Scheduler:
        """The scheduler of ``loop`` (default: the running loop), created on first use.

        ``wakeup`` applies when the scheduler is created: ``"loop"`` uses only ``call_at``,
        ``"precise"`` uses a Linux ``timerfd`` (``RuntimeError`` where there is none),
        ``"auto"`` (the default) uses it on Linux when the loop's clock is the real monotonic
        clock (so never on virtual time in tests). The environment variable
        ``GATEBEAT_WAKEUP`` sets the default.
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
        """Whether precise (``timerfd``) wake-ups are in use."""
        return self._waker is not None

    def __len__(self) -> int:
        """Scheduled timer entries (buckets counted by their members), stale ones included."""
        count = 0
        for _, _, item, _ in self._heap:
            count += len(item) // 2 if isinstance(item, list) else 1
        return count

    def next_wake(self) -> float:
        """When the engine next needs the loop, on :attr:`clock` (seconds).

        ``-inf`` while it is running ticks, ``inf`` when nothing is armed. Safe to call from
        any thread: a hint read without a lock, for work that should keep out of the ticks'
        way (the exporter's renders, :mod:`service.scrape_gate`).
        """
        return -math.inf if self._dispatching else self._handle_when

    def schedule(self, when: float, item: _Schedulable) -> None:
        """Run ``item._fire(when, now)`` once the clock reaches ``when`` (if its token holds)."""
        if when == self._fill_when:
            fill = self._fill
            if fill is None:
                fill = self._fill = []
                heapq.heappush(self._heap, (when, next(self._sequence), fill, _BUCKET))
                # The plain entry it joins may have run already (it stays open for appends).
                if when < self._handle_when and not self._dispatching:
                    self._arm(when)
            fill.append(item)
            fill.append(item._token)
            return
        heapq.heappush(self._heap, (when, next(self._sequence), item, item._token))
        self._fill_when = when
        self._fill = None
        if when < self._handle_when and not self._dispatching:
            self._arm(when)

    def close(self) -> None:
        """Drop every entry and release the wake-up."""
        self._heap.clear()
        self._fill_when, self._fill = _EMPTY_FILL_WHEN, None
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
            entries: _Bucket = [item, token] if token != _BUCKET else item  # type: ignore[list-item,assignment]
            for timer, timer_token in _pairs(entries):
                if timer_token == timer._token:
                    yield when, timer

    def _arm(self, when: float) -> None:
        self._handle_when = when
        waker = self._waker
        if waker is not None:
            floor = self._last_run + PRECISE_SLACK
            if when < floor:  # dense: coalesce on a repeating grid of PRECISE_SLACK
                waker.arm_on_grid(when, floor, PRECISE_SLACK)
            else:
                waker.arm(when)
            return
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_at(when, self._on_wake)

    def _on_wake(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._dispatching = True  # first: next_wake() must not read "nothing armed" now
        self._handle_when = math.inf
        heap = self._heap
        heappop = heapq.heappop
        clock = self.clock
        now = clock()
        woke = now
        ran = False
        barrier = next(self._sequence)
        try:
            while heap:
                when, sequence, item, token = heap[0]
                # Time is read again before giving up: ticks take time.
                if sequence > barrier or (when > now and when > (now := clock())):
                    break
                heappop(heap)
                ran = True
                if token != _BUCKET:
                    if token == item._token:  # type: ignore[union-attr]
                        now = item._fire(when, now)  # type: ignore[union-attr]
                    continue
                if item is self._fill:
                    # The open bucket leaves the heap: later timers due then get a new entry.
                    self._fill_when, self._fill = _EMPTY_FILL_WHEN, None
                entries = iter(item)  # type: ignore[arg-type]
                try:
                    for item, token in zip(entries, entries, strict=False):  # type: ignore[assignment]
                        if token == item._token:  # type: ignore[union-attr]
                            now = item._fire(when, now)  # type: ignore[union-attr]
                except BaseException:
                    rest = list(entries)  # not reached yet: they run on the next pass
                    if rest:
                        heapq.heappush(heap, (when, sequence, rest, _BUCKET))
                    raise
        finally:
            self._dispatching = False
            if ran:
                self._last_run = woke
            while heap and _stale(heap[0]):
                if heappop(heap)[2] is self._fill:  # the open bucket left the heap: close it
                    self._fill_when, self._fill = _EMPTY_FILL_WHEN, None
            if heap:
                when = heap[0][0]
                if self._millisecond_timers and self._waker is None and not ran and when > now:
                    # Woken early by a loop that rounds timer delays to whole milliseconds
                    # (uvloop): arm a millisecond on instead of spinning until the clock moves.
                    when = max(when, now + _MILLISECOND)
                self._arm(when)
            elif self._waker is not None:
                self._waker.disarm()


def engine_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """The function the engine reads ``loop``'s time with (seconds); see the module docstring."""
    if type(loop).time is asyncio.BaseEventLoop.time:
        return time.monotonic  # BaseEventLoop.time() returns exactly this
    if _is_uvloop(loop) and _clock_is_monotonic(loop):
        return time.monotonic  # uvloop's time() is this, truncated to the millisecond
    return loop.time


def _stale(entry: tuple[float, int, _Schedulable | _Bucket, int]) -> bool:
    _, _, item, token = entry
    if token != _BUCKET:
        return token != item._token  # type: ignore[union-attr]
    return all(timer_token != timer._token for timer, timer_token in _pairs(item))  # type: ignore[arg-type]


def _pairs(bucket: _Bucket) -> Iterator[tuple[_Schedulable, int]]:
    """A flat bucket's ``(timer, token)`` pairs, without copying it (a bucket can be 10,000
    timers long, and :func:`_stale` usually decides on the first pair)."""
    entries = iter(bucket)
    return zip(entries, entries, strict=False)  # type: ignore[arg-type]


def _is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).__module__.partition(".")[0] == "uvloop"


def _clock_is_monotonic(loop: asyncio.AbstractEventLoop) -> bool:
    return abs(loop.time() - time.monotonic()) < _CLOCK_MATCH_TOLERANCE


def _wakeup_from_env() -> WakeupMode:
    import os

    value = os.environ.get("GATEBEAT_WAKEUP", "auto")
    if value not in ("auto", "loop", "precise"):
        raise ValueError(f"GATEBEAT_WAKEUP must be auto, loop or precise, got {value!r}")
    return value  # type: ignore[return-value]
