"""Errors in callbacks: counted, logged once per failure streak, schedule kept."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import pytest

from service import Outcome, TickRecord, Timer

ENGINE_LOGGER = "gatebeat.engine"


def engine_messages(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == ENGINE_LOGGER]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_sync_errors_are_counted_and_the_grid_is_kept() -> None:
    records: list[TickRecord] = []
    error = ValueError("register 40001 out of range")

    def broken() -> None:
        raise error

    timer = Timer(1.0, broken, observers=[records.append])
    timer.start()
    await asyncio.sleep(3.0)
    timer.stop()
    assert [(r.due, r.started, r.outcome) for r in records] == [
        (1.0, 1.0, Outcome.ERROR),
        (2.0, 2.0, Outcome.ERROR),
        (3.0, 3.0, Outcome.ERROR),
    ]
    assert all(r.error is error for r in records)
    stats = timer.statistics()
    assert (stats.ticks, stats.errors, stats.timeouts, stats.skipped) == (3, 3, 0, 0)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_async_errors_are_counted_and_the_grid_is_kept() -> None:
    records: list[TickRecord] = []

    async def broken() -> None:
        await asyncio.sleep(0.25)
        raise ConnectionResetError("peer gone")

    timer = Timer(1.0, broken, observers=[records.append])
    timer.start()
    await asyncio.sleep(3.5)
    timer.stop()
    assert [(r.due, r.finished, r.outcome) for r in records] == [
        (1.0, 1.25, Outcome.ERROR),
        (2.0, 2.25, Outcome.ERROR),
        (3.0, 3.25, Outcome.ERROR),
    ]
    assert all(isinstance(r.error, ConnectionResetError) for r in records)
    assert timer.statistics().errors == 3


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_failures_are_logged_once_per_streak(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ENGINE_LOGGER)
    plan = iter([False, False, False, True, False, False, True])

    def flaky() -> None:
        if not next(plan):
            raise OSError("timeout talking to meter-1")

    timer = Timer(1.0, flaky, name="meter-1/poll")
    timer.start()
    await asyncio.sleep(7.0)
    timer.stop()
    messages = engine_messages(caplog)
    assert [level for level, _ in messages] == [
        logging.WARNING,
        logging.INFO,
        logging.WARNING,
        logging.INFO,
    ]
    assert "timer=meter-1/poll tick failed outcome=error" in messages[0][1]
    assert "timeout talking to meter-1" in messages[0][1]
    assert messages[1][1] == "timer=meter-1/poll recovered after 3 failed ticks"
    assert messages[3][1] == "timer=meter-1/poll recovered after 2 failed ticks"
    assert timer.statistics().errors == 5


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_an_async_callback_raising_cancelled_is_not_swallowed() -> None:
    """CancelledError from inside the callback ends its task cancelled; the timer goes on."""
    records: list[TickRecord] = []
    tasks: list[asyncio.Task[Any]] = []

    async def cancelled_inside() -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        await asyncio.sleep(0.25)
        raise asyncio.CancelledError

    timer = Timer(1.0, cancelled_inside, observers=[records.append])
    timer.start()
    await asyncio.sleep(2.5)
    timer.stop()
    assert [(r.due, r.finished, r.outcome) for r in records] == [
        (1.0, 1.25, Outcome.CANCELLED),
        (2.0, 2.25, Outcome.CANCELLED),
    ]
    assert all(t.cancelled() for t in tasks)
    assert timer.statistics().errors == 0


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_sync_callback_raising_cancelled_reaches_the_loop() -> None:
    """A sync callback runs inline on the scheduler's handle: the error goes to the loop."""
    loop = asyncio.get_running_loop()
    seen: list[BaseException | None] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context.get("exception")))
    records: list[TickRecord] = []

    def cancelled_inside() -> None:
        raise asyncio.CancelledError

    timer = Timer(1.0, cancelled_inside, observers=[records.append])
    timer.start()
    await asyncio.sleep(2.0)
    timer.stop()
    loop.set_exception_handler(None)
    assert [type(e) for e in seen] == [asyncio.CancelledError, asyncio.CancelledError]
    assert [(r.due, r.outcome) for r in records] == [
        (1.0, Outcome.CANCELLED),
        (2.0, Outcome.CANCELLED),
    ]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_timeout_error_raised_by_the_callback_is_an_error_not_a_timeout() -> None:
    records: list[TickRecord] = []

    async def own_timeout() -> None:
        await asyncio.sleep(0.25)
        raise TimeoutError("device did not answer")

    timer = Timer(1.0, own_timeout, timeout=0.5, observers=[records.append])
    timer.start()
    await asyncio.sleep(1.5)
    timer.stop()
    assert [(r.finished, r.outcome) for r in records] == [(1.25, Outcome.ERROR)]
    stats = timer.statistics()
    assert (stats.errors, stats.timeouts) == (1, 0)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_failing_observer_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[int] = []

    def broken(record: TickRecord) -> None:
        raise KeyError("metrics label")

    timer = Timer(1.0, lambda: None, observers=[broken, lambda r: seen.append(r.number)])
    timer.start()
    await asyncio.sleep(2.0)
    timer.stop()
    assert seen == [1, 2]
    failures = [r for r in caplog.records if r.name == ENGINE_LOGGER and r.exc_info]
    assert len(failures) == 2
    assert timer.statistics().errors == 0


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_observers_added_and_removed() -> None:
    seen: list[int] = []

    def observer(record: TickRecord) -> None:
        seen.append(record.number)

    timer = Timer(1.0, lambda: None)
    timer.start()
    await asyncio.sleep(1.0)
    timer.add_observer(observer)
    await asyncio.sleep(2.0)
    timer.remove_observer(observer)
    await asyncio.sleep(2.0)
    timer.stop()
    assert seen == [2, 3]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_tick_records_are_immutable() -> None:
    records: list[TickRecord] = []
    timer = Timer(1.0, lambda: None, observers=[records.append])
    timer.start()
    await asyncio.sleep(1.0)
    timer.stop()
    with pytest.raises(AttributeError):
        records[0].due = 5.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        timer.statistics().ticks = 5  # type: ignore[misc]


class Abort(BaseException):
    """Neither an Exception nor a cancellation (asyncio reports it and the loop goes on)."""


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_base_exception_is_recorded_and_the_schedule_goes_on(kind: str) -> None:
    loop = asyncio.get_running_loop()
    reported: list[object] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context.get("exception")))
    records: list[TickRecord] = []
    calls: list[float] = []

    def sync_callback() -> None:
        calls.append(loop.time())
        if len(calls) == 1:
            raise Abort

    async def async_callback() -> None:
        sync_callback()

    callback = sync_callback if kind == "sync" else async_callback
    timer = Timer(1.0, callback, observers=[records.append])
    timer.start()
    await asyncio.sleep(3.5)
    timer.stop()
    await timer.wait_stopped()
    assert calls == [1.0, 2.0, 3.0]
    assert [r.outcome for r in records] == [Outcome.ERROR, Outcome.OK, Outcome.OK]
    assert isinstance(records[0].error, Abort)
    assert len(reported) == 1 and isinstance(reported[0], Abort)  # not swallowed either
    assert timer.statistics().errors == 1 and not timer.in_flight


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_timeout_the_callback_swallows_is_still_a_timeout() -> None:
    records: list[TickRecord] = []

    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # a callback should not do this
            await asyncio.sleep(3.0)

    timer = Timer(10.0, stubborn, timeout=1.5, observers=[records.append])
    timer.start()
    await asyncio.sleep(12.0)
    timer.stop()
    await timer.wait_stopped()
    assert [(r.started, r.finished, r.outcome) for r in records] == [(10.0, 11.5, Outcome.TIMEOUT)]
    assert isinstance(records[0].error, TimeoutError)
    assert timer.statistics().timeouts == 1


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_cancellation_the_callback_swallows_is_recorded_and_not_swallowed() -> None:
    records: list[TickRecord] = []
    tasks: list[asyncio.Task[Any]] = []

    async def stubborn() -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3.0)

    timer = Timer(1.0, stubborn, observers=[records.append])
    timer.start()
    await asyncio.sleep(1.5)
    timer.stop(cancel=True)
    await timer.wait_stopped()
    assert [(r.finished, r.outcome) for r in records] == [(1.5, Outcome.CANCELLED)]
    assert tasks[0].cancelled()  # the engine's task ends cancelled, as it was asked to


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_timeout_counts_from_the_start_of_the_tick(
    stall: Callable[[float], None],
) -> None:
    """A tick that starts in a pass where an earlier callback hogs the loop for 1 s gets its
    task's first step 1 s late; its 1.5 s timeout still ends 1.5 s after it started."""
    records: list[TickRecord] = []

    async def read() -> None:
        await asyncio.sleep(1.2)

    reader = Timer(10.0, read, timeout=1.5, align=True, observers=[records.append])
    hog = Timer(10.0, lambda: stall(1.0), align=True)  # same due time, right after
    reader.start()
    hog.start()
    await asyncio.sleep(13.0)
    reader.stop()
    hog.stop()
    assert [(r.started, r.finished, r.outcome) for r in records] == [(10.0, 11.5, Outcome.TIMEOUT)]
