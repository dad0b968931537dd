"""The per-loop scheduler: one heap of buckets, many timers, lazy removal, never early, wake-ups."""

from __future__ import annotations

import asyncio
import statistics

import pytest

from service import Scheduler, TickRecord, Timer
from service.scheduler import PRECISE_SLACK

LOOPTIME_RESOLUTION = 1e-6


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_one_scheduler_per_loop_shared_by_timers() -> None:
    scheduler = Scheduler.for_loop()
    assert Scheduler.for_loop(asyncio.get_running_loop()) is scheduler
    assert scheduler.loop is asyncio.get_running_loop()
    timers = [Timer(1.0 + i, lambda: None) for i in range(3)]
    for timer in timers:
        timer.start()
    assert len(scheduler) == 3
    assert sorted(when for when, _ in scheduler.entries()) == [1.0, 2.0, 3.0]
    for timer in timers:
        timer.stop()
    assert list(scheduler.entries()) == []


@pytest.mark.asyncio
@pytest.mark.looptime(noop_cycles=0)
async def test_two_thousand_timers_tick_exactly_on_their_grids() -> None:
    """2000 heartbeats with "auto" phases (spread over the interval), 10 ticks each."""
    records: list[TickRecord] = []
    timers = [
        Timer(1.0, lambda: None, phase="auto", name=f"dev-{i}", observers=[records.append])
        for i in range(2000)
    ]
    for timer in timers:
        timer.start()
    scheduler = Scheduler.for_loop()
    await asyncio.sleep(11.0)  # ticks at N + phase for N = 1..10
    assert len(scheduler) == 2000  # one entry per timer, never more
    for timer in timers:
        timer.stop()
    assert len(records) == 20_000
    for timer in timers:
        assert timer.statistics().ticks == 10
    assert all(r.due == r.number * 1.0 + timer_phase(r.timer) for r in records)
    assert all(0.0 <= r.lateness <= LOOPTIME_RESOLUTION for r in records)
    # Sorted by due time, ticks ran in due order.
    started = [r.started for r in records]
    assert started == sorted(started)


def timer_phase(name: str) -> float:
    import zlib

    return zlib.crc32(name.encode()) / 2**32 * 1.0


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_stale_entries_are_dropped_lazily() -> None:
    scheduler = Scheduler.for_loop()
    calls: list[float] = []
    loop = asyncio.get_running_loop()
    timer = Timer(1.0, lambda: calls.append(loop.time()))
    for _ in range(100):
        timer.start()
        timer.stop()
    timer.start()
    assert len(scheduler) == 101  # 100 stale entries, dropped when they come up
    assert len(list(scheduler.entries())) == 1
    await asyncio.sleep(1.0)
    assert calls == [1.0]  # stale entries never fire
    assert len(scheduler) == 1
    timer.stop()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_timers_restarted_onto_a_dropped_bucket_still_tick() -> None:
    """Two aligned timers due at 1.0 share an entry and a bucket; both stop, and a wake-up at
    0.5 drops the stale entries. Restarted onto the same due time, they must get a new entry
    (the dropped bucket was once left open for appends, so they never ticked again)."""
    loop = asyncio.get_running_loop()
    calls: list[tuple[str, float]] = []
    other = Timer(0.5, lambda: other.stop(), name="other")
    first = Timer(1.0, lambda: calls.append(("first", loop.time())), align=True)
    second = Timer(1.0, lambda: calls.append(("second", loop.time())), align=True)
    other.start()
    first.start()
    second.start()
    first.stop()
    second.stop()
    await asyncio.sleep(0.6)
    first.start()
    second.start()
    await asyncio.sleep(2.5)
    first.stop()
    second.stop()
    assert calls == [(name, t) for t in (1.0, 2.0, 3.0) for name in ("first", "second")]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_close_drops_every_entry() -> None:
    scheduler = Scheduler.for_loop()
    calls: list[int] = []
    timer = Timer(1.0, lambda: calls.append(1))
    timer.start()
    scheduler.close()
    assert len(scheduler) == 0
    await asyncio.sleep(3.0)
    assert calls == []
    timer.stop()
    assert Scheduler.for_loop() is not scheduler  # a fresh one on next use


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_virtual_time_never_uses_precise_wakeups() -> None:
    assert not Scheduler.for_loop().precise


@pytest.mark.asyncio
@pytest.mark.parametrize(("mode", "precise"), [("loop", False), ("precise", True)])
async def test_wakeup_mode_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, mode: str, precise: bool
) -> None:
    monkeypatch.setenv("GATEBEAT_WAKEUP", mode)
    scheduler = Scheduler.for_loop()
    assert scheduler.precise is precise
    scheduler.close()


@pytest.mark.asyncio
async def test_explicit_wakeup_overrides_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEBEAT_WAKEUP", "precise")
    scheduler = Scheduler.for_loop(wakeup="loop")
    assert not scheduler.precise
    scheduler.close()


@pytest.mark.asyncio
async def test_bad_wakeup_environment_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEBEAT_WAKEUP", "fast")
    with pytest.raises(
        ValueError, match="GATEBEAT_WAKEUP must be auto, loop or precise, got 'fast'"
    ):
        Timer(1.0, lambda: None).start()


@pytest.mark.asyncio
async def test_auto_uses_precise_wakeups_on_the_real_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GATEBEAT_WAKEUP", raising=False)
    scheduler = Scheduler.for_loop()
    assert scheduler.precise
    scheduler.close()


async def run_sparse_heartbeat(mode: str) -> list[TickRecord]:
    Scheduler.for_loop(wakeup=mode)  # type: ignore[arg-type]
    records: list[TickRecord] = []
    timer = Timer(0.0173, lambda: None, observers=[records.append])  # not on whole ms
    timer.start()
    await asyncio.sleep(0.4)
    timer.stop()
    return records


@pytest.mark.asyncio
@pytest.mark.realtime
async def test_never_early_and_small_lateness_on_an_idle_loop() -> None:
    records = await run_sparse_heartbeat("loop")
    assert len(records) >= 15  # 23 due; fewer only if a tick ran very late
    lateness = [r.lateness for r in records]
    assert min(lateness) >= 0.0  # never early, although the selector may wake early
    assert statistics.median(lateness) < 0.005  # ~0.5 ms: asyncio rounds its sleep up to ms
    assert max(lateness) < 0.1  # generous: two shared cores under load


@pytest.mark.asyncio
@pytest.mark.realtime
async def test_precise_wakeups_on_an_idle_loop() -> None:
    records = await run_sparse_heartbeat("precise")
    assert PRECISE_SLACK < 0.0173  # so coalescing never delays this sparse heartbeat
    assert len(records) >= 15  # 23 due; fewer only if a tick ran very late
    lateness = [r.lateness for r in records]
    assert min(lateness) >= 0.0
    assert statistics.median(lateness) < 0.005  # ~0.2 ms idle: the timerfd wakes the selector
    assert max(lateness) < 0.1  # generous: two shared cores under load
