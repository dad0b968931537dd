"""Helpers for end-to-end tests: real gatebeat processes, real HTTP, bounded waits."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(probe: Callable[[], T | None], *, timeout: float, what: str) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse an exposition into ``{(name, sorted labels): value}``."""
    result: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            result[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return result


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    try:
        status, body = get(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return None
    return samples(body) if status == 200 else None


@contextlib.contextmanager
def gatebeat(
    *args: str, env: dict[str, str] | None = None, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``python -m service ARGS`` with its output in ``log``; SIGKILL it if still alive."""
    environment = {**os.environ, **(env or {})}
    # this checkout's `service`, whatever the cwd (an installed copy may be another checkout)
    root = str(Path(__file__).resolve().parents[2])
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()


def stop(process: subprocess.Popen[bytes], *, timeout: float = 10.0) -> tuple[int, float]:
    """SIGTERM ``process``; returns (exit code, seconds it took to exit)."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=timeout)
    return code, time.monotonic() - started


LIFECYCLE_DRIVER = '''
"""A driver whose hooks and trigger misbehave on demand (LIFECYCLE_MODE), writing to MARK."""
import asyncio
import os
import time

from service.triggers import Every, OnStartUp

TRANSPORTS = ["modbus-tcp"]
DEFAULT_HEARTBEATS = [{"name": "beat", "interval": 0.2}]
MODE = os.environ.get("LIFECYCLE_MODE", "")


def mark(line):
    with open(os.environ["MARK"], "a") as out:
        out.write(line + "\\n")


if MODE == "slow-import":  # a slow config load: the driver is imported while it is resolved
    mark("importing")
    time.sleep(20)


async def heartbeat(tick):
    return {"ok_count": 1}


async def startup(device):
    if MODE == "hang-startup":
        mark("startup-hook hanging")
        await asyncio.sleep(3600)
    elif MODE == "block-startup":
        mark("startup-hook blocking")
        time.sleep(20)


async def hang_on_startup(device):
    if MODE == "hang-onstartup":
        mark("onstartup-trigger hanging")
        await asyncio.sleep(3600)


async def slow_trigger(device):
    if MODE == "slow-trigger":
        mark("trigger in flight")
        await asyncio.sleep(3600)


async def shutdown(device):
    mark("shutdown-hook ran")


TRIGGERS = [(OnStartUp(), hang_on_startup), (Every(0.2), slow_trigger)]
'''

LIFECYCLE_CONFIG = """
[metrics]
listen = "127.0.0.1:{metrics_port}"

[runtime]
shutdown_timeout = {shutdown}
driver_dirs = ["{drivers}"]
{runtime}

[[devices]]
name = "dev"
driver = "lifecycle"
transport = {{ kind = "modbus-tcp", host = "127.0.0.1", port = {modbus_port} }}
"""


def lifecycle_config(
    tmp_path: Path, *, shutdown: float = 2.0, runtime: str = ""
) -> tuple[Path, int, Path]:
    """Write the lifecycle driver and a config for it; returns (config, metrics port, mark)."""
    drivers = tmp_path / "drivers"
    drivers.mkdir()
    (drivers / "lifecycle.py").write_text(LIFECYCLE_DRIVER)
    metrics_port = free_port()
    config = tmp_path / "gatebeat.toml"
    config.write_text(
        LIFECYCLE_CONFIG.format(
            metrics_port=metrics_port,
            shutdown=shutdown,
            drivers=drivers,
            runtime=runtime,
            modbus_port=free_port(),  # nothing listens: this driver's heartbeat does no I/O
        )
    )
    mark = tmp_path / "mark"
    mark.write_text("")
    return config, metrics_port, mark
