"""Scrapes render between ticks: the exporter's threads keep out of a due tick's way.

The exporter renders ``/metrics`` on its own thread, in the same process as the event loop,
so a render (about a millisecond of Python for a small gateway) holds the GIL. A heartbeat
whose wake-up comes during a render waits for the GIL: up to the switch interval, and on a
busy two-core box, where the kernel queues the woken loop thread behind the render thread,
a millisecond or two more. Measured on this project's scrape-load test (100 scrapes a second
against two 20 ms heartbeats): when the scrapes happened to land just before the ticks, up to
a third of the ticks started more than 1 ms late.

:class:`ScrapeGate` holds a render back until the engine's next wake-up is further away than
a render takes (the slowest of the last few renders, plus a margin), so the render and the
tick do not overlap. A scrape is delayed by at most ``max_wait`` seconds (a few
milliseconds in practice: one tick's dispatch); on a schedule so dense that no gap is ever
long enough (thousands of timers spread over the interval), it renders after ``max_wait``
anyway. The engine's wake-up time is read without a lock, as a hint
(:meth:`Scheduler.next_wake <service.scheduler.Scheduler.next_wake>`).
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["ScrapeGate"]

DEFAULT_MAX_WAIT = 0.05
"""Seconds a render waits at most for a gap between ticks."""
DEFAULT_MARGIN = 0.0005
"""Seconds of gap a request leaves before the next tick, beyond its own expected duration."""
DEFAULT_DENSE_PAUSE = 10.0
"""Seconds the gate stops waiting after a wait found no gap (a schedule too dense for it)."""
_RECENT_RENDERS = 8
_FIRST_RENDER_GUESS = 0.002  # seconds, until a render has been timed
# Seconds: a request timed longer than this (a slow client reading its answer) counts as this
# long, so that one slow client does not make the gate look for gaps no schedule has.
_LONGEST_EXPECTED = 0.01
_RECHECK = 0.0002  # seconds between looks while the engine is dispatching


class ScrapeGate:
    """Lets exporter threads render only in gaps between the engine's wake-ups.

    Args:
        next_wake: returns the engine's next wake-up on ``clock`` (seconds), ``-inf`` while it
            is running ticks, ``inf`` when nothing is scheduled; called from exporter threads.
        clock: the engine's clock (seconds), which ``next_wake`` and the requests' durations
            are read on; must be readable from any thread.
        max_wait: real seconds a request waits at most for a gap.
        margin: seconds of gap to keep beyond a request's expected duration.
        dense_pause: seconds the gate lets requests through without waiting after a wait
            found no gap.
    """

    def __init__(
        self,
        next_wake: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
        *,
        max_wait: float = DEFAULT_MAX_WAIT,
        margin: float = DEFAULT_MARGIN,
        dense_pause: float = DEFAULT_DENSE_PAUSE,
    ) -> None:
        for field, value in (
            ("max_wait", max_wait),
            ("margin", margin),
            ("dense_pause", dense_pause),
        ):
            if not value >= 0:
                raise ValueError(f"scrape gate: {field} must be >= 0 seconds, got {value!r}")
        self._next_wake = next_wake
        self._clock = clock
        self._max_wait = max_wait
        self._margin = margin
        self._dense_pause = dense_pause
        self._dense_until = -math.inf
        self._lock = threading.Lock()
        self._recent: collections.deque[float] = collections.deque(maxlen=_RECENT_RENDERS)
        self.waited = 0
        """Renders that had to wait for a gap (a plain counter, for diagnostics and tests)."""
        self.gave_up = 0
        """Renders that found no gap within ``max_wait`` and ran anyway."""

    @property
    def expected_render(self) -> float:
        """Seconds a request is expected to take: the slowest of the last few (at most 10 ms)."""
        with self._lock:
            return max(self._recent, default=_FIRST_RENDER_GUESS)

    def wait_for_gap(self) -> float:
        """Block this (exporter) thread until a request fits before the next tick; seconds waited.

        After a wait that found no gap, the gate stops waiting for ``dense_pause`` seconds:
        on a schedule that dense, waiting only delays scrapes. Never call it on the event
        loop's thread: the loop would wait for itself.
        """
        clock = self._clock
        need = self.expected_render + self._margin
        # The deadline is real time even if the engine's clock is not (virtual time in tests).
        start = real = time.monotonic()
        give_up = start + (self._max_wait if real >= self._dense_until else 0.0)
        while True:
            gap = self._next_wake() - clock()
            if gap > need:
                break
            if real >= give_up:
                with self._lock:
                    self.gave_up += 1
                    self._dense_until = real + self._dense_pause
                break
            # Past the due time (or dispatching): look again shortly; else sleep to the tick.
            time.sleep(min(max(gap, 0.0) + _RECHECK, give_up - real))
            real = time.monotonic()
        waited = real - start
        if waited > 0:
            with self._lock:
                self.waited += 1
        return waited

    @contextmanager
    def between_ticks(self) -> Iterator[None]:
        """Wait for a gap, then time the body as one request."""
        self.wait_for_gap()
        began = self._clock()
        try:
            yield
        finally:
            took = self._clock() - began
            with self._lock:
                self._recent.append(min(took, _LONGEST_EXPECTED))
