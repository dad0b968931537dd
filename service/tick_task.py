"""Ticks whose callback runs as a task: coroutines, awaitables and ``run_in_thread`` callbacks.

A synchronous callback completes inline on the scheduler's wake-up (``Timer._fire``); anything
that has to be awaited runs here, in a task of its own, and reports back through the timer's
``complete`` function exactly once, whatever happens:

* the callback's own outcome: OK, ERROR, or TIMEOUT when the per-tick ``timeout`` expired (the
  callback is then cancelled and the schedule goes on);
* CANCELLED when the task is cancelled (``stop(cancel=True)``, shutdown), also when that
  happens before its first step, in which case the callback's coroutine is closed unawaited;
* a ``run_in_thread`` callback cannot be interrupted: a cancelled tick waits for its thread to
  return before it completes (so no tick of the timer overlaps it), and a thread that returns
  after ``timeout`` seconds is counted as a TIMEOUT.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from service.records import Outcome
from service.schedule import Slot

__all__ = ["TickTaskSpec", "start_tick_task"]

Complete = Callable[[Slot, int, float, float, Outcome, "BaseException | None"], None]
"""``complete(slot, token, started, finished, outcome, error)``: the timer's bookkeeping."""


@dataclass(frozen=True, slots=True)
class TickTaskSpec:
    """What a tick task needs from its timer.

    Attributes:
        loop: the timer's loop.
        clock: the engine's clock (seconds).
        name: the timer's name (task name, error messages).
        timeout: seconds a tick may run, or ``None``.
        in_thread: the awaitable is a thread's future (cannot be cancelled).
        complete: called once with the tick's outcome.
        is_current: whether a task is still the timer's in-flight tick.
    """

    loop: asyncio.AbstractEventLoop
    clock: Callable[[], float]
    name: str
    timeout: float | None
    in_thread: bool
    complete: Complete
    is_current: Callable[[asyncio.Task[None]], bool]


def start_tick_task(
    spec: TickTaskSpec, slot: Slot, token: int, started: float, awaitable: Awaitable[Any]
) -> asyncio.Task[None]:
    """Run the rest of the tick ``slot`` (started at ``started``) as a task; returns it."""
    task = spec.loop.create_task(
        _run(spec, slot, token, started, awaitable), name=f"gatebeat:{spec.name}"
    )

    def cancelled_before_start(done: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never runs _run, so nothing would complete
        # the tick: do it here, and close the callback's coroutine unawaited. A thread is
        # already running and cannot be stopped: the tick completes when it returns, so no
        # tick of the timer overlaps it.
        if not (done.cancelled() and spec.is_current(done)):
            return
        if spec.in_thread and isinstance(awaitable, asyncio.Future) and not awaitable.done():
            awaitable.add_done_callback(thread_returned)
            return
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        elif isinstance(awaitable, asyncio.Future):
            awaitable.cancel()
        spec.complete(slot, token, started, spec.clock(), Outcome.CANCELLED, None)

    def thread_returned(future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved: the tick is recorded as CANCELLED, not as an error
        spec.complete(slot, token, started, spec.clock(), Outcome.CANCELLED, None)

    task.add_done_callback(cancelled_before_start)
    return task


async def _run(
    spec: TickTaskSpec, slot: Slot, token: int, started: float, awaitable: Awaitable[Any]
) -> None:
    clock = spec.clock
    timeout = spec.timeout
    outcome: Outcome = Outcome.OK
    error: BaseException | None = None
    deadline = None
    try:
        if timeout is not None and not spec.in_thread:
            # The tick started at ``started``; the task's first step may come later.
            deadline = asyncio.timeout(max(0.0, started + timeout - clock()))
            async with deadline:
                await awaitable
            if deadline.expired():  # the callback swallowed the cancellation
                outcome = Outcome.TIMEOUT
                error = TimeoutError(f"timer {spec.name!r}: tick exceeded timeout {timeout} s")
        elif spec.in_thread:
            # Shielded: a thread cannot be cancelled, so a cancelled tick must still know
            # when its thread returns (see below).
            await asyncio.shield(awaitable)
            if timeout is not None and clock() - started > timeout:
                outcome = Outcome.TIMEOUT
                error = TimeoutError(
                    f"timer {spec.name!r}: thread callback ran "
                    f"{clock() - started:.3f} s, timeout {timeout} s"
                )
        else:
            await awaitable
    except asyncio.CancelledError:
        if spec.in_thread:
            await _wait_for_thread(awaitable)
        spec.complete(slot, token, started, clock(), Outcome.CANCELLED, None)
        raise
    except TimeoutError as exc:
        if deadline is not None and deadline.expired():
            outcome, error = Outcome.TIMEOUT, exc
        else:
            outcome, error = Outcome.ERROR, exc
    except Exception as exc:
        outcome, error = Outcome.ERROR, exc
    except GeneratorExit:  # the task is destroyed with its closed loop: nothing to complete
        raise
    except BaseException as exc:  # KeyboardInterrupt, SystemExit: recorded, then on its way
        spec.complete(slot, token, started, clock(), Outcome.ERROR, exc)
        raise
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        # stop(cancel=True) or shutdown, and the callback swallowed the CancelledError: the
        # tick was cancelled all the same, and the engine does not swallow it.
        spec.complete(slot, token, started, clock(), Outcome.CANCELLED, None)
        raise asyncio.CancelledError
    spec.complete(slot, token, started, clock(), outcome, error)


async def _wait_for_thread(awaitable: Awaitable[Any]) -> None:
    """Wait until a cancelled tick's thread has returned, so that no tick overlaps it.

    The thread keeps running after its tick is cancelled; the tick stays in flight (and
    ``wait_stopped()`` keeps waiting) until it returns. The pending cancellation is re-raised
    by the caller afterwards.
    """
    future = asyncio.ensure_future(awaitable)
    while not future.done():
        try:
            await asyncio.wait([future])
        except asyncio.CancelledError:
            continue
    if not future.cancelled():
        future.exception()  # retrieved: the tick is recorded as CANCELLED, not as an error
