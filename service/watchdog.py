"""Loop-lag monitor and service health: is the event loop responsive, are heartbeats running?

A :class:`Watchdog` runs one FIXED :class:`~service.timer.Timer` (every 0.25 s by default) whose
own lateness is the loop lag: a tick is late exactly as long as the loop was too busy to run
it. Each tick also marks devices stale (:meth:`~service.health.DeviceHealth.check_stale`).

:meth:`Watchdog.check` is what ``/healthz`` serves. It runs on the exporter's thread, so it
also notices a loop that is blocked *right now* (no tick can run to measure it): the time
since the last tick beyond one interval counts as lag. Healthy means the lag is below
``max_lag`` and every watched heartbeat timer finished a tick within its stale time, or has a
tick in flight. A device that does not answer makes ``gatebeat_device_up`` drop, not the
service unhealthy: restarting the gateway would not fix the device. So a tick that waits on a
slow device (bounded by its transport timeout, or by the timer's ``timeout``) never makes its
timer stale; the stale-timer check catches an engine that stopped scheduling a timer.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from service.records import SchedulePolicy, TickRecord
from service.timer import Timer


class StaleCheck(Protocol):
    """Anything with ``check_stale(now)``: a DeviceHealth, or a device runtime."""

    def check_stale(self, now: float) -> bool: ...


__all__ = ["HealthReport", "Watchdog"]

HealthReport = tuple[bool, dict[str, object]]
"""``(ok, reason)``: what ``/healthz`` turns into 200/503 and a JSON body."""


@dataclass(eq=False, slots=True)
class _Watched:
    timer: Timer
    stale_after: float
    last_ran: float | None
    in_flight: float  # seconds more a timer with a tick in flight gets


class Watchdog:
    """Measure loop lag with a FIXED timer and judge whether the service is healthy.

    Args:
        interval: seconds between the watchdog's own ticks (finite, > 0).
        max_lag: loop lag in seconds above which the service is unhealthy (finite, > 0).
        on_lag: called on the loop with every lag measurement in seconds
            (``MetricsHub.observe_loop_lag``).
        devices: returns the device healths whose staleness is checked on every tick.

    Raises:
        ValueError: ``interval`` or ``max_lag`` out of range (the message names the value).
    """

    def __init__(
        self,
        *,
        interval: float = 0.25,
        max_lag: float = 1.0,
        on_lag: Callable[[float], None] | None = None,
        devices: Callable[[], Iterable[StaleCheck]] | None = None,
    ) -> None:
        for what, value in (("interval", interval), ("max_lag", max_lag)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"watchdog: {what} must be finite and > 0 seconds, got {value!r}")
        self.interval = float(interval)
        self.max_lag = float(max_lag)
        self._on_lag = on_lag
        self._devices = devices
        self._timer = Timer(
            self.interval,
            self._beat,
            SchedulePolicy.FIXED,
            name="gatebeat/watchdog",
            observers=(self._observe,),
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_beat: float | None = None
        self._last_beat_monotonic = 0.0
        self._lag: float | None = None
        self._lock = threading.Lock()
        self._watched: dict[str, _Watched] = {}

    # -- lifecycle (event loop) --------------------------------------------------------------

    def start(self) -> None:
        """Start the watchdog timer on the running loop."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        now = loop.time()
        self._last_beat = now
        self._last_beat_monotonic = time.monotonic()
        with self._lock:
            for watched in self._watched.values():
                if watched.last_ran is None:
                    watched.last_ran = now
        self._timer.start()

    def stop(self) -> None:
        """Stop the watchdog timer; :meth:`check` reports unhealthy from now on. Idempotent."""
        self._timer.stop()

    async def wait_stopped(self) -> None:
        """Return once the watchdog timer has stopped."""
        await self._timer.wait_stopped()

    @property
    def timer(self) -> Timer:
        """The watchdog's own FIXED timer (for its statistics)."""
        return self._timer

    @property
    def lag_seconds(self) -> float | None:
        """The last measured loop lag in seconds, ``None`` before the first tick."""
        return self._lag

    def watch(
        self, timer: Timer, *, stale_after: float | None = None, in_flight: float | None = None
    ) -> None:
        """Require ``timer`` to finish a tick at least every ``stale_after`` seconds.

        A timer with a tick in flight gets ``in_flight`` seconds more: the engine did start it,
        and a tick waiting on a slow device is the device's problem (``gatebeat_device_up``).
        But not for ever: a tick still in flight after that is wedged (a driver awaiting
        something that never comes), and the timer is stale.

        Args:
            timer: a heartbeat timer; ignored by :meth:`check` while it is not running.
            stale_after: seconds; default ``3 * interval + max_lag``.
            in_flight: seconds more while a tick is in flight (the longest a tick can take);
                default the timer's ``timeout``, or ``stale_after`` when it has none.

        Raises:
            ValueError: no ``stale_after`` for a timer without an interval, or out of range.
        """
        if stale_after is None:
            if timer.interval is None:
                raise ValueError(
                    f"watchdog: timer {timer.name!r} has no interval; give stale_after seconds"
                )
            stale_after = 3 * timer.interval + self.max_lag
        if not (math.isfinite(stale_after) and stale_after > 0):
            raise ValueError(
                f"watchdog: timer {timer.name!r} stale_after must be finite and > 0 seconds, "
                f"got {stale_after!r}"
            )
        since = self._loop.time() if self._loop is not None else None
        if in_flight is None:
            in_flight = timer.timeout if timer.timeout is not None else stale_after
        watched = _Watched(timer, stale_after, since, in_flight)

        def ran(record: TickRecord) -> None:
            watched.last_ran = record.finished

        timer.add_observer(ran)
        with self._lock:
            self._watched[timer.name] = watched

    def unwatch(self, timer: Timer) -> None:
        """Stop requiring ``timer`` to run (the device was removed). Idempotent."""
        with self._lock:
            self._watched.pop(timer.name, None)

    # -- health (any thread) -----------------------------------------------------------------

    def check(self) -> HealthReport:
        """Return ``(ok, reason)``; safe to call from the exporter's thread.

        ``reason`` holds ``status``, ``loop_lag_seconds``, ``max_loop_lag_seconds``,
        ``stale_timers`` (name -> seconds since the last finished tick) and ``problems``.
        """
        loop, last_beat = self._loop, self._last_beat
        if loop is None or last_beat is None or not self._timer.running:
            return False, {"status": "unhealthy", "problems": ["watchdog is not running"]}
        now = loop.time()
        # uvloop caches loop.time() per iteration, so a blocked loop is also measured on the
        # monotonic clock; under virtual time the loop clock is the one that moves.
        since_beat = max(now - last_beat, time.monotonic() - self._last_beat_monotonic)
        overdue = max(0.0, since_beat - self.interval)
        lag = max(self._lag or 0.0, overdue)
        problems: list[str] = []
        if lag > self.max_lag:
            problems.append(f"loop lag {lag:.3f} s > {self.max_lag} s")
        with self._lock:
            watched = tuple(self._watched.values())
        stale: dict[str, float] = {}
        for entry in watched:
            if not entry.timer.running or entry.last_ran is None:
                continue
            age = now - entry.last_ran
            limit = entry.stale_after
            if entry.timer.in_flight:  # a slow device, up to a bound (see watch())
                limit += entry.in_flight
            if age > limit:
                stale[entry.timer.name] = round(age, 3)
                busy = ", a tick in flight" if entry.timer.in_flight else ""
                problems.append(
                    f"timer {entry.timer.name} last ran {age:.3f} s ago "
                    f"(stale after {limit} s{busy})"
                )
        ok = not problems
        return ok, {
            "status": "ok" if ok else "unhealthy",
            "loop_lag_seconds": round(lag, 6),
            "max_loop_lag_seconds": self.max_lag,
            "stale_timers": stale,
            "problems": problems,
        }

    # -- engine callbacks (event loop) ---------------------------------------------------------

    def _beat(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        self._last_beat = now
        self._last_beat_monotonic = time.monotonic()
        if self._devices is not None:
            for health in self._devices():
                health.check_stale(now)

    def _observe(self, record: TickRecord) -> None:
        self._lag = record.lateness
        if self._on_lag is not None:
            self._on_lag(record.lateness)
