"""The scrape gate: exporter requests wait for a gap between ticks, bounded, and learn their cost.

The gate runs on exporter threads against the real clock; here ``next_wake`` is a function the
test controls, so every case is decided by state, not by timing luck. ``Scheduler.next_wake``
itself is checked on virtual time, and the exporter end to end over a real socket.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from service import Scheduler, Timer
from service.http import Exporter
from service.scrape_gate import ScrapeGate

BOUND = 5.0  # seconds any wait in these tests may take before it counts as a failure


class Engine:
    """A stand-in for the scheduler's ``next_wake``: the test sets when the next tick is due."""

    def __init__(self, next_wake: float) -> None:
        self.value = next_wake
        self.looked = threading.Event()

    def next_wake(self) -> float:
        self.looked.set()
        return self.value


def test_a_request_passes_at_once_when_the_next_tick_is_far() -> None:
    engine = Engine(time.monotonic() + 60.0)
    gate = ScrapeGate(engine.next_wake)
    assert gate.wait_for_gap() == 0.0
    assert (gate.waited, gate.gave_up) == (0, 0)


def test_a_request_waits_while_the_engine_dispatches_and_passes_once_it_is_done() -> None:
    engine = Engine(-math.inf)  # running ticks
    gate = ScrapeGate(engine.next_wake, max_wait=BOUND * 2)
    passed = threading.Event()
    waited: list[float] = []
    worker = threading.Thread(target=lambda: (waited.append(gate.wait_for_gap()), passed.set()))
    worker.start()
    assert engine.looked.wait(BOUND)
    engine.looked.clear()
    assert engine.looked.wait(BOUND), "the gate keeps looking while ticks run"
    assert not passed.is_set()
    engine.value = time.monotonic() + 60.0  # dispatch over, next tick far away
    assert passed.wait(BOUND)
    worker.join(BOUND)
    assert waited[0] > 0
    assert (gate.waited, gate.gave_up) == (1, 0)


def test_a_tick_due_sooner_than_a_request_takes_holds_the_request_until_it_is_past() -> None:
    due = time.monotonic() + 0.05

    def next_wake() -> float:  # once the tick is due the engine runs it, then waits long
        return due if time.monotonic() < due else due + 60.0

    gate = ScrapeGate(next_wake, margin=0.1, max_wait=BOUND)
    waited = gate.wait_for_gap()
    assert time.monotonic() >= due
    assert 0 < waited < BOUND / 2
    assert (gate.waited, gate.gave_up) == (1, 0)


def test_with_no_gap_it_gives_up_after_max_wait_then_stops_waiting_for_a_while() -> None:
    engine = Engine(-math.inf)  # a schedule so dense the engine is always busy
    gate = ScrapeGate(engine.next_wake, max_wait=0.02, dense_pause=60.0)
    began = time.monotonic()
    waited = gate.wait_for_gap()
    assert 0.02 <= waited < BOUND
    assert time.monotonic() - began >= 0.02
    assert gate.gave_up == 1
    assert gate.wait_for_gap() == 0.0, "within dense_pause it does not wait again"
    assert gate.gave_up == 2


def test_the_gap_needed_is_the_slowest_recent_request_plus_the_margin() -> None:
    now = [100.0]
    next_wake = [100.0 + 10.0]
    gate = ScrapeGate(lambda: next_wake[0], lambda: now[0], margin=0.0005)
    for took in (0.002, 0.003, 0.001):
        with gate.between_ticks():
            now[0] += took
    assert gate.expected_render == pytest.approx(0.003)
    next_wake[0] = now[0] + 0.0036  # more than 3 ms + 0.5 ms: no wait
    assert gate.wait_for_gap() == 0.0
    with gate.between_ticks():
        now[0] += 0.0045
    assert gate.expected_render == pytest.approx(0.0045)
    assert gate.waited == 0


def test_a_slow_client_counts_as_a_10_ms_request_at_most() -> None:
    now = [100.0]
    gate = ScrapeGate(lambda: now[0] + 60.0, lambda: now[0])
    with gate.between_ticks():
        now[0] += 5.0  # a client that took 5 s to read its answer
    assert gate.expected_render == pytest.approx(0.01)


@pytest.mark.parametrize("field", ["max_wait", "margin", "dense_pause"])
def test_negative_settings_are_refused_by_name(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be >= 0 seconds, got -1.0"):
        ScrapeGate(lambda: 0.0, **{field: -1.0})  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_scheduler_next_wake_is_the_armed_due_time_and_minus_inf_while_dispatching() -> None:
    scheduler = Scheduler.for_loop(wakeup="loop")
    assert scheduler.next_wake() == math.inf
    seen: list[float] = []
    timer = Timer(2.0, lambda: seen.append(scheduler.next_wake()), name="hb")
    timer.start()
    assert scheduler.next_wake() == 2.0
    await asyncio.sleep(2.5)
    assert seen == [-math.inf]
    assert scheduler.next_wake() == 4.0
    timer.stop()
    await asyncio.sleep(2.0)
    assert scheduler.next_wake() == math.inf


@pytest.mark.asyncio
async def test_the_exporter_holds_a_scrape_until_the_engine_has_a_gap() -> None:
    engine = Engine(-math.inf)
    exporter = Exporter(
        "127.0.0.1:0",
        CollectorRegistry(),
        render_gate=ScrapeGate(engine.next_wake, max_wait=BOUND * 2),
    )
    await exporter.start()
    try:
        fetch = asyncio.create_task(
            asyncio.to_thread(
                lambda: urllib.request.urlopen(f"{exporter.url}/metrics", timeout=BOUND * 3).status
            )
        )
        await asyncio.to_thread(engine.looked.wait, BOUND)
        assert engine.looked.is_set()
        done, _ = await asyncio.wait({fetch}, timeout=0.2)
        assert not done, "the scrape is held while the engine runs ticks"
        engine.value = time.monotonic() + 60.0
        assert await asyncio.wait_for(fetch, BOUND) == 200
    finally:
        await exporter.stop()


@pytest.mark.asyncio
async def test_a_loop_stuck_in_a_tick_delays_a_scrape_by_max_wait_at_most() -> None:
    """The watchdog's case: ticks never finish, and /healthz must still answer."""
    engine = Engine(-math.inf)  # dispatching, forever
    gate = ScrapeGate(engine.next_wake, max_wait=0.05)
    exporter = Exporter("127.0.0.1:0", CollectorRegistry(), render_gate=gate)
    await exporter.start()
    try:
        began = time.monotonic()
        status = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"{exporter.url}/healthz", timeout=BOUND).status
        )
        assert status == 200
        assert time.monotonic() - began < BOUND
        assert gate.gave_up >= 1
        # connection and request each waited up to 50 ms, then the gate stopped waiting
        second = time.monotonic()
        await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"{exporter.url}/metrics", timeout=BOUND).read()
        )
        assert time.monotonic() - second < BOUND
    finally:
        await exporter.stop()
