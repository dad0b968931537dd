"""One device at run time: its session, health, timers and the driver's callbacks.

The runner builds one :class:`DeviceRuntime` per enabled device. Each poll becomes a DELAY
timer and each heartbeat a FIXED timer on the shared engine; the driver's extra ``TRIGGERS``
run through a :class:`~service.triggers_hooks.TriggerSet`. Every tick updates the device's
:class:`~service.health.DeviceHealth`: a success merges its readings and drops the fields the
timer produced last time but not this time (an optional value the device left out), a failure
drops the readings that timer produced (never exporting an old value as fresh) and counts the
error, and the exception is re-raised so the engine counts it in ``gatebeat_tick_errors_total``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from service.bus import Bus
from service.driver import Device, Readings, Tick, TimerSpec
from service.health import DeviceHealth, validate_field_name
from service.journal import EventJournal
from service.metrics import MetricsHub
from service.records import Outcome, SchedulePolicy, TickRecord
from service.settings_devices import ResolvedDevice, ResolvedTimer
from service.timer import Timer
from service.transports.factory import open_session
from service.triggers_hooks import TriggerSet
from service.watchdog import Watchdog

__all__ = ["DeviceRuntime"]

logger = logging.getLogger("gatebeat.runner")

DriverCallback = Callable[[Tick], Awaitable[Readings | None]]


class DeviceRuntime:
    """Timers, health and hooks of one device.

    Args:
        resolved: the device as validated by the settings.
        bus: the bus of its line (shared with the other devices on it).
        hub: the metrics hub; tick observers and the health collector are registered there.
        watchdog: heartbeats are watched for freshness (``/healthz``).
        journal: optional event journal for up/down transitions and overrun bursts.
        hook_timeout: seconds a start-up or shut-down hook may take.
    """

    def __init__(
        self,
        resolved: ResolvedDevice,
        *,
        bus: Bus,
        hub: MetricsHub,
        watchdog: Watchdog | None = None,
        journal: EventJournal | None = None,
        hook_timeout: float = 10.0,
    ) -> None:
        self.resolved = resolved
        self.name = resolved.name
        driver = resolved.driver
        settings = resolved.settings
        self.session: Any = open_session(
            resolved.transport,
            device=self.name,
            unit_id=resolved.unit_id,
            bus=bus,
            read_only=settings.read_only,
        )
        self.device = Device(
            name=self.name,
            driver=driver.name,
            config=resolved.config,
            session=self.session,
            settings=settings,
        )
        declare = getattr(driver.module, "writable", None)
        if declare is not None and hasattr(self.session, "allow_write"):
            specs = [t.spec for t in resolved.timers]
            for table, address in declare(self.device, specs):
                self.session.allow_write(table, address)
        if hasattr(self.session, "seal_writes"):
            self.session.seal_writes()
        self.health = DeviceHealth(
            self.name,
            driver.name,
            down_after_failures=settings.down_after_failures,
            stale_after=resolved.stale_after,
        )
        self._hub = hub
        self._journal = journal
        self._watchdog = watchdog
        self._hook_timeout = hook_timeout
        self._fields: dict[str, frozenset[str]] = {}
        self._was_up: bool | None = None
        self.timers: list[Timer] = []
        for timer_settings in resolved.timers:
            callback = driver.callback(timer_settings.kind)
            if callback is None:  # settings refuse this; kept as a guard for custom registries
                raise ValueError(
                    f"device {self.name!r}: driver {driver.name!r} has no "
                    f"{timer_settings.kind} callback for timer {timer_settings.name!r}"
                )
            self.timers.append(self._timer(timer_settings, callback))
        self._triggers = TriggerSet(hook_timeout=hook_timeout, stop_timeout=hook_timeout)
        for index, (trigger, task) in enumerate(getattr(driver.module, "TRIGGERS", ()) or ()):
            self._triggers.add(trigger, self._bind(task), name=f"{self.name}/trigger-{index}")

    def _timer(self, resolved: ResolvedTimer, callback: DriverCallback) -> Timer:
        heartbeat = resolved.kind == "heartbeat"
        timer: Timer

        async def tick() -> None:
            slot = timer.current_tick
            assert slot is not None
            await self._run_tick(resolved.spec, callback, slot.number, slot.due)

        timer = Timer(
            resolved.interval,
            tick,
            SchedulePolicy.FIXED if heartbeat else SchedulePolicy.DELAY,
            name=f"{self.name}/{resolved.name}",
            phase=resolved.phase if heartbeat else 0.0,
            align=resolved.align and heartbeat,
            immediate=resolved.immediate,
            timeout=resolved.timeout,
            observers=(
                self._hub.observer(self.name, resolved.name, resolved.interval),
                self._timeout_observer(resolved.spec),
            ),
        )
        if self._journal is not None:
            timer.add_observer(self._journal_observer(resolved.name))
        return timer

    async def _run_tick(
        self, spec: TimerSpec, callback: DriverCallback, number: int, due: float
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            readings = await callback(Tick(self.device, spec, number, due))
            for field in readings or ():  # a bad name fails the tick before anything is kept
                validate_field_name(field, device=self.name)
        except Exception as exc:
            fields = self._fields.get(spec.name, frozenset())
            self.health.record_failure(exc, now=loop.time(), fields=fields)
            self._note_transition()
            raise
        produced = frozenset(readings or ())
        before = self._fields.get(spec.name, frozenset())
        self._fields[spec.name] = produced
        # Fields this timer no longer produces go, unless another timer still produces them.
        others = frozenset().union(*(f for n, f in self._fields.items() if n != spec.name))
        gone = before - produced - others
        self.health.record_success(readings or None, now=loop.time(), dropped=gone)
        self._note_transition()

    def _timeout_observer(self, spec: TimerSpec) -> Callable[[TickRecord], None]:
        """An observer that counts a tick cut off by its ``timeout`` as a device failure.

        The engine cancels such a tick, so the callback sees a ``CancelledError``, the same
        as at shutdown; only the tick's record says which it was (``Outcome.TIMEOUT``).
        """

        def on_tick(record: TickRecord) -> None:
            if record.outcome is Outcome.TIMEOUT:
                error = record.error or TimeoutError(f"device {self.name!r}: tick timed out")
                fields = self._fields.get(spec.name, frozenset())
                now = asyncio.get_running_loop().time()
                self.health.record_failure(error, now=now, fields=fields)
                self._note_transition()

        return on_tick

    def check_stale(self, now: float) -> bool:
        """The watchdog's per-beat check: mark the device down if nothing succeeded within its
        ``stale_after`` (loop time ``now``), and journal the transition; returns ``up``."""
        up = self.health.check_stale(now)
        self._note_transition()
        return up

    def _bind(self, task: Callable[[Device], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        async def run() -> Any:
            return await task(self.device)

        return run

    def _note_transition(self) -> None:
        snapshot = self.health.snapshot()
        if snapshot.up == self._was_up:
            return
        undecided = (
            snapshot.consecutive_failures < self.health.down_after_failures and not snapshot.stale
        )
        if not snapshot.up and self._was_up is None and undecided:
            return  # never up yet, and not enough failures to call it down
        self._was_up = snapshot.up
        if self._journal is not None:
            state = "up" if snapshot.up else "down"
            details = {} if snapshot.up else {"reason": snapshot.down_reason}
            self._journal.record(
                f"device_{state}", f"{self.name} {state}", device=self.name, details=details
            )

    def _journal_observer(self, timer_name: str) -> Callable[[TickRecord], None]:
        journal = self._journal
        assert journal is not None

        def observe(record: TickRecord) -> None:
            if record.overrun or record.skipped_before:
                journal.record_burst(
                    "overrun",
                    f"{record.timer} overran",
                    device=self.name,
                    timer=timer_name,
                    details={"duration": record.duration, "skipped_before": record.skipped_before},
                )
            if record.outcome in (Outcome.ERROR, Outcome.TIMEOUT):
                journal.record_burst(
                    "tick_error",
                    f"{record.timer} failed: {type(record.error).__name__}: {record.error}",
                    device=self.name,
                    timer=timer_name,
                )

        return observe

    async def start(self) -> None:
        """Run the driver's start-up hook (bounded; a failure is logged, never fatal), then
        start the timers and triggers. A device that is offline keeps being retried."""
        startup = self.resolved.driver.callback("startup")
        if startup is not None:
            await self._bounded("startup hook (timers start anyway)", startup(self.device))
        self._hub.add_device(self.health)
        for timer in self.timers:
            timer.start()
            if self._watchdog is not None and timer.schedule_policy is SchedulePolicy.FIXED:
                stale_after = self._timer_stale_after(timer)
                self._watchdog.watch(
                    timer, stale_after=stale_after, in_flight=self._tick_limit(timer, stale_after)
                )
        for failure in await self._triggers.start():
            logger.warning("device=%s trigger hook failed: %s", self.name, failure)

    def _tick_limit(self, timer: Timer, stale_after: float) -> float:
        """Seconds one tick of ``timer`` may plausibly take: its own ``timeout``, else twice
        the transport's worst case for a request (``timeout`` x attempts), at least
        ``stale_after``. Longer than that in flight, the watchdog calls the tick wedged."""
        if timer.timeout is not None:
            return timer.timeout
        transport = self.resolved.transport
        attempts = 1 + int(getattr(transport, "retries", 0) or 0)
        return max(stale_after, 2 * float(transport.timeout) * attempts)

    def _timer_stale_after(self, timer: Timer) -> float:
        """Seconds a heartbeat may go without finishing a tick before the engine is suspect.

        The watchdog's default (``3 * interval + max_lag``), or the device's ``stale_after``
        if longer: a device configured as slow gets the same patience from ``/healthz``.
        """
        assert self._watchdog is not None and timer.interval is not None
        default = 3 * timer.interval + self._watchdog.max_lag
        return max(default, self.resolved.stale_after)

    def stop(self) -> None:
        """Stop every timer (polls, heartbeats, triggers): no new tick starts after this."""
        for timer in self.all_timers():
            timer.stop()
            if self._watchdog is not None:
                self._watchdog.unwatch(timer)

    async def wait_stopped(self) -> None:
        """Wait for in-flight ticks and triggered callbacks (the caller bounds the wait)."""
        await asyncio.gather(*(timer.wait_stopped() for timer in self.all_timers()))

    def cancel(self) -> None:
        """Cancel in-flight ticks and triggered callbacks (after the shutdown deadline)."""
        for timer in self.all_timers():
            timer.stop(cancel=True)

    async def close(self) -> None:
        """Run the shut-down hooks, then close the session (each step bounded)."""
        await self.run_shutdown_hooks()
        await self.close_transport()

    async def run_shutdown_hooks(self) -> None:
        """Run the triggers' ``OnShutDown`` hooks and the driver's shut-down hook (each bounded
        by ``hook_timeout`` seconds; a failure is logged, never raised)."""
        for failure in await self._triggers.stop():
            logger.warning("device=%s trigger hook failed: %s", self.name, failure)
        shutdown = self.resolved.driver.callback("shutdown")
        if shutdown is not None:
            await self._bounded("shutdown hook", shutdown(self.device))

    async def close_transport(self) -> None:
        """Close the session (bounded by ``hook_timeout`` seconds; a failure is logged)."""
        await self._bounded("closing the transport", self.session.close())

    def all_timers(self) -> tuple[Timer, ...]:
        """Polls, heartbeats and trigger timers."""
        return (*self.timers, *self._triggers.timers)

    async def _bounded(self, what: str, step: Awaitable[Any]) -> None:
        """Await ``step`` for at most ``hook_timeout`` seconds; log a failure, never raise it."""
        try:
            async with asyncio.timeout(self._hook_timeout):
                await step
        except Exception as exc:
            logger.warning(
                "device=%s %s failed error=%s: %s", self.name, what, type(exc).__name__, exc
            )
