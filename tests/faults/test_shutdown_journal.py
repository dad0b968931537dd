"""Case 5: SIGTERM while a poll is on the wire; SIGKILL, then a restart on the same journal."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.simulators.modbus import ModbusSimulator, boiler_profile
from tests.e2e.helpers import free_port, gatebeat, stop
from tests.faults.support import await_until, scrape_where, value

SHUTDOWN_TIMEOUT = 2.0
REPLY_DELAY = 1.5  # the poll in flight would need this long; the shutdown must not wait for it

CONFIG = """
[metrics]
listen = "127.0.0.1:{metrics_port}"

[runtime]
journal = "{journal}"
shutdown_timeout = {shutdown}

[[devices]]
name = "boiler"
driver = "modbus"
unit_id = 1
transport = {{ kind = "modbus-tcp", host = "127.0.0.1", port = {modbus_port}, timeout = 3.0 }}

  [[devices.polls]]
  name = "temps"
  interval = 0.1

    [[devices.polls.registers]]
    field = "supply_temperature_celsius"
    table = "holding"
    address = 0
    type = "int16"
    scale = 0.1
"""


def _events(journal: Path) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-m", "service", "events", "--journal", str(journal), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _boiler_up(metrics: dict) -> bool:
    return value(metrics, "gatebeat_device_up", device="boiler", driver="modbus") == 1.0


@pytest.mark.e2e
@pytest.mark.realtime
@pytest.mark.asyncio
async def test_sigterm_mid_poll_then_sigkill_and_restart_on_the_same_journal(
    tmp_path: Path,
) -> None:
    simulator = ModbusSimulator(boiler_profile(1))
    modbus_port = await simulator.start_tcp()
    journal = tmp_path / "events.db"
    metrics_port = free_port()
    config = tmp_path / "gatebeat.toml"
    config.write_text(
        CONFIG.format(
            metrics_port=metrics_port,
            modbus_port=modbus_port,
            journal=journal,
            shutdown=SHUTDOWN_TIMEOUT,
        )
    )
    figures: dict[str, float] = {}
    try:
        # 1. SIGTERM while a request is on the wire (received by the device, not answered).
        with gatebeat("run", "--config", str(config), log=tmp_path / "run1.log") as process:
            await await_until(scrape_where(metrics_port, _boiler_up), timeout=20, what="up")
            simulator.delay = REPLY_DELAY

            def poll_in_flight() -> bool:
                # a request received and not yet answered (the simulator's trace of pymodbus)
                return bool(simulator._pending)

            await await_until(poll_in_flight, timeout=5, what="a poll in flight")
            assert simulator._pending, "the poll must still be in flight when SIGTERM arrives"
            code, seconds = await asyncio.to_thread(stop, process, timeout=10)
            figures["sigterm_exit_s"] = seconds
            assert code == 0
            assert seconds < SHUTDOWN_TIMEOUT + 1.0  # budget + interpreter teardown
        kinds = [e["kind"] for e in _events(journal)]
        assert kinds[0] == "service_start" and kinds[-1] == "service_stop", kinds

        # 2. SIGKILL while running: no service_stop, but the file must stay sound.
        simulator.delay = 0.0
        with gatebeat("run", "--config", str(config), log=tmp_path / "run2.log") as process:
            await await_until(scrape_where(metrics_port, _boiler_up), timeout=20, what="up (2)")
            await await_until(
                lambda: sum(e["kind"] == "service_start" for e in _events(journal)) == 2,
                timeout=10,
                what="second service_start in the journal",
            )
            process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(process.wait, 10)
        killed_events = _events(journal)

        # 3. Restart on the same journal: it opens, and appends.
        with gatebeat("run", "--config", str(config), log=tmp_path / "run3.log") as process:
            await await_until(scrape_where(metrics_port, _boiler_up), timeout=20, what="up (3)")
            t0 = time.monotonic()
            code, seconds = await asyncio.to_thread(stop, process, timeout=10)
            figures["restart_stop_s"] = time.monotonic() - t0
            assert code == 0
    finally:
        simulator.delay = 0.0
        await simulator.close()

    print(f"\n{figures}")
    with sqlite3.connect(journal) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    events = _events(journal)
    kinds = [e["kind"] for e in events]
    assert kinds.count("service_start") == 3
    assert kinds.count("service_stop") == 2, "the SIGKILLed run wrote no service_stop"
    assert events[: len(killed_events)] == killed_events, "old events kept as they were"
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    new = events[len(killed_events) :]
    assert new[0]["kind"] == "service_start" and new[-1]["kind"] == "service_stop", new
    for name in ("run1.log", "run2.log", "run3.log"):
        text = (tmp_path / name).read_text()
        assert "Traceback" not in text, text
