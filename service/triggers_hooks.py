"""Start-up and shut-down hooks, and a set of triggered tasks that a runner starts and stops.

``OnStartUp``/``OnShutDown`` are markers, not schedules: the runner calls :func:`run_startup`
before it starts the timers and :func:`run_shutdown` after they have stopped (or uses a
:class:`TriggerSet`, which does both). Hooks run one after another, in the order they were
given, each bounded by ``hook_timeout`` seconds. A failing hook is logged and reported in the
returned list; it never stops the other hooks or the service (a device that is offline at
start must not keep the gateway from starting). ``CancelledError`` is never swallowed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import typing
from collections.abc import Iterable
from dataclasses import dataclass

from service.timer import Timer, TimerCallback
from service.triggers import Any, OnShutDown, OnStartUp, Trigger
from service.triggers_schedules import WallClock, utc_now

__all__ = ["HookFailure", "TriggerSet", "TriggeredTask", "run_shutdown", "run_startup"]

logger = logging.getLogger("gatebeat.triggers")


@dataclass(frozen=True, slots=True)
class TriggeredTask:
    """A callback, the trigger that runs it and its name (``"meter-1/reset"``)."""

    trigger: Trigger
    callback: TimerCallback
    name: str


@dataclass(frozen=True, slots=True)
class HookFailure:
    """A start-up or shut-down hook that raised or timed out."""

    name: str
    error: BaseException


def _has(trigger: Trigger, marker: type[Trigger]) -> bool:
    members = trigger.triggers if isinstance(trigger, Any) else (trigger,)
    return any(isinstance(member, marker) for member in members)


def is_scheduled(trigger: Trigger) -> bool:
    """Whether ``trigger`` needs a timer (it is not only start-up/shut-down markers)."""
    members = trigger.triggers if isinstance(trigger, Any) else (trigger,)
    return any(not isinstance(member, OnStartUp | OnShutDown) for member in members)


async def _run_hooks(
    tasks: Iterable[TriggeredTask], marker: type[Trigger], hook_timeout: float
) -> list[HookFailure]:
    failures: list[HookFailure] = []
    for task in tasks:
        if not _has(task.trigger, marker):
            continue
        try:
            async with asyncio.timeout(hook_timeout):
                result = task.callback()
                if inspect.isawaitable(result):
                    await result
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("hook=%s (%s) failed: %r", task.name, marker.__name__, exc)
            failures.append(HookFailure(task.name, exc))
    return failures


async def run_startup(
    tasks: Iterable[TriggeredTask], *, hook_timeout: float = 30.0
) -> list[HookFailure]:
    """Run the callbacks of tasks triggered by ``OnStartUp`` (also inside ``Any``), in order.

    Args:
        tasks: all of a runner's tasks; the others are ignored.
        hook_timeout: seconds each hook may take before it is cancelled and reported.
    """
    return await _run_hooks(tasks, OnStartUp, hook_timeout)


async def run_shutdown(
    tasks: Iterable[TriggeredTask], *, hook_timeout: float = 10.0
) -> list[HookFailure]:
    """Run the callbacks of tasks triggered by ``OnShutDown`` (also inside ``Any``), in order."""
    return await _run_hooks(tasks, OnShutDown, hook_timeout)


class TriggerSet:
    """A runner's triggered tasks: start-up hooks, then timers; on stop the reverse.

    Args:
        wall_clock: passed to every wall-clock trigger (tests inject their own).
        check_every: seconds between wall-clock step checks.
        hook_timeout: seconds each start-up/shut-down hook may take.
        stop_timeout: seconds ``stop()`` waits for in-flight callbacks before cancelling them.
    """

    def __init__(
        self,
        *,
        wall_clock: WallClock = utc_now,
        check_every: float = 60.0,
        hook_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self._wall_clock = wall_clock
        self._check_every = check_every
        self._hook_timeout = hook_timeout
        self._stop_timeout = stop_timeout
        self._tasks: list[TriggeredTask] = []
        self._timers: list[Timer] = []

    @property
    def timers(self) -> tuple[Timer, ...]:
        """The timers of the scheduled tasks, in the order they were added."""
        return tuple(self._timers)

    def add(
        self, trigger: Trigger, callback: TimerCallback, *, name: str, **options: typing.Any
    ) -> Timer | None:
        """Add a task; returns its timer, or ``None`` for a pure start-up/shut-down hook.

        ``options`` go to the timer (``timeout``, ``run_in_thread``, ``observers``).
        """
        self._tasks.append(TriggeredTask(trigger, callback, name))
        if not is_scheduled(trigger):
            return None
        timer = trigger.timer(
            callback,
            name=name,
            wall_clock=self._wall_clock,
            check_every=self._check_every,
            **options,
        )
        self._timers.append(timer)
        return timer

    async def start(self) -> list[HookFailure]:
        """Run the start-up hooks, then start every timer (needs a running loop)."""
        failures = await run_startup(self._tasks, hook_timeout=self._hook_timeout)
        for timer in self._timers:
            timer.start()
        return failures

    async def stop(self) -> list[HookFailure]:
        """Stop every timer, wait for in-flight callbacks (bounded), then run shut-down hooks."""
        for timer in self._timers:
            timer.stop()
        try:
            async with asyncio.timeout(self._stop_timeout):
                for timer in self._timers:
                    await timer.wait_stopped()
        except TimeoutError:
            logger.warning("callbacks still running after %.1f s: cancelling", self._stop_timeout)
            for timer in self._timers:
                timer.stop(cancel=True)
            for timer in self._timers:
                await timer.wait_stopped()
        return await run_shutdown(self._tasks, hook_timeout=self._hook_timeout)
