"""The service's own health: systemd notify, /healthz during a stall, exit after a long stall,
and the same run on uvloop."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest

from service.runner import STALL_EXIT_CODE
from service.simulators.modbus import ModbusSimulator, plc_watchdog_profile
from tests.e2e.helpers import (
    free_port,
    gatebeat,
    get,
    lifecycle_config,
    scrape,
    stop,
    wait_until,
)

CONFIG = """
[metrics]
listen = "127.0.0.1:{metrics_port}"

[runtime]
{runtime}

[[devices]]
name = "plc"
driver = "{driver}"
unit_id = 1
transport = {{ kind = "modbus-tcp", host = "127.0.0.1", port = {modbus_port}, timeout = 0.3 }}

  [[devices.heartbeats]]
  name = "watchdog"
  interval = 0.1
"""

BLOCKING_DRIVER = '''
"""A driver whose fifth heartbeat blocks the event loop (a bug a real driver could have)."""
import time

TRANSPORTS = ["modbus-tcp"]


async def heartbeat(tick):
    if tick.number >= 5:
        time.sleep(60)
'''


def write_config(
    tmp_path: Path, modbus_port: int, *, runtime: str = "", driver: str
) -> tuple[Path, int]:
    metrics_port = free_port()
    path = tmp_path / "gatebeat.toml"
    path.write_text(
        CONFIG.format(
            metrics_port=metrics_port, modbus_port=modbus_port, runtime=runtime, driver=driver
        )
    )
    return path, metrics_port


@pytest.mark.e2e
@pytest.mark.asyncio
async def test_systemd_gets_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    simulator = ModbusSimulator(plc_watchdog_profile(1))
    port = await simulator.start_tcp()
    config, _ = write_config(tmp_path, port, driver="example_plc_watchdog")
    sock_path = str(tmp_path / "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(sock_path)
    receiver.settimeout(10)
    env = {"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"}
    try:
        with gatebeat("run", "--config", str(config), env=env, log=tmp_path / "log") as process:
            first = await asyncio.to_thread(receiver.recv, 64)
            assert first == b"READY=1"
            pings = [await asyncio.to_thread(receiver.recv, 64) for _ in range(3)]
            assert pings == [b"WATCHDOG=1"] * 3
            code, _ = await asyncio.to_thread(stop, process)
            assert code == 0
            messages = []
            receiver.settimeout(2)
            while True:
                try:
                    messages.append(receiver.recv(64))
                except TimeoutError:
                    break
            assert b"STOPPING=1" in messages
    finally:
        receiver.close()
        await simulator.close()


@pytest.mark.e2e
@pytest.mark.asyncio
async def test_a_stalled_loop_turns_healthz_503_and_the_process_exits(tmp_path: Path) -> None:
    simulator = ModbusSimulator(plc_watchdog_profile(1))
    port = await simulator.start_tcp()
    drivers = tmp_path / "drivers"
    drivers.mkdir()
    (drivers / "blocker.py").write_text(BLOCKING_DRIVER)
    runtime = f'driver_dirs = ["{drivers}"]\nmax_loop_lag = 0.3\nexit_after_unhealthy = 2.0\n'
    config, metrics_port = write_config(tmp_path, port, runtime=runtime, driver="blocker")
    try:
        with gatebeat("run", "--config", str(config), log=tmp_path / "log") as process:
            await asyncio.to_thread(
                wait_until, lambda: scrape(metrics_port), timeout=20, what="metrics served"
            )

            def unhealthy() -> dict | None:
                try:
                    status, body = get(f"http://127.0.0.1:{metrics_port}/healthz")
                except OSError:
                    return None
                return json.loads(body) if status == 503 else None

            reason = await asyncio.to_thread(wait_until, unhealthy, timeout=20, what="503")
            assert reason["status"] == "unhealthy"
            assert any("loop lag" in p or "plc/watchdog last ran" in p for p in reason["problems"])
            stalled_at = time.monotonic()
            code = await asyncio.to_thread(process.wait, 20)
            assert code == STALL_EXIT_CODE
            assert time.monotonic() - stalled_at < 10
    finally:
        await simulator.close()
    assert "exiting code=70" in (tmp_path / "log").read_text()


@pytest.mark.e2e
@pytest.mark.asyncio
async def test_run_on_uvloop(tmp_path: Path) -> None:
    simulator = ModbusSimulator(plc_watchdog_profile(1))
    port = await simulator.start_tcp()
    config, metrics_port = write_config(
        tmp_path, port, runtime='loop = "uvloop"', driver="example_plc_watchdog"
    )
    try:
        with gatebeat("run", "--config", str(config), log=tmp_path / "log") as process:

            def ticking() -> dict | None:
                metrics = scrape(metrics_port)
                key = ("gatebeat_ticks_total", (("device", "plc"), ("timer", "watchdog")))
                return metrics if metrics and metrics.get(key, 0) >= 10 else None

            metrics = await asyncio.to_thread(wait_until, ticking, timeout=20, what="10 ticks")
            up = metrics[
                ("gatebeat_device_up", (("device", "plc"), ("driver", "example_plc_watchdog")))
            ]
            assert up == 1.0
            assert simulator.registers("holding", 100, 1, unit=1)[0] >= 5
            code, seconds = await asyncio.to_thread(stop, process)
            assert code == 0 and seconds < 5
    finally:
        await simulator.close()


SLOW_DEVICE_CONFIG = """
[metrics]
listen = "127.0.0.1:{metrics_port}"

[runtime]
max_loop_lag = 0.2
exit_after_unhealthy = 1.0

[[devices]]
name = "plc"
driver = "example_plc_watchdog"
unit_id = 1
transport = {{ kind = "modbus-tcp", host = "127.0.0.1", port = {modbus_port}, timeout = 3.0 }}

  [[devices.heartbeats]]
  name = "watchdog"
  interval = 0.1
"""


@pytest.mark.e2e
@pytest.mark.asyncio
async def test_a_slow_device_drops_device_up_but_keeps_the_service_healthy(
    tmp_path: Path,
) -> None:
    """Replies take 1 s, far beyond 3 heartbeat intervals + max_loop_lag (0.5 s): the tick in
    flight is the device's problem, so /healthz stays 200 and exit_after_unhealthy never fires
    (before the fix: 503 "plc/watchdog last ran ..." and exit 70 after about 2 s)."""
    simulator = ModbusSimulator(plc_watchdog_profile(1))
    simulator.delay = 1.0
    port = await simulator.start_tcp()
    metrics_port = free_port()
    config = tmp_path / "gatebeat.toml"
    config.write_text(SLOW_DEVICE_CONFIG.format(metrics_port=metrics_port, modbus_port=port))
    up_key = ("gatebeat_device_up", (("device", "plc"), ("driver", "example_plc_watchdog")))
    ticks_key = ("gatebeat_ticks_total", (("device", "plc"), ("timer", "watchdog")))
    statuses: list[int] = []
    ups: set[float] = set()
    try:
        with gatebeat("run", "--config", str(config), log=tmp_path / "log") as process:
            await asyncio.to_thread(
                wait_until, lambda: scrape(metrics_port), timeout=20, what="metrics served"
            )

            def slow_ticks_done() -> dict | None:
                assert process.poll() is None, f"exited with {process.returncode}"
                statuses.append(get(f"http://127.0.0.1:{metrics_port}/healthz")[0])
                metrics = scrape(metrics_port)
                if metrics and up_key in metrics:
                    ups.add(metrics[up_key])
                return metrics if metrics and metrics.get(ticks_key, 0) >= 4 else None

            # four slow ticks: about 4 s, four times exit_after_unhealthy
            await asyncio.to_thread(wait_until, slow_ticks_done, timeout=20, what="4 slow ticks")
            assert set(statuses) == {200}, statuses
            assert 0.0 in ups  # stale between replies: no success within 3 intervals

            simulator.delay = 0.0

            def back_up() -> bool:
                metrics = scrape(metrics_port)
                return bool(metrics and metrics.get(up_key) == 1.0)

            await asyncio.to_thread(wait_until, back_up, timeout=10, what="device up")
            assert get(f"http://127.0.0.1:{metrics_port}/healthz")[0] == 200
            code, _ = await asyncio.to_thread(stop, process)
            assert code == 0
    finally:
        await simulator.close()


@pytest.mark.e2e
def test_a_startup_hook_that_blocks_the_loop_ends_in_exit_70(tmp_path: Path) -> None:
    """The stall guard runs from the watchdog's start, not only once start-up is done (before
    the fix the process stayed up, unhealthy, for the hook's whole 20 s)."""
    config, _, mark = lifecycle_config(
        tmp_path, runtime="max_loop_lag = 0.3\nexit_after_unhealthy = 1.0"
    )
    env = {"MARK": str(mark), "LIFECYCLE_MODE": "block-startup"}
    with gatebeat("run", "--config", str(config), env=env, log=tmp_path / "log") as process:
        wait_until(lambda: "blocking" in mark.read_text(), timeout=20, what="hook blocking")
        blocked_at = time.monotonic()
        code = process.wait(timeout=10)
    assert code == STALL_EXIT_CODE
    assert time.monotonic() - blocked_at < 5
    assert "exiting code=70" in (tmp_path / "log").read_text()
