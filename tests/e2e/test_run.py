"""``gatebeat run`` as a real process against a real Modbus TCP server, read over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.simulators.modbus import ModbusSimulator, boiler_profile
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
journal = "{journal}"
shutdown_timeout = 3.0

[[devices]]
name = "boiler"
driver = "modbus"
unit_id = 1
transport = {{ kind = "modbus-tcp", host = "127.0.0.1", port = {modbus_port}, timeout = 0.3 }}
down_after_failures = 2

  [[devices.polls]]
  name = "temps"
  interval = 0.2

    [[devices.polls.registers]]
    field = "supply_temperature_celsius"
    table = "holding"
    address = 0
    type = "int16"
    scale = 0.1

    [[devices.polls.registers]]
    field = "pump_running"
    table = "coil"
    address = 3
    type = "bool"

  [[devices.heartbeats]]
  name = "watchdog"
  interval = 0.2
  write = {{ table = "holding", address = 100, value = "counter" }}
"""

FAMILIES = [
    "gatebeat_tick_lateness_seconds_bucket",
    "gatebeat_tick_duration_seconds_bucket",
    "gatebeat_ticks_total",
    "gatebeat_tick_overruns_total",
    "gatebeat_ticks_skipped_total",
    "gatebeat_timer_interval_seconds",
    "gatebeat_device_up",
    "gatebeat_device_last_success_timestamp_seconds",
    "gatebeat_reading_supply_temperature_celsius",
    "gatebeat_reading_pump_running",
    "gatebeat_bus_wait_seconds_bucket",
]


def value(metrics: dict, name: str, **labels: str) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))


@pytest.mark.e2e
@pytest.mark.asyncio
async def test_run_polls_heartbeats_exports_and_stops_on_sigterm(tmp_path: Path) -> None:
    simulator = ModbusSimulator(boiler_profile(1))
    modbus_port = await simulator.start_tcp()
    metrics_port = free_port()
    config = tmp_path / "gatebeat.toml"
    config.write_text(
        CONFIG.format(
            metrics_port=metrics_port, modbus_port=modbus_port, journal=tmp_path / "events.db"
        )
    )
    try:
        with gatebeat("run", "--config", str(config), log=tmp_path / "gatebeat.log") as process:

            def healthy_scrape() -> dict | None:
                metrics = scrape(metrics_port)
                if metrics and value(
                    metrics, "gatebeat_device_up", device="boiler", driver="modbus"
                ):
                    return metrics
                return None

            metrics = await asyncio.to_thread(
                wait_until, healthy_scrape, timeout=20, what="boiler up"
            )
            names = {name for name, _ in metrics}
            assert [f for f in FAMILIES if f not in names] == []
            assert value(
                metrics, "gatebeat_reading_supply_temperature_celsius", device="boiler"
            ) == (pytest.approx(65.5))
            assert value(metrics, "gatebeat_reading_pump_running", device="boiler") == 1.0
            assert (
                value(metrics, "gatebeat_timer_interval_seconds", device="boiler", timer="temps")
                == 0.2
            )

            def counter_written() -> int:
                return int(simulator.registers("holding", 100, 1, unit=1)[0])

            assert (
                await asyncio.to_thread(
                    wait_until, counter_written, timeout=10, what="watchdog counter written"
                )
                >= 1
            )
            status, body = await asyncio.to_thread(get, f"http://127.0.0.1:{metrics_port}/healthz")
            assert status == 200, body
            assert json.loads(body)["status"] == "ok"
            status, page = await asyncio.to_thread(get, f"http://127.0.0.1:{metrics_port}/")
            assert status == 200 and "/metrics" in page

            # The device goes away: its readings disappear and device_up drops.
            await simulator.stop()

            def device_down() -> dict | None:
                m = scrape(metrics_port)
                if m and value(m, "gatebeat_device_up", device="boiler", driver="modbus") == 0.0:
                    return m
                return None

            down = await asyncio.to_thread(wait_until, device_down, timeout=20, what="boiler down")
            assert (
                value(down, "gatebeat_reading_supply_temperature_celsius", device="boiler") is None
            )
            errors = [labels for (name, labels) in down if name == "gatebeat_tick_errors_total"]
            assert errors, "failed ticks are counted by error class"

            # It comes back: reconnect, readings return.
            await simulator.restart()
            await asyncio.to_thread(wait_until, healthy_scrape, timeout=30, what="boiler back up")

            code, seconds = await asyncio.to_thread(stop, process)
            assert code == 0
            assert seconds < 5.0
    finally:
        await simulator.close()
    log = (tmp_path / "gatebeat.log").read_text()
    assert "Traceback" not in log, log
    assert "device=boiler down" in log
    assert "device=boiler recovered" in log

    journal = subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "events",
            "--journal",
            str(tmp_path / "events.db"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    kinds = [json.loads(line)["kind"] for line in journal.stdout.splitlines()]
    assert kinds[0] == "service_start" and kinds[-1] == "service_stop", kinds
    assert kinds.index("device_down") < max(i for i, k in enumerate(kinds) if k == "device_up")
    boiler_only = subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "events",
            "--journal",
            str(tmp_path / "events.db"),
            "--device",
            "boiler",
            "--since",
            "1h",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "device_down device=boiler" in boiler_only.stdout
    assert "service_start" not in boiler_only.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["hang-startup", "hang-onstartup"])
def test_sigterm_during_a_hanging_startup_hook_stops_within_the_shutdown_timeout(
    tmp_path: Path, mode: str
) -> None:
    """Before the fix the runner awaited every start-up hook (10 s each) before it looked at
    the stop event: SIGTERM took 10 s or more with shutdown_timeout = 2."""
    config, _, mark = lifecycle_config(tmp_path)  # hook_timeout: 10 s by default
    env = {"MARK": str(mark), "LIFECYCLE_MODE": mode}
    with gatebeat("run", "--config", str(config), env=env, log=tmp_path / "log") as process:
        wait_until(lambda: "hanging" in mark.read_text(), timeout=20, what="start-up hook running")
        code, seconds = stop(process, timeout=10)
    assert code == 0
    assert seconds < 2.0 + 1.0, seconds
    log = (tmp_path / "log").read_text()
    assert "stop requested during start-up" in log
    assert "gatebeat stopped" in log


@pytest.mark.e2e
def test_hook_timeout_bounds_a_hanging_startup_hook_and_timers_start_anyway(
    tmp_path: Path,
) -> None:
    config, metrics_port, mark = lifecycle_config(tmp_path, runtime="hook_timeout = 0.5")
    env = {"MARK": str(mark), "LIFECYCLE_MODE": "hang-startup"}
    ticks = ("gatebeat_ticks_total", (("device", "dev"), ("timer", "beat")))
    with gatebeat("run", "--config", str(config), env=env, log=tmp_path / "log") as process:
        wait_until(
            lambda: (scrape(metrics_port) or {}).get(ticks, 0) >= 1, timeout=20, what="a tick"
        )
        code, _ = stop(process)
    assert code == 0
    assert (
        "startup hook (timers start anyway) failed error=TimeoutError"
        in (tmp_path / "log").read_text()
    )


@pytest.mark.e2e
def test_sigterm_with_a_trigger_in_flight_still_runs_the_shutdown_hook(tmp_path: Path) -> None:
    """Before the fix trigger timers were left to TriggerSet.stop (10 s) inside the close
    step's share of the budget: the shutdown hook never ran and the transport stayed open."""
    config, _, mark = lifecycle_config(tmp_path)
    env = {"MARK": str(mark), "LIFECYCLE_MODE": "slow-trigger"}
    with gatebeat("run", "--config", str(config), env=env, log=tmp_path / "log") as process:
        wait_until(lambda: "trigger in flight" in mark.read_text(), timeout=20, what="trigger")
        code, seconds = stop(process, timeout=10)
    assert code == 0
    assert seconds < 2.0 + 1.0, seconds
    assert "shutdown-hook ran" in mark.read_text()
    log = (tmp_path / "log").read_text()
    assert "cancelling timers=dev/trigger-1" in log
    assert "did not" not in log  # hooks and transport close finished within their shares


ROOT = str(Path(__file__).resolve().parents[2])


def _pid1_works() -> bool:
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "true"], timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.e2e
@pytest.mark.parametrize("pid1", [False, True], ids=["child", "pid1"])
def test_sigterm_during_the_config_load_exits_0_at_once(tmp_path: Path, pid1: bool) -> None:
    """Before the runner's loop exists a SIGTERM used to take its default action: killed
    (status -15) as an ordinary child, dropped by the kernel as PID 1 (docker without
    --init: the process kept starting and ran until SIGKILL)."""
    if pid1 and not _pid1_works():
        pytest.skip("unshare --pid --fork is not permitted here")
    config, _, mark = lifecycle_config(tmp_path)
    env = {
        **os.environ,
        "MARK": str(mark),
        "LIFECYCLE_MODE": "slow-import",
        "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "service", "run", "--config", str(config)]
    if pid1:
        command = ["unshare", "--pid", "--fork", "--kill-child", *command]
    log = tmp_path / "log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: "importing" in mark.read_text(), timeout=20, what="config loading")
        target = process.pid
        if pid1:  # unshare's child is PID 1 of the new namespace
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
            target = int(children.split()[0])
        started = time.monotonic()
        os.kill(target, signal.SIGTERM)
        code = process.wait(timeout=10)
        seconds = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0, log.read_text()
    assert seconds < 2.0, seconds
    assert "received SIGTERM during start-up: exiting, nothing was running" in log.read_text()


@pytest.mark.e2e
def test_sighup_is_a_clean_logged_stop(tmp_path: Path) -> None:
    """SIGHUP used to kill the process silently (default action): no log, no journal stop."""
    journal = tmp_path / "events.db"
    config, metrics_port, mark = lifecycle_config(tmp_path, runtime=f'journal = "{journal}"')
    ticks = ("gatebeat_ticks_total", (("device", "dev"), ("timer", "beat")))
    env = {"MARK": str(mark)}
    with gatebeat("run", "--config", str(config), env=env, log=tmp_path / "log") as process:
        wait_until(
            lambda: (scrape(metrics_port) or {}).get(ticks, 0) >= 1, timeout=20, what="a tick"
        )
        process.send_signal(signal.SIGHUP)
        code = process.wait(timeout=10)
    assert code == 0
    log = (tmp_path / "log").read_text()
    assert "received SIGHUP: stopping" in log and "gatebeat stopped" in log
    assert "shutdown-hook ran" in mark.read_text()
    result = subprocess.run(
        [sys.executable, "-m", "service", "events", "--journal", str(journal), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert json.loads(result.stdout.splitlines()[-1])["kind"] == "service_stop"
