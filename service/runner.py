"""Run gatebeat: build buses, devices and timers from the settings; stop cleanly on a signal.

Start-up order: metrics registry and journal, buses, device runtimes (sessions connect lazily,
so an offline device never blocks start-up), the exporter (ready only once bound), the loop
watchdog and the stall guard (``runtime.exit_after_unhealthy``), start-up hooks (each bounded by
``runtime.hook_timeout``) and timers, then ``READY=1`` to systemd. A stop requested during
start-up cancels the hooks still running and goes straight to shutdown.

Shutdown on SIGTERM, SIGINT or SIGHUP (there is no config reload), bounded by
``runtime.shutdown_timeout`` seconds: stop every timer, triggers included (no new tick starts),
wait for in-flight ticks for half the budget and cancel what is left, run shut-down hooks until
1/8 of the budget is left, close transports in that last eighth, stop the exporter, then exit
0. Devices are checked for staleness only between the end of start-up and the start of
shutdown. A stop signal before the loop exists: see :mod:`service.stop_signals`.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import disable_created_metrics

from service import __version__
from service.bus import Bus
from service.cli import EXIT_CONFIG
from service.device_runtime import DeviceRuntime
from service.http import Exporter, ExporterError
from service.journal import EventJournal, JournalError
from service.metrics import MetricsHub
from service.scheduler import Scheduler
from service.scrape_gate import ScrapeGate
from service.settings import GatebeatSettings
from service.settings_devices import ResolvedDevice, bus_gap, gap_of
from service.stop_signals import STOP_SIGNALS
from service.systemd import SystemdNotifier
from service.timer import Timer
from service.watchdog import Watchdog

__all__ = ["STALL_EXIT_CODE", "run", "serve"]

logger = logging.getLogger("gatebeat.runner")

GIL_SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while another waits (CPython's default is 0.005)."""

STALL_EXIT_CODE = 70
"""Exit code when ``runtime.exit_after_unhealthy`` gives up on a stalled service."""


async def serve(
    settings: GatebeatSettings,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Exporter], None] | None = None,
    handle_signals: bool = True,
) -> int:
    """Run until ``stop`` is set (or SIGTERM/SIGINT/SIGHUP arrives); return the exit code.

    Returns 2 (``EXIT_CONFIG``), with nothing started, when the event journal cannot be opened.

    Args:
        settings: validated settings (``service.settings.load_settings``).
        stop: set it to shut down; a new event by default.
        on_ready: called once the exporter is bound and every timer started.
        handle_signals: install SIGTERM/SIGINT/SIGHUP handlers on the loop (each a clean stop).
    """
    loop = asyncio.get_running_loop()
    runtime = settings.runtime
    stop = stop or asyncio.Event()
    if handle_signals:  # first: from here a stop signal is a clean shutdown
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, _on_signal, signum, stop)
    try:
        journal = (
            EventJournal(
                runtime.journal,
                max_age=runtime.journal_max_age,
                max_events=runtime.journal_max_events,
            )
            if runtime.journal
            else None
        )
    except JournalError as exc:
        logger.error(
            "cannot open the event journal, nothing started: runtime.journal=%s: %s",
            exc.path,
            exc.reason,
        )
        return EXIT_CONFIG
    scheduler = Scheduler.for_loop(loop, wakeup=runtime.wakeup)

    # The exporter serves scrapes from its own thread. With CPython's default 5 ms GIL switch
    # interval, a heartbeat that wakes while a scrape holds the GIL waits up to 5 ms for it;
    # 0.5 ms keeps scrapes from showing up in heartbeat lateness.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    disable_created_metrics()  # type: ignore[no-untyped-call]  # _created series: noise
    hub = MetricsHub(version=__version__)
    devices = [d for d in settings.resolved_devices if d.enabled]
    buses = _buses(devices, hub)
    runtimes: list[DeviceRuntime] = []
    running: list[DeviceRuntime] = []  # checked for staleness: empty in start-up and shutdown
    watchdog = Watchdog(
        max_lag=runtime.max_loop_lag,
        on_lag=hub.observe_loop_lag,
        devices=lambda: running,
    )
    for device in devices:
        runtimes.append(
            DeviceRuntime(
                device,
                bus=buses[device.bus],
                hub=hub,
                watchdog=watchdog,
                journal=journal,
                hook_timeout=runtime.hook_timeout,
            )
        )
    metrics = settings.metrics
    password = metrics.basic_auth_password
    exporter = Exporter(
        metrics.listen,
        hub.registry,
        health=watchdog.check,
        tls_cert=metrics.tls_cert,
        tls_key=metrics.tls_key,
        basic_auth=(
            (metrics.basic_auth_user, password.get_secret_value())
            if metrics.basic_auth_user is not None and password is not None
            else None
        ),
        auth_healthz=metrics.auth_healthz,
        render_gate=ScrapeGate(scheduler.next_wake, scheduler.clock),
    )
    try:
        await exporter.start()
    except ExporterError as exc:
        logger.error("cannot serve metrics listen=%s error=%s", metrics.listen, exc)
        if journal is not None:
            journal.close()
        return 1

    notifier = SystemdNotifier()
    systemd_timer: Timer | None = None
    guard: _StallGuard | None = None
    try:
        watchdog.start()
        if runtime.exit_after_unhealthy is not None:  # also while start-up hooks run
            guard = _StallGuard(watchdog, runtime.exit_after_unhealthy)
            guard.start()
        if not await _start_devices(runtimes, stop):
            return 0
        running.extend(runtimes)
        timers = sum(len(r.timers) for r in runtimes)
        # Start-up objects (devices, timers, metric series) live for the whole run: moved out
        # of the cyclic collector's view, a full collection no longer walks them all and so
        # no longer pauses every heartbeat (tens of ms at thousands of timers). Undone below.
        gc.freeze()
        if journal is not None:
            journal.record(
                "service_start",
                f"gatebeat {__version__} started",
                details={
                    "config": settings.source,
                    "config_hash": _config_hash(settings.source),
                    "devices": len(runtimes),
                    "timers": timers,
                },
            )
        if notifier.enabled:
            notifier.ready()
            if notifier.watchdog_interval:
                systemd_timer = Timer(
                    notifier.watchdog_interval / 2,
                    lambda: notifier.watchdog(watchdog.check()[0]),
                    name="gatebeat/systemd-watchdog",
                )
                systemd_timer.start()
        logger.info(
            "gatebeat running devices=%d timers=%d buses=%d metrics=%s/metrics",
            len(runtimes),
            timers,
            len(buses),
            exporter.url,
        )
        if on_ready is not None:
            on_ready(exporter)
        await stop.wait()
    finally:
        running.clear()
        gc.unfreeze()
        started = time.monotonic()
        logger.info("gatebeat stopping")
        notifier.stopping()
        if guard is not None:
            guard.stop()
        if systemd_timer is not None:
            systemd_timer.stop()
        await _shutdown(runtimes, runtime.shutdown_timeout)
        watchdog.stop()
        await exporter.stop()
        notifier.close()
        if journal is not None:
            journal.record("service_stop", "gatebeat stopped")
            # What is left of shutdown_timeout (at least 0.5 s for the stop event itself), so a
            # locked journal cannot push the stop past the budget (Docker's grace period).
            journal.close(max(0.5, runtime.shutdown_timeout - (time.monotonic() - started)))
        logger.info("gatebeat stopped seconds=%.3f", time.monotonic() - started)
        if handle_signals:
            for signum in STOP_SIGNALS:
                loop.remove_signal_handler(signum)
    return 0


async def _start_devices(runtimes: list[DeviceRuntime], stop: asyncio.Event) -> bool:
    """Run every device's start-up (hooks, then timers); ``False`` if ``stop`` came first.

    A stop during start-up cancels the start-ups still running, so a hanging hook never holds
    a SIGTERM for longer than the shutdown budget.
    """
    starting = asyncio.ensure_future(asyncio.gather(*(r.start() for r in runtimes)))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        starting.cancel()
        raise
    finally:
        stopping.cancel()
    if starting.done():
        starting.result()  # a start-up that raised propagates, as before
        return True
    starting.cancel()
    await asyncio.wait((starting,))
    logger.warning("stop requested during start-up: start-up hooks still running were cancelled")
    return False


async def _shutdown(runtimes: list[DeviceRuntime], budget: float) -> None:
    """Stop devices within ``budget`` seconds: ticks get half, hooks until 1/8 is left."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    for runtime in runtimes:
        runtime.stop()
    try:
        async with asyncio.timeout(budget / 2):
            await asyncio.gather(*(r.wait_stopped() for r in runtimes))
    except TimeoutError:
        busy = [t.name for r in runtimes for t in r.all_timers() if t.in_flight]
        logger.warning("ticks still running at shutdown, cancelling timers=%s", ",".join(busy))
        for runtime in runtimes:
            runtime.cancel()
    hooks = max(0.1, deadline - budget / 8 - loop.time())
    try:
        async with asyncio.timeout(hooks):
            await asyncio.gather(*(r.run_shutdown_hooks() for r in runtimes))
    except TimeoutError:
        logger.warning("shutdown hooks did not finish within %.2f s: cancelled", hooks)
    remaining = max(0.1, deadline - loop.time())
    try:
        async with asyncio.timeout(remaining):
            await asyncio.gather(*(r.close_transport() for r in runtimes))
    except TimeoutError:
        logger.warning("transports did not close within %.2f s: abandoned", remaining)


def _buses(devices: list[ResolvedDevice], hub: MetricsHub) -> dict[str, Bus]:
    """One :class:`Bus` per bus name, keeping the largest gap its devices ask for (seconds)."""
    members: dict[str, list[ResolvedDevice]] = {}
    for device in devices:
        members.setdefault(device.bus, []).append(device)
    buses: dict[str, Bus] = {}
    for name, group in members.items():
        bus = buses[name] = Bus(name, gap=bus_gap(group))
        bus.add_observer(hub.observe_bus)
        gaps = {d.name: gap_of(d.transport) for d in group}
        if len(set(gaps.values())) > 1:
            logger.info(
                "bus=%s gap=%.6g s: the largest of its devices' gaps (seconds: %s)",
                name,
                bus.gap,
                ", ".join(f"{device}={gap:.6g}" for device, gap in gaps.items()),
            )
    return buses


def _on_signal(signum: int, stop: asyncio.Event) -> None:
    if stop.is_set():
        logger.warning("second %s: shutdown already in progress", signal.Signals(signum).name)
        return
    if signum == signal.SIGHUP:
        logger.info("received SIGHUP: stopping (gatebeat has no config reload; SIGHUP is a stop)")
    else:
        logger.info("received %s", signal.Signals(signum).name)
    stop.set()


def _config_hash(source: str | None) -> str | None:
    if source is None:
        return None
    try:
        return hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16]
    except OSError:
        return None


class _StallGuard:
    """A thread that exits the process after the service stayed unhealthy for too long.

    It runs outside the event loop on purpose: a stalled loop cannot notice its own stall, and
    Docker does not restart a container just because its health check fails.
    """

    def __init__(self, watchdog: Watchdog, limit: float) -> None:
        self._watchdog = watchdog
        self._limit = limit
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gatebeat-stall-guard", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        unhealthy_since: float | None = None
        period = min(1.0, self._limit / 4)
        while not self._stopped.wait(period):
            ok, reason = self._watchdog.check()
            now = time.monotonic()
            if ok:
                unhealthy_since = None
                continue
            if unhealthy_since is None:
                unhealthy_since = now
            elif now - unhealthy_since >= self._limit:
                logger.critical(
                    "unhealthy for %.1f s, exiting code=%d problems=%s",
                    now - unhealthy_since,
                    STALL_EXIT_CODE,
                    reason.get("problems"),
                )
                for handler in logging.getLogger().handlers:
                    handler.flush()
                os._exit(STALL_EXIT_CODE)


def run(settings: GatebeatSettings) -> int:
    """Run gatebeat in this thread on asyncio or uvloop (``runtime.loop``); the exit code."""
    if settings.runtime.loop == "uvloop":
        import uvloop

        return int(uvloop.run(serve(settings)))
    return asyncio.run(serve(settings))
