"""The timer implementations compared by ``bench/engine.py``, and the per-row measurement.

Every implementation gets the same job: N timers, timer ``i`` due on the grid
``first[i] + k * interval`` (loop-time seconds, which on both loops is ``time.monotonic``,
truncated to the millisecond on uvloop), each tick calling ``rec[i]()``, a closure that appends
``time.monotonic()`` to that timer's list. ``start`` returns the grid anchor each timer actually
uses (gatebeat picks its own from ``loop.time()`` at ``start()``; the others take ``first``).

A row runs in its own process (``run_row``): timing phase first, then a tracemalloc phase that
creates N fresh timers with no-op callbacks to measure memory per timer.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import itertools
import json
import logging
import math
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

Recorder = Callable[[], None]

# -- implementations ---------------------------------------------------------------------------


class Impl:
    """Base: ``prepare`` builds shared infrastructure once, ``start`` N timers, ``stop`` all."""

    slow = False  # a third-party library whose setup/ticks cost 100x more: bigger time budget
    # FIXED with skips (gatebeat): a tick that starts after the next grid point(s) skips them,
    # so the tick after one at time t serves the first grid point after t. Otherwise every
    # grid point gets a tick, late ones back to back (the k-th tick serves grid point k).
    skips_passed_ticks = False

    async def prepare(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def start(self, firsts: list[float], interval: float, rec: list[Recorder]) -> list[float]:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def info(self) -> str:
        return ""


class TaskImpl(Impl):
    """Shared by the two task-per-timer baselines."""

    def start(self, firsts: list[float], interval: float, rec: list[Recorder]) -> list[float]:
        self.tasks = [
            self.loop.create_task(self.body(first, interval, r))
            for first, r in zip(firsts, rec, strict=True)
        ]
        return list(firsts)

    async def body(self, first: float, interval: float, rec: Recorder) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []


class NaiveSleep(TaskImpl):
    """``while True: await asyncio.sleep(interval)``: each wake-up's lateness accumulates."""

    async def body(self, first: float, interval: float, rec: Recorder) -> None:
        await asyncio.sleep(first - self.loop.time())  # the phase
        while True:
            rec()
            await asyncio.sleep(interval)


class AbsoluteSleep(TaskImpl):
    """A task sleeping to the absolute deadline ``first + n * interval``: no drift."""

    async def body(self, first: float, interval: float, rec: Recorder) -> None:
        loop = self.loop
        n = 0
        while True:
            await asyncio.sleep(first + n * interval - loop.time())
            rec()
            n += 1


class ReferenceHeap(Impl):
    """The floor on asyncio: one heap, one ``loop.call_at`` handle, never early, no extras."""

    def start(self, firsts: list[float], interval: float, rec: list[Recorder]) -> list[float]:
        self.interval = interval
        self.heap: list[tuple[float, int, int, float, Recorder]] = []
        self.seq = itertools.count()
        self.handle: asyncio.TimerHandle | None = None
        self.handle_when = math.inf
        self.millisecond_timers = type(self.loop).__module__.startswith("uvloop")
        # The clock at full resolution, as gatebeat reads it: on uvloop loop.time() is
        # time.monotonic() truncated to the millisecond; on asyncio it is time.monotonic().
        self.clock = time.monotonic if self.millisecond_timers else self.loop.time
        for first, r in zip(firsts, rec, strict=True):
            self.heap.append((first, next(self.seq), 0, first, r))
        heapq.heapify(self.heap)
        self._arm(self.heap[0][0])
        return list(firsts)

    def _arm(self, when: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.handle = self.loop.call_at(when, self._wake)
        self.handle_when = when

    def _wake(self) -> None:
        self.handle, self.handle_when = None, math.inf
        heap, now, interval, seq = self.heap, self.clock(), self.interval, self.seq
        ran = False
        while heap and heap[0][0] <= now:
            _, _, n, first, r = heapq.heappop(heap)
            r()
            n += 1
            heapq.heappush(heap, (first + n * interval, next(seq), n, first, r))
            ran = True
        if heap:
            when = heap[0][0]
            if not ran and self.millisecond_timers:
                # uvloop rounds timer delays to whole milliseconds and may wake early: arm a
                # millisecond on instead of spinning until the clock moves (gatebeat does too).
                when = max(when, now + 0.001)
            self._arm(when)

    async def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.heap = []


class ReferencePrecise(ReferenceHeap):
    """The reference heap woken the way gatebeat's precise mode is: same timerfd, same rule.

    Not a competitor: it splits gatebeat's precise CPU per tick into what the wake-ups cost
    (this row against the reference) and what the engine adds on top (gatebeat against this
    row). A wake-up that ran ticks is followed by the next one no sooner than
    ``PRECISE_SLACK`` later, on the repeating grid, exactly as ``Scheduler._arm`` does.
    Its tick loop repeats the reference's on purpose: splitting the reference's ``_wake`` into
    shared helpers would add calls to every wake-up of the floor this row is measured against.
    """

    def start(self, firsts: list[float], interval: float, rec: list[Recorder]) -> list[float]:
        from service.scheduler import PRECISE_SLACK
        from service.wakeup import TimerFdWaker

        self.waker = TimerFdWaker(self.loop, self._wake)
        self.slack = PRECISE_SLACK
        self.last_run = -math.inf
        return super().start(firsts, interval, rec)

    def _arm(self, when: float) -> None:
        self.handle_when = when
        slack = self.slack
        floor = self.last_run + slack
        if when < floor:
            self.waker.arm_on_grid(when, floor, slack)
        else:
            self.waker.arm(when)

    def _wake(self) -> None:
        heap, interval, seq = self.heap, self.interval, self.seq
        now = time.monotonic()  # the loop's clock, untruncated (uvloop's time() is whole ms)
        if heap and heap[0][0] <= now:
            self.last_run = now
        while heap and heap[0][0] <= now:
            _, _, n, first, r = heapq.heappop(heap)
            r()
            n += 1
            heapq.heappush(heap, (first + n * interval, next(seq), n, first, r))
        if heap:
            self._arm(heap[0][0])

    async def stop(self) -> None:
        self.waker.close()


class Gatebeat(Impl):
    """``service.Timer`` FIXED, sync callback (runs inline), optionally a Prometheus observer.

    The wake-up mode (``GATEBEAT_WAKEUP``) is set by the parent in the child's environment.
    Each timer is aligned (``align=True``: its grid is the loop clock's multiples of the
    interval plus ``phase``) with ``phase = first[i] % interval``, which puts it on the
    harness's grid; timers due together then share exactly the same due times, as a gateway's
    aligned heartbeats do. The grid actually used is read back from ``statistics().next_due``.
    """

    skips_passed_ticks = True

    def __init__(self, prometheus: bool) -> None:
        self.prometheus = prometheus
        self.count = 0

    async def prepare(self, loop: asyncio.AbstractEventLoop) -> None:
        await super().prepare(loop)
        from service import Scheduler, Timer  # noqa: F401

        self.scheduler = Scheduler.for_loop(loop)
        if self.prometheus:
            from service.metrics import MetricsHub

            self.hub = MetricsHub()  # gatebeat's own exporter observer, as `gatebeat run` uses

    def _observer(self, name: str) -> Callable[[Any], None]:
        observer: Callable[[Any], None] = self.hub.observer("bench", name, 1.0)
        return observer

    def start(self, firsts: list[float], interval: float, rec: list[Recorder]) -> list[float]:
        from service import SchedulePolicy, Timer

        self.timers = []
        anchors = []
        for first, r in zip(firsts, rec, strict=True):
            self.count += 1
            name = f"t{self.count}"
            phase = first % interval
            timer = Timer(
                interval,
                r,
                SchedulePolicy.FIXED,
                name=name,
                phase=phase,
                immediate=True,
                align=True,
                observers=[self._observer(name)] if self.prometheus else (),
            )
            timer.start()
            due = timer.statistics().next_due
            assert due is not None
            anchors.append(due)
            self.timers.append(timer)
        return anchors

    async def stop(self) -> None:
        self.skipped_per_timer = [t.statistics().skipped for t in self.timers]
        self.skipped = sum(self.skipped_per_timer)
        self.overruns = sum(t.statistics().overruns for t in self.timers)
        for timer in self.timers:
            timer.stop()
        self.timers = []

    def info(self) -> str:
        mode = "precise" if self.scheduler.precise else "loop"
        return f"wakeup={mode}" + (f" skipped={self.skipped}" if self.skipped else "")


class APScheduler3(Impl):
    """APScheduler 3 AsyncIOScheduler, one interval job per timer (coroutine job, on the loop).

    A plain-function job would run in a thread pool; the coroutine job keeps it on the loop
    like the others. Grid anchor: ``start_date`` (wall clock, mapped from monotonic once).
    Defaults kept: misfire_grace_time=1 s, coalesce=True, max_instances=1. Its logger gets a
    NullHandler so "missed by" warnings cost a record but print nothing.
    """

    slow = True

    async def prepare(self, loop: asyncio.AbstractEventLoop) -> None:
        await super().prepare(loop)
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        log = logging.getLogger("apscheduler")
        log.addHandler(logging.NullHandler())
        log.propagate = False
        self.scheduler = AsyncIOScheduler(event_loop=loop, timezone=UTC)
        self.scheduler.start()
        self.jobs: list[Any] = []

    def start(self, firsts: list[float], interval: float, rec: list[Recorder]) -> list[float]:
        offset = time.time() - time.monotonic()
        for first, r in zip(firsts, rec, strict=True):
            start = datetime.fromtimestamp(first + offset, UTC)
            self.jobs.append(
                self.scheduler.add_job(self.job(r), "interval", seconds=interval, start_date=start)
            )
        return list(firsts)

    def job(self, r: Recorder) -> Callable[[], Any]:
        async def job() -> None:
            r()

        return job

    async def stop(self) -> None:
        self.scheduler.remove_all_jobs()
        self.jobs = []


class APScheduler3Thread(APScheduler3):
    """APScheduler 3 given the plain function every other implementation gets.

    Its AsyncIOScheduler's default executor runs a plain function in the loop's default thread
    pool: what a user of APScheduler gets without writing a coroutine wrapper.
    """

    def job(self, r: Recorder) -> Callable[[], Any]:
        return r


class AioClockImpl(Impl):
    """aioclock ``Every(seconds=interval)``; tasks run in this loop via ``AioClock.serve()``.

    ``Every`` sleeps ``interval`` *after* each run (relative, like the naive task) and has no
    phase or start time: all of one app's tasks start when ``serve()`` does. Same-instant rows
    use one app with N tasks, served at ``first - interval``; phase-spread rows need one app per
    timer, each served at its own ``first[i] - interval`` (the only way to offset it).
    """

    slow = True

    async def prepare(self, loop: asyncio.AbstractEventLoop) -> None:
        await super().prepare(loop)
        logging.getLogger("aioclock").addHandler(logging.NullHandler())
        import aioclock  # noqa: F401  (import cost stays out of the setup time)

        self.serving: list[asyncio.Task[None]] = []
        self.handles: list[asyncio.TimerHandle] = []

    def start(self, firsts: list[float], interval: float, rec: list[Recorder]) -> list[float]:
        from aioclock import AioClock, Every

        same = len(set(firsts)) == 1

        def make(r: Recorder) -> Callable[[], Any]:
            async def task() -> None:
                r()

            return task

        def serve(app: AioClock) -> None:
            self.serving.append(self.loop.create_task(app.serve()))

        apps: list[tuple[float, AioClock]] = []
        if same:
            app = AioClock()
            for r in rec:
                app.task(trigger=Every(seconds=interval))(make(r))
            apps.append((firsts[0], app))
        else:
            for first, r in zip(firsts, rec, strict=True):
                app = AioClock()
                app.task(trigger=Every(seconds=interval))(make(r))
                apps.append((first, app))
        for first, app in apps:
            self.handles.append(self.loop.call_at(first - interval, serve, app))
        return list(firsts)

    async def stop(self) -> None:
        for handle in self.handles:
            handle.cancel()
        for task in self.serving:
            task.cancel()
        await asyncio.gather(*self.serving, return_exceptions=True)
        self.serving, self.handles = [], []


IMPLS: dict[str, Callable[[], Impl]] = {
    "reference": ReferenceHeap,
    "reference-precise": ReferencePrecise,
    "gatebeat": lambda: Gatebeat(prometheus=False),
    "gatebeat-loop": lambda: Gatebeat(prometheus=False),
    "gatebeat+prom": lambda: Gatebeat(prometheus=True),
    "naive-sleep": NaiveSleep,
    "abs-sleep": AbsoluteSleep,
    "apscheduler3": APScheduler3,
    "apscheduler3-thread": APScheduler3Thread,
    "aioclock": AioClockImpl,
}
WAKEUP = {"gatebeat": "auto", "gatebeat-loop": "loop", "gatebeat+prom": "auto"}
SLOW = {"apscheduler3", "apscheduler3-thread", "aioclock"}

# -- one row -------------------------------------------------------------------------------------


def setup_estimate(impl: str, n: int) -> float:
    """Seconds to allow for creating N timers before the first one is due."""
    return 0.15 + n * (250e-6 if impl in SLOW else 40e-6)


async def _spin(seconds: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        await asyncio.sleep(min(0.05, max(0.0, end - loop.time())))


async def _idle_wake_cpu() -> float:
    """CPU seconds of one idle wake-up of the loop (the harness's own sleep in the window).

    An idle loop blocked in the selector burns nothing; each wake-up costs tens of
    microseconds on a VM. The harness wakes once inside the window, so that is the baseline.
    """
    samples = []
    for _ in range(7):
        c0 = time.process_time()
        await asyncio.sleep(0.01)
        samples.append(time.process_time() - c0)
    return statistics.median(samples)


def _phases(n: int, interval: float, mode: str) -> list[float]:
    if mode == "same":
        return [0.0] * n
    return [i * interval / n for i in range(n)]


def match_ticks(
    ts: list[float],
    anchor: float,
    interval: float,
    k0: int,
    k1: int,
    t_stop: float,
    skips: bool,
) -> tuple[list[float], int]:
    """Lateness (s) of the ticks serving grid points ``k0..k1``, and the points skipped there.

    ``ts`` are one timer's tick times from its first grid point (``anchor``) on. Without
    skips the k-th tick serves grid point k. With skips (FIXED), the tick after one at time t
    serves the first grid point after t: the points that passed meanwhile were skipped.
    """
    lateness: list[float] = []
    skipped = 0
    k = 0  # the grid point the next tick serves
    for t in ts:
        if k > k1 or t > t_stop:
            break
        if k >= k0:
            lateness.append(t - (anchor + k * interval))
        following = k + 1
        if skips:
            following = max(following, math.floor((t - anchor) / interval) + 1)
            skipped += max(0, min(following, k1 + 1) - max(k + 1, k0))
        k = following
    return lateness, skipped


async def _timing(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    name, n, interval, seconds = spec["impl"], spec["n"], spec["interval"], spec["seconds"]
    impl = IMPLS[name]()
    await impl.prepare(loop)
    idle_wake = await _idle_wake_cpu()
    gc.collect()

    phases = _phases(n, interval, spec["mode"])
    # aioclock's Every sleeps first, so it is served one interval before its first due time
    lead = setup_estimate(name, n) + (interval if name == "aioclock" else 0.0)
    base = math.ceil((loop.time() + lead) * 1000) / 1000  # a whole millisecond: exact on uvloop
    firsts = [base + p for p in phases]
    times: list[list[float]] = [[] for _ in range(n)]
    mono = time.monotonic
    rec = [(lambda a=lst.append: a(mono())) for lst in times]
    t_setup = loop.time()
    anchors = impl.start(firsts, interval, rec)
    setup_s = loop.time() - t_setup
    # As a long-running service does after start-up (gatebeat's runner does): the objects that
    # live for the whole run leave the collector's view, so a full collection does not walk
    # ten thousand timers. The same for every implementation.
    gc.freeze()

    # The window opens just before the first due time, once every timer is set up and settled.
    await asyncio.sleep(0.02)
    begin_target = base - min(interval / 2, 0.02)
    late_setup = loop.time() > begin_target
    if not late_setup:
        await asyncio.sleep(begin_target - loop.time())
    t_begin, c_begin = mono(), time.process_time()
    t_cut = t_begin + seconds
    grace = min(max(interval / 2, 0.05), 0.5)
    await asyncio.sleep(t_cut + grace - loop.time())
    t_stop, c_stop = mono(), time.process_time()
    await impl.stop()
    gc.unfreeze()
    info = impl.info()

    lateness: list[float] = []
    last_lateness: list[float] = []
    due = delivered = early = cpu_ticks = skipped = unexplained = 0
    counted: list[int] | None = getattr(impl, "skipped_per_timer", None)
    for index, (anchor, ts) in enumerate(zip(anchors, times, strict=True)):
        if counted is not None:
            # Grid points the ticks passed over in the whole run must all be skips the engine
            # counted: one it did not count is a tick it lost without a word.
            _, inferred = match_ticks(ts, anchor, interval, 0, 2**62, math.inf, True)
            unexplained += max(0, inferred - counted[index])
        cpu_ticks += sum(1 for t in ts if t_begin <= t <= t_stop)
        # grid points in (begin, cut], each matched with the tick that served it
        k0 = 0 if anchor > t_begin else math.floor((t_begin - anchor) / interval) + 1
        k1 = math.floor((t_cut - anchor) / interval)  # last grid point <= cut
        due += max(0, k1 - k0 + 1)
        lates, passed = match_ticks(ts, anchor, interval, k0, k1, t_stop, impl.skips_passed_ticks)
        lateness.extend(lates)
        early += sum(late < 0 for late in lates)
        delivered += len(lates)
        skipped += passed
        if lates:
            last_lateness.append(lates[-1])
    cpu = max(0.0, (c_stop - c_begin) - idle_wake)
    lateness.sort()

    def pct(q: float) -> float | None:
        if not lateness:
            return None
        return lateness[min(len(lateness) - 1, math.ceil(q * len(lateness)) - 1)] * 1e3

    return {
        "p50": pct(0.50),
        "p99": pct(0.99),
        "max": lateness[-1] * 1e3 if lateness else None,
        "min": lateness[0] * 1e3 if lateness else None,
        "due": due,
        "delivered": delivered,
        "skipped": skipped,
        "unexplained_skips": unexplained,
        "early": early,
        "drift": statistics.median(last_lateness) * 1e3 if last_lateness else None,
        "cpu_us": cpu / cpu_ticks * 1e6 if cpu_ticks else None,
        "cpu_ticks": cpu_ticks,
        "idle_wake_us": idle_wake * 1e6,
        "setup_s": setup_s,
        "late_setup": late_setup,
        "info": info,
    }


async def _memory(spec: dict[str, Any]) -> float:
    """Traced bytes per timer: N fresh timers (no-op callbacks), started and settled."""
    loop = asyncio.get_running_loop()
    name, n, interval = spec["impl"], spec["n"], spec["interval"]
    impl = IMPLS[name]()
    await impl.prepare(loop)
    warm = impl.start([loop.time() + 3600.0], interval, [lambda: None])  # lazy shared state
    await asyncio.sleep(0.01)
    await impl.stop()
    del warm
    phases = _phases(n, interval, spec["mode"])
    # Far in the future, so that no timer falls due while ten thousand start under tracemalloc
    # (which slows start-up several-fold); aioclock serves an app one interval before its
    # first due time, so it gets the near start it needs to be set up at all.
    base = loop.time() + (interval + 0.05 if name == "aioclock" else 3600.0)
    firsts = [base + p for p in phases]
    rec = [(lambda: None) for _ in range(n)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    impl.start(firsts, interval, rec)
    # let tasks and served apps reach their first sleep (aioclock serves at first - interval)
    await asyncio.sleep(0.06 + (max(phases) if name == "aioclock" else 0.0))
    for _ in range(3):
        await asyncio.sleep(0)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    await impl.stop()
    return (after - before) / n


async def _row(spec: dict[str, Any]) -> dict[str, Any]:
    result = await _timing(spec)
    # The timing result first, flushed: if the memory phase does not finish in time, the
    # parent still reports the timing (engine.py, run_in_child).
    print(json.dumps({**result, "mem": None, "mem_error": "memory phase did not finish"}))
    sys.stdout.flush()
    if not spec.get("no_memory"):
        gc.collect()
        result["mem"] = await _memory(spec)
    return result


def run_row(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one row in this process on the requested loop; returns the measurements."""
    if spec["impl"] in WAKEUP:
        assert os.environ.get("GATEBEAT_WAKEUP") == WAKEUP[spec["impl"]], "set by the parent"
    if spec["loop"] == "uvloop":
        import uvloop

        return uvloop.run(_row(spec))
    return asyncio.run(_row(spec))


__all__ = ["IMPLS", "SLOW", "WAKEUP", "run_row", "setup_estimate"]
