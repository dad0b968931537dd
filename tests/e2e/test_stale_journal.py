"""A device that starts hanging (no failure, no success) goes down as stale, and the event
journal says so."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.simulators.modbus import ModbusSimulator, plc_watchdog_profile
from tests.e2e.helpers import free_port, gatebeat, lifecycle_config, scrape, stop, wait_until

CONFIG = """
[metrics]
listen = "127.0.0.1:{metrics_port}"

[runtime]
journal = "{journal}"
shutdown_timeout = 1.0

[[devices]]
name = "mute"
driver = "example_plc_watchdog"
unit_id = 1
stale_after = 0.8
transport = {{ kind = "modbus-tcp", host = "127.0.0.1", port = {port}, timeout = 30, retries = 0 }}

  [[devices.heartbeats]]
  name = "watchdog"
  interval = 0.2
"""


@pytest.mark.e2e
@pytest.mark.asyncio
async def test_a_hanging_device_goes_down_as_stale_and_is_journaled(tmp_path: Path) -> None:
    simulator = ModbusSimulator(plc_watchdog_profile(1))
    port = await simulator.start_tcp()
    metrics_port = free_port()
    journal = tmp_path / "events.db"
    config = tmp_path / "gatebeat.toml"
    config.write_text(CONFIG.format(metrics_port=metrics_port, port=port, journal=journal))
    try:
        with gatebeat("run", "--config", str(config), log=tmp_path / "log") as process:

            def stale_down() -> dict | None:
                m = scrape(metrics_port)
                key = (
                    "gatebeat_device_up",
                    (("device", "mute"), ("driver", "example_plc_watchdog")),
                )
                failures = ("gatebeat_device_consecutive_failures", (("device", "mute"),))
                if m and m.get(key) == 0.0 and m.get(failures) == 0.0:
                    return m
                return None

            def up() -> dict | None:
                m = scrape(metrics_port)
                key = (
                    "gatebeat_device_up",
                    (("device", "mute"), ("driver", "example_plc_watchdog")),
                )
                return m if m and m.get(key) == 1.0 else None

            await asyncio.to_thread(wait_until, up, timeout=20, what="up first")
            simulator.delay = 30.0  # from now on every request hangs (transport timeout 30 s)
            await asyncio.to_thread(wait_until, stale_down, timeout=20, what="stale, no failures")

            def journaled() -> list[dict] | None:
                result = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "service",
                        "events",
                        "--journal",
                        str(journal),
                        "--json",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                events = [json.loads(line) for line in result.stdout.splitlines()]
                down = [e for e in events if e["kind"] == "device_down"]
                return down or None

            down = await asyncio.to_thread(wait_until, journaled, timeout=10, what="journaled")
            assert down[0]["device"] == "mute"
            assert down[0]["details"]["reason"].startswith("no success for")
            code, _ = await asyncio.to_thread(stop, process)
            assert code == 0
    finally:
        simulator.delay = 0.0
        await simulator.close()


@pytest.mark.e2e
def test_no_stale_device_down_while_start_up_hooks_run(tmp_path: Path) -> None:
    """A start-up hook that takes 1.5 s (stale_after 0.6 s: 3 heartbeat intervals) used to
    journal the device down as stale before its first tick could even run."""
    journal = tmp_path / "events.db"
    config, metrics_port, mark = lifecycle_config(
        tmp_path, runtime=f'hook_timeout = 1.5\njournal = "{journal}"'
    )
    env = {"MARK": str(mark), "LIFECYCLE_MODE": "hang-startup"}
    up = ("gatebeat_device_up", (("device", "dev"), ("driver", "lifecycle")))
    with gatebeat("run", "--config", str(config), env=env, log=tmp_path / "log") as process:
        wait_until(lambda: (scrape(metrics_port) or {}).get(up) == 1.0, timeout=20, what="up")
        code, _ = stop(process)
    assert code == 0
    result = subprocess.run(
        [sys.executable, "-m", "service", "events", "--journal", str(journal), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    kinds = [json.loads(line)["kind"] for line in result.stdout.splitlines()]
    assert kinds[0] == "service_start" and kinds[-1] == "service_stop", kinds
    assert "device_down" not in kinds, kinds
