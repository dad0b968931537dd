"""Benchmark: Modbus TCP polls per second through gatebeat's sessions, on one core.

The server (pymodbus's own, via ``service.simulators.modbus``) runs in a child process on
127.0.0.1, so the numbers are for the client side: grouping, the bus turn, the error boundary
and decoding. Each device has its own connection and bus; every poll reads one block of
register specs (grouped into one request). A second table counts requests per poll with and
without grouping.

``polls/s`` is what the pair achieved (the single-process pymodbus server is often the
bottleneck); ``polls/s/core`` is what the client could do with a core to itself
(1 / client CPU seconds per poll).

Run: ``python bench/modbus_polls.py [--seconds 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time

from service.bus import Bus
from service.simulators.modbus import ModbusSimulator, UnitProfile
from service.transports.modbus import ModbusSession, ModbusTcpSettings
from service.values import RegisterSpec

SPECS = [
    RegisterSpec(field="a", table="holding", address=0, type="float32"),
    RegisterSpec(field="b", table="holding", address=2, type="int32"),
    RegisterSpec(field="c", table="holding", address=4, type="uint16", scale=0.1),
    RegisterSpec(field="d", table="holding", address=5, type="int16"),
    RegisterSpec(field="e", table="holding", address=6, type="uint64"),
]
SPREAD = [
    RegisterSpec(field=f"r{i}", table="holding", address=i * 2, type="uint16") for i in range(10)
] + [RegisterSpec(field=f"c{i}", table="coil", address=i, type="bool") for i in range(8)]


def _serve(port_queue: multiprocessing.Queue[int]) -> None:
    async def main() -> None:
        sim = ModbusSimulator(UnitProfile(unit_id=0))  # unit 0 answers every unit id
        port_queue.put(await sim.start_tcp())
        await asyncio.Event().wait()

    asyncio.run(main())


async def polls_per_second(port: int, devices: int, seconds: float) -> tuple[float, float]:
    """Return (polls per wall-clock second, client CPU microseconds per poll)."""
    sessions = [
        ModbusSession(
            ModbusTcpSettings(host="127.0.0.1", port=port), device=f"d{i}", unit_id=1,
            bus=Bus(f"bus{i}"),
        )
        for i in range(devices)
    ]  # fmt: skip
    for session in sessions:  # connect first
        await session.read(SPECS)
    count = 0
    stop_at = time.perf_counter() + seconds

    async def loop(session: ModbusSession) -> None:
        nonlocal count
        while time.perf_counter() < stop_at:
            await session.read(SPECS)
            count += 1

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(loop(s) for s in sessions))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    for session in sessions:
        await session.close()
    return count / elapsed, cpu / count * 1e6


def requests_per_poll(grouped: bool) -> int:
    settings = ModbusTcpSettings(host="127.0.0.1", port=1, one_request_per_field=not grouped)
    session = ModbusSession(settings, device="x", unit_id=1, bus=Bus("x"), writable=())
    return len(session.plan(SPREAD))


async def main(seconds: float) -> None:
    queue: multiprocessing.Queue[int] = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve, args=(queue,), daemon=True)
    server.start()
    try:
        port = queue.get(timeout=10)
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # the client: one core
        print(f"Modbus TCP polls per second (client on one core, {seconds:g} s per row, "
              f"{len(SPECS)} specs = 8 registers = 1 request per poll)")  # fmt: skip
        print(f"{'devices':>8} | {'polls/s':>9} | {'client CPU/poll':>15} | {'polls/s/core':>12}")
        print(f"{'-' * 8}-+-{'-' * 9}-+-{'-' * 15}-+-{'-' * 12}")
        for devices in (1, 10, 100):
            rate, cpu_us = await polls_per_second(port, devices, seconds)
            print(f"{devices:>8} | {rate:>9,.0f} | {cpu_us:>12,.0f} us | {1e6 / cpu_us:>12,.0f}")
        print()
        print(f"Requests per poll for {len(SPREAD)} fields (10 registers 2 apart, 8 coils)")
        print(f"{'grouping':>26} | requests")
        print(f"{'-' * 26}-+---------")
        print(f"{'one_request_per_field':>26} | {requests_per_poll(False):>8}")
        print(f"{'grouped, max_fill=0':>26} | {requests_per_poll(True):>8}")
        filled = ModbusSession(
            ModbusTcpSettings(host="127.0.0.1", port=1, max_fill=1), device="y", unit_id=1,
            bus=Bus("y"),
        )  # fmt: skip
        print(f"{'grouped, max_fill=1':>26} | {len(filled.plan(SPREAD)):>8}")
    finally:
        server.terminate()
        server.join(5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per row")
    asyncio.run(main(parser.parse_args().seconds))
