"""Durations of the wrong TOML type (``false``, ``[1]``, ``{ s = 1 }``) are config problems.

Found by ``test_config_fuzz``: ``to_seconds`` raises ``TypeError`` for them, which pydantic does
not turn into a validation error, so it escaped ``load_settings`` and ``check-config`` printed a
traceback. The config validators now use ``setting_seconds``, which reports it as a problem.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import ConfigError, load_settings

BASE = """
[runtime]
shutdown_timeout = {shutdown}

[[devices]]
name = "boiler"
driver = "modbus"
transport = {{ kind = "modbus-tcp", host = "127.0.0.1", timeout = {timeout} }}

  [[devices.polls]]
  name = "temps"
  interval = {interval}
  registers = [{{ field = "t", table = "holding", address = 0, type = "int16" }}]

[[devices]]
name = "thermo"
driver = "serial_line"
transport = {{ kind = "serial", port = "/dev/ttyUSB9", timeout = {serial_timeout} }}

  [[devices.polls]]
  name = "temperature"
  interval = 1.0
  command = "READ?\\r\\n"
  reply = '^(?P<t>\\d+)$'
"""
GOOD = {"shutdown": "5.0", "timeout": "0.5", "interval": "1.0", "serial_timeout": "0.5"}
WHERE = {
    "shutdown": "runtime.shutdown_timeout: ",
    "timeout": "devices[boiler].transport.timeout: ",
    "interval": "devices[boiler].polls[temps].interval: ",
    "serial_timeout": "devices[thermo].transport.timeout: ",
}


def test_the_base_config_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "gatebeat.toml"
    path.write_text(BASE.format(**GOOD))
    load_settings(str(path), env={})


@pytest.mark.parametrize("bad", ["false", "[1]", "{ s = 1 }"])
@pytest.mark.parametrize("key", list(GOOD))
def test_a_duration_of_the_wrong_type_is_a_located_problem(
    tmp_path: Path, key: str, bad: str
) -> None:
    path = tmp_path / "gatebeat.toml"
    path.write_text(BASE.format(**{**GOOD, key: bad}))
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path), env={})
    assert [p[: len(WHERE[key])] for p in caught.value.problems] == [WHERE[key]]


def test_check_config_reports_it_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "gatebeat.toml"
    path.write_text(BASE.format(**{**GOOD, "interval": "false", "timeout": "[1]"}))
    result = subprocess.run(
        [sys.executable, "-m", "service", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 2, output
    assert "devices[boiler].polls[temps].interval: " in output
    assert "devices[boiler].transport.timeout: " in output
