"""Per-tick cost of the engine's dispatch, counted by cachegrind on a fake clock: repeatable.

CPU per tick measured in real time moves by 30 % and more between runs on a shared VM (see
bench/README.md, "Noise"), which hides any change smaller than that. This script counts instead:
it runs N timers on a loop whose clock only moves when told to, calls the engine's wake-up
directly every ``--step`` seconds of that clock (as the loop would wake it), and runs that
under valgrind's cachegrind twice, for two lengths of fake time. The difference between the two
runs, divided by the ticks between them, is what one more tick costs: instructions, first-level
data misses and last-level misses (with a last-level cache of ``--ll`` bytes, like a share of a
server's L3). No loop, no system calls, no wake-ups: the engine's own work per tick only.

Run ``python bench/engine_cachegrind.py`` (needs valgrind: ``apt-get install valgrind``; about
a minute). ``--impls reference,gatebeat``, ``--n 10000``, ``--interval 1``,
``--mode spread|same``, ``--ll BYTES``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

START = 1000.0
LEAD = 1.5  # fake seconds before the counted part, so every timer has ticked at least once


class FakeClockLoop(asyncio.SelectorEventLoop):
    """A selector loop whose ``time()`` is :attr:`now`, moved only by the driver below."""

    now = START

    def time(self) -> float:
        return FakeClockLoop.now


def _drive(impl: str, n: int, interval: float, mode: str, seconds: float, step: float) -> int:
    """Run ``n`` timers for ``LEAD + seconds`` fake seconds; return the ticks delivered."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _engine_impls

    ticks = [0]

    def recorder() -> Callable[[], None]:
        def tick() -> None:
            ticks[0] += 1

        return tick

    async def main() -> None:
        loop = asyncio.get_running_loop()
        offsets = [i * interval / n if mode == "spread" else 0.0 for i in range(n)]
        firsts = [START + 0.5 + offset for offset in offsets]
        recorders = [recorder() for _ in range(n)]
        wake: Callable[[], None]
        if impl == "reference":
            reference = _engine_impls.ReferenceHeap()
            await reference.prepare(loop)
            reference.start(firsts, interval, recorders)
            wake = reference._wake
        else:
            from service.scheduler import Scheduler

            # The benchmark's own gatebeat row (the same timers, options and alignment), on a
            # scheduler made first so that it reads the fake clock at C level, as it reads
            # time.monotonic on a real loop (the fake loop's Python-level time() would charge
            # the engine a Python call per tick).
            scheduler = Scheduler.for_loop(loop, wakeup="loop")
            scheduler.clock = functools.partial(getattr, FakeClockLoop, "now")
            gatebeat = _engine_impls.Gatebeat(prometheus=False)
            await gatebeat.prepare(loop)
            gatebeat.start(firsts, interval, recorders)
            wake = scheduler._on_wake
        gc.collect()
        gc.freeze()
        end = FakeClockLoop.now + LEAD + seconds
        while FakeClockLoop.now < end:
            FakeClockLoop.now += step
            wake()

    loop = FakeClockLoop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return ticks[0]


def _cachegrind(argv: list[str], ll: int, out: str) -> tuple[int, dict[str, int]]:
    """Run the driver ``argv`` under cachegrind: the ticks it delivered, the run's totals."""
    cmd = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=yes",
        f"--LL={ll},16,64",
        f"--cachegrind-out-file={out}",
        *argv,
    ]
    stdout = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    ticks = int(re.findall(r"ticks=(\d+)", stdout)[-1])
    events: list[str] = []
    totals: list[int] = []
    with open(out) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("summary:"):
                totals = [int(v) for v in line.split()[1:]]
    return ticks, dict(zip(events, totals, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impls", default="reference,gatebeat")
    parser.add_argument("--n", type=int, default=10000, help="timers (default 10,000)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds (default 1)")
    parser.add_argument("--mode", choices=("spread", "same"), default="spread")
    parser.add_argument(
        "--step", type=float, default=0.0011, help="fake seconds between wake-ups (1.1 ms)"
    )
    parser.add_argument("--ll", type=int, default=8 << 20, help="last-level cache bytes (8 MiB)")
    parser.add_argument("--drive", nargs=2, help=argparse.SUPPRESS)  # impl seconds (child)
    args = parser.parse_args()
    if args.drive:
        impl, seconds = args.drive
        ticks = _drive(impl, args.n, args.interval, args.mode, float(seconds), args.step)
        print(f"ticks={ticks}")
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")

    print(
        f"# per-tick cost of dispatch under cachegrind: {args.n} timers at {args.interval:g} s, "
        f"{args.mode}, a wake-up every {args.step * 1000:g} ms, last-level cache "
        f"{args.ll >> 20} MiB (difference of a 1 s and a 3 s run, divided by the ticks between)"
    )
    print(f"{'implementation':16} {'ticks':>7} {'instr/tick':>11} {'D1 miss':>8} {'LL miss':>8}")
    python = os.path.realpath(sys.executable)  # not a shim script: valgrind must see Python
    with tempfile.TemporaryDirectory() as tmp:
        for impl in args.impls.split(","):
            runs = []
            for seconds in (1, 3):
                child = [
                    python,
                    os.path.abspath(__file__),
                    "--n",
                    str(args.n),
                    "--interval",
                    str(args.interval),
                    "--mode",
                    args.mode,
                    "--step",
                    str(args.step),
                    "--drive",
                    impl,
                    str(seconds),
                ]
                out = os.path.join(tmp, f"{impl}.{seconds}")
                runs.append(_cachegrind(child, args.ll, out))
            (t1, a), (t3, b) = runs
            per = {key: (b[key] - a[key]) / (t3 - t1) for key in a}
            misses_d1 = per["D1mr"] + per["D1mw"]
            misses_ll = per["DLmr"] + per["DLmw"]
            print(f"{impl:16} {t3 - t1:>7} {per['Ir']:>11,.0f} {misses_d1:>8.1f} {misses_ll:>8.1f}")


if __name__ == "__main__":
    main()
