"""stop(cancel=True) in the same loop instant a tick's task was created (before it ran)."""

from __future__ import annotations

import asyncio

import pytest

from service import Outcome, Timer
from service.records import TickRecord


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_stop_cancel_before_the_tick_task_took_its_first_step() -> None:
    records: list[TickRecord] = []
    started: list[float] = []

    async def slow() -> None:
        started.append(asyncio.get_running_loop().time())
        await asyncio.sleep(5)

    beat = Timer(1.0, slow, name="beat", observers=[records.append])
    # Due at the same instant and armed later, so it fires in the same pass, right after
    # `beat` created its tick task and before that task ran.
    killer = Timer(1.0, lambda: beat.stop(cancel=True), name="killer")
    beat.start()
    killer.start()
    async with asyncio.timeout(30):
        await beat.wait_stopped()
    killer.stop()
    assert started == []  # the callback never began
    assert not beat.in_flight
    assert [r.outcome for r in records] == [Outcome.CANCELLED]
    assert beat.statistics().ticks == 1
