"""Case 6: one simulated hour, a thousand timers, every tick counted, no memory growth.

Virtual time (looptime): 1000 engine timers (FIXED and DELAY, intervals 5..54 s) with a cheap
callback and the Prometheus observer of a :class:`MetricsHub`, run for 3600 s of loop time.
Allocations are traced with tracemalloc; what is alive after minute 60 is compared with what
was alive after minute 5.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import pytest

from service.metrics import MetricsHub
from service.records import SchedulePolicy
from service.timer import Timer

TIMERS = 1000
HOUR = 3600.0
GROWTH_LIMIT = 64 * 1024  # bytes; measured growth is reported by the test


def _interval(index: int) -> float:
    return float(5 + index % 50)


@pytest.mark.looptime
@pytest.mark.asyncio
@pytest.mark.timeout(300)
async def test_an_hour_of_a_thousand_timers_counts_every_tick_and_does_not_grow() -> None:
    hub = MetricsHub()
    counts = [0] * TIMERS
    timers: list[Timer] = []

    def make_callback(index: int):
        def tick() -> None:
            counts[index] += 1

        return tick

    for index in range(TIMERS):
        policy = SchedulePolicy.FIXED if index % 2 == 0 else SchedulePolicy.DELAY
        timers.append(
            Timer(
                _interval(index),
                make_callback(index),
                policy,
                name=f"device-{index}/t",
                observers=(hub.observer(f"device-{index}", "t", _interval(index)),),
            )
        )
    loop = asyncio.get_running_loop()
    start = loop.time()
    for timer in timers:
        timer.start()

    tracemalloc.start(1)
    try:
        # half an interval past the grid, so "due exactly at the end" never arises
        await asyncio.sleep(300.5)
        gc.collect()
        at_5 = tracemalloc.take_snapshot()
        size_5 = sum(stat.size for stat in at_5.statistics("filename"))
        await asyncio.sleep(HOUR - 300.0)
        gc.collect()
        at_60 = tracemalloc.take_snapshot()
        size_60 = sum(stat.size for stat in at_60.statistics("filename"))
    finally:
        tracemalloc.stop()
    elapsed = loop.time() - start
    for timer in timers:
        timer.stop()
    await asyncio.gather(*(timer.wait_stopped() for timer in timers))

    growth = size_60 - size_5
    top = at_60.compare_to(at_5, "lineno")[:5]
    print(
        f"\nticks={sum(counts)} elapsed={elapsed:.1f} s (loop) traced after 5 min={size_5} B "
        f"after 60 min={size_60} B growth={growth} B\n" + "\n".join(str(s) for s in top)
    )
    expected = [int((HOUR + 0.5) // _interval(i)) for i in range(TIMERS)]
    assert counts == expected
    for index in (0, 1, 998, 999):
        stats = timers[index].statistics()
        assert stats.ticks == expected[index]
        assert stats.skipped == 0 and stats.overruns == 0 and stats.errors == 0
    ticks = hub.registry.get_sample_value(
        "gatebeat_ticks_total", {"device": "device-7", "timer": "t"}
    )
    assert ticks == expected[7]
    assert growth < GROWTH_LIMIT
