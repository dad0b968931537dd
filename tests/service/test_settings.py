"""Loading, merging and validating the configuration (TOML + GATEBEAT_ environment)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ValidationError

from service.bus import Bus
from service.device_runtime import DeviceRuntime
from service.metrics import MetricsHub
from service.registry import discover
from service.schedule import FixedSchedule
from service.settings import ConfigError, load_settings
from service.settings_errors import translate_errors

DESIGN_EXAMPLE = """
[metrics]
listen = "127.0.0.1:9810"

[[devices]]
name = "boiler"
driver = "modbus"
unit_id = 1
transport = { kind = "modbus-tcp", host = "127.0.0.1", port = 5020 }

  [[devices.polls]]
  name = "temps"
  interval = 5.0
  registers = [
    { field = "supply_temperature_celsius", table = "holding", address = 0, type = "int16" },
    { field = "pump_running", table = "coil", address = 3, type = "bool" },
  ]

  [[devices.heartbeats]]
  name = "watchdog"
  interval = "10s"
  write = { table = "holding", address = 100, value = "counter" }
"""

SENSOR = """
from pydantic import BaseModel, Field, field_validator
TRANSPORTS = ["serial"]
DEFAULT_POLLS = [{"name": "reading", "interval": "250ms"}]
class Config(BaseModel):
    gain: float = Field(1.0, description="multiplier")
    @field_validator("gain")
    @classmethod
    def _bad(cls, value):
        if value == 13:
            raise TypeError("unlucky")
        return value
class Heartbeat(BaseModel):
    command: str
async def poll(tick):
    return {}
async def heartbeat(tick):
    return None
"""

POLLER = """
TRANSPORTS = ["serial"]
async def poll(tick):
    return {}
"""


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gatebeat.toml"
    path.write_text(text)
    return str(path)


def _problems(path: str | None, env: dict[str, str] | None = None, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path, env or {}, **kwargs)  # type: ignore[arg-type]
    return info.value.problems


def test_design_example_loads(tmp_path: Path) -> None:
    settings = load_settings(_config(tmp_path, DESIGN_EXAMPLE), {})
    assert settings.metrics.port == 9810
    assert settings.logging.format == "text"
    assert settings.runtime.shutdown_timeout == 5.0
    (device,) = settings.resolved_devices
    assert device.name == "boiler"
    assert device.driver.name == "modbus"
    assert device.unit_id == 1
    assert [(t.name, t.kind, t.interval) for t in device.timers] == [
        ("temps", "poll", 5.0),
        ("watchdog", "heartbeat", 10.0),
    ]
    assert device.stale_after == 30.0
    assert device.bus == "tcp:127.0.0.1:5020"
    assert device.timers[0].spec.options is not None
    assert settings.summary().startswith("ok: 1 device(s) enabled of 1, 2 timer(s), 1 bus(es)")


def test_env_overrides_sections_and_config_path(tmp_path: Path) -> None:
    path = _config(tmp_path, DESIGN_EXAMPLE)
    env = {
        "GATEBEAT_CONFIG": path,
        "GATEBEAT_METRICS__LISTEN": "0.0.0.0:9900",
        "GATEBEAT_LOGGING__FORMAT": "json",
        "gatebeat_runtime__shutdown_timeout": "2s",
        "GATEBEAT_RUNTIME__DRIVER_DIRS": json.dumps([str(tmp_path)]),
    }
    settings = load_settings(None, env)
    assert settings.source == path
    assert settings.metrics.listen == "0.0.0.0:9900"
    assert settings.logging.format == "json"
    assert settings.runtime.shutdown_timeout == 2.0
    assert settings.runtime.driver_dirs == [str(tmp_path)]


def test_env_devices_json_replaces_the_device_list(tmp_path: Path) -> None:
    devices = [
        {
            "name": "meter",
            "driver": "example_plc_watchdog",
            "transport": {"kind": "modbus-tcp", "host": "10.0.0.5"},
        }
    ]
    path = _config(tmp_path, DESIGN_EXAMPLE)
    settings = load_settings(path, {"GATEBEAT_DEVICES": json.dumps(devices)})
    assert [d.name for d in settings.resolved_devices] == ["meter"]


def test_env_bad_json_is_a_problem(tmp_path: Path) -> None:
    problems = _problems(_config(tmp_path, DESIGN_EXAMPLE), {"GATEBEAT_DEVICES": "[{"})
    assert problems[0].startswith("GATEBEAT_DEVICES: '[{' is not valid JSON (")


def test_each_problem_names_the_variable_that_set_the_value(tmp_path: Path) -> None:
    path = _config(tmp_path, DESIGN_EXAMPLE.replace('"127.0.0.1:9810"', '"127.0.0.1:98100"'))
    env = {
        "GATEBEAT_RUNTIME__DRIVER_DIRS": "/tmp",
        "GATEBEAT_METRICS": '{"basic_auth_user": "prom", "basic_auth_password": "pw", '
        '"tls_cert": "/etc/cert.pem"}',
        "GATEBEAT_METRICS__BASIC_AUTH_USER": "",
        "GATEBEAT_LOGGING": '{"level": "loud"',
        "GATEBEAT_HEALTHCHECK_URL": "http://127.0.0.1:9810/healthz",  # the Dockerfile's; not ours
    }
    assert _problems(path, env) == [
        "GATEBEAT_RUNTIME__DRIVER_DIRS: '/tmp' is not valid JSON (Expecting value: line 1 column "
        "1 (char 0)); runtime.driver_dirs is a list, as JSON: '[\"/etc/gatebeat/drivers\"]'",
        "GATEBEAT_LOGGING: '{\"level\": \"loud\"' is not valid JSON (Expecting ',' delimiter: "
        "line 1 column 17 (char 16)); logging is a table, as a JSON object (or one variable per "
        "key: GATEBEAT_LOGGING__KEY)",
        # from the file, although GATEBEAT_METRICS set other keys of [metrics]:
        "metrics.listen: '127.0.0.1:98100': port 98100 is not in 0-65535",
        # GATEBEAT_METRICS__BASIC_AUTH_USER wins over the user in GATEBEAT_METRICS:
        "metrics.basic_auth_user: user '' is empty; a user and a password are both needed "
        "(set by GATEBEAT_METRICS__BASIC_AUTH_USER)",
    ]
    del env["GATEBEAT_RUNTIME__DRIVER_DIRS"], env["GATEBEAT_LOGGING"]
    env["GATEBEAT_METRICS__LISTEN"] = "127.0.0.1:9810"
    env["GATEBEAT_METRICS__BASIC_AUTH_USER"] = "scraper"
    assert _problems(path, env) == [
        "metrics: tls_cert and tls_key must be set together (with keys set by GATEBEAT_METRICS, "
        "GATEBEAT_METRICS__BASIC_AUTH_USER, GATEBEAT_METRICS__LISTEN)"
    ]


def test_device_keys_cannot_be_set_one_by_one_from_the_environment(tmp_path: Path) -> None:
    path = _config(tmp_path, DESIGN_EXAMPLE)
    assert _problems(path, {"GATEBEAT_DEVICES__0__NAME": "x"}) == [
        "GATEBEAT_DEVICES__0__NAME: devices cannot be set one key at a time; GATEBEAT_DEVICES "
        "(a JSON array of device tables) replaces the whole device list, or edit the file"
    ]
    devices = [{"name": "a", "driver": "modbus", "transport": {"kind": "modbus-tcp"}, "x": 1}]
    assert _problems(path, {"GATEBEAT_DEVICES": json.dumps(devices)}) == [
        "devices[a].transport.host: required, but missing (set by GATEBEAT_DEVICES)",
        "devices[a].x: unknown key (driver 'modbus' takes no other keys) (set by GATEBEAT_DEVICES)",
        "devices[a]: no polls nor heartbeats configured (set by GATEBEAT_DEVICES)",
    ]


def test_every_problem_is_listed(tmp_path: Path) -> None:
    text = (
        DESIGN_EXAMPLE.replace("interval = 5.0", 'interval = "5 parsecs"').replace(
            '"int16"', '"int17"'
        )
        + "\n[bogus]\n"
    )
    problems = _problems(_config(tmp_path, text), {"GATEBEAT_LOGGING__LEVEL": "loud"})
    assert problems == [
        "logging.level: 'loud' is not one of 'debug', 'info', 'warning', 'error', 'critical' "
        "(set by GATEBEAT_LOGGING__LEVEL)",
        "bogus: unknown key",
        "devices[boiler].polls[temps].interval: '5 parsecs' has an unknown unit 'parsecs' "
        "(known: us, ms, s, m, min, h, d)",
        "devices[boiler].polls[temps].registers[0].type: 'int17' is not one of 'bool', 'int16', "
        "'uint16', 'int32', 'uint32', 'int64', 'uint64', 'float32', 'float64', 'string'",
    ]


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = _config(tmp_path, "[metrics]\nlisten = \n")
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}: line 2, column 10: TOML syntax error: ")


def test_missing_file(tmp_path: Path) -> None:
    assert _problems(str(tmp_path / "nope.toml")) == [
        f"{tmp_path / 'nope.toml'}: config file not found"
    ]


def test_driver_defaults_config_and_timer_options(tmp_path: Path) -> None:
    (tmp_path / "sensor.py").write_text(SENSOR)
    registry = discover([tmp_path])
    text = """
[[devices]]
name = "thermo"
driver = "sensor"
gain = 2.5
transport = { kind = "serial", port = "/dev/ttyUSB1" }
  [[devices.heartbeats]]
  name = "ping"
  interval = 1
  phase = "auto"
  align = true
  command = "PING"
"""
    settings = load_settings(_config(tmp_path, text), {}, registry=registry)
    (device,) = settings.resolved_devices
    assert device.config is not None and device.config.gain == 2.5  # type: ignore[attr-defined]
    assert device.unit_id is None
    assert [(t.name, t.kind, t.interval, t.phase, t.align) for t in device.timers] == [
        ("reading", "poll", 0.25, 0.0, False),
        ("ping", "heartbeat", 1.0, "auto", True),
    ]
    assert device.heartbeats[0].spec.options.command == "PING"  # type: ignore[union-attr]
    runtime = DeviceRuntime(device, bus=Bus(device.bus), hub=MetricsHub())
    schedules = [timer.schedule for timer in runtime.timers]
    assert isinstance(schedules[1], FixedSchedule) and schedules[1].aligned
    assert not isinstance(schedules[0], FixedSchedule)  # the poll: DELAY, never aligned


def test_driver_rules(tmp_path: Path) -> None:
    (tmp_path / "sensor.py").write_text(SENSOR)
    (tmp_path / "poller.py").write_text(POLLER)
    registry = discover([tmp_path])
    text = """
[[devices]]
name = "a"
driver = "sensor"
gain = 13
gian = 1
unit_id = 3
transport = { kind = "serial", port = "/dev/ttyUSB1" }
  [[devices.heartbeats]]
  name = "ping"
  interval = 1
  comand = "PING"
[[devices]]
name = "b"
driver = "poller"
transport = { kind = "modbus-tcp", host = "h" }
  [[devices.heartbeats]]
  name = "hb"
  interval = 1
[[devices]]
name = "c"
driver = "poller"
transport = { kind = "serial", port = "/dev/ttyUSB2" }
"""
    problems = _problems(_config(tmp_path, text), registry=registry)
    assert problems == [
        "devices[a].gian: unknown key (did you mean 'gain'?)",
        "devices[a]: driver 'sensor' Config validation failed: TypeError: unlucky",
        "devices[a].unit_id: applies to Modbus transports only, not 'serial'",
        "devices[a].heartbeats[ping].comand: unknown key (did you mean 'command'?)",
        "devices[a].heartbeats[ping].command: required, but missing",
        "devices[b].transport.kind: driver 'poller' works with 'serial', not 'modbus-tcp'",
        "devices[b].polls: driver 'poller' needs at least one [[devices.polls]] entry "
        "(name, interval, ...)",
        "devices[b].heartbeats: driver 'poller' has no heartbeat(); remove these entries",
        "devices[c].polls: driver 'poller' needs at least one [[devices.polls]] entry "
        "(name, interval, ...)",
    ]


def test_budget_warning_or_error(tmp_path: Path) -> None:
    text = DESIGN_EXAMPLE.replace('"10s"', "0.5")
    settings = load_settings(_config(tmp_path, text), {})
    assert any(
        "devices[boiler].heartbeats[watchdog]: interval 0.5 s" in w for w in settings.warnings
    )
    problems = _problems(_config(tmp_path, text), {"GATEBEAT_RUNTIME__STRICT_BUDGETS": "true"})
    assert any("devices[boiler].heartbeats[watchdog]: interval 0.5 s" in p for p in problems)


@pytest.mark.parametrize(
    ("listen", "ok"),
    [
        ("0.0.0.0:9810", True),
        ("[::1]:9810", True),
        ("host:0", True),
        ("host", False),
        ("[zz]:1", False),
        ("a:70000", False),
        (":9810", False),
    ],
)
def test_listen_addresses(tmp_path: Path, listen: str, ok: bool) -> None:
    env = {"GATEBEAT_METRICS__LISTEN": listen}
    path = _config(tmp_path, DESIGN_EXAMPLE)
    if ok:
        assert load_settings(path, env).metrics.listen == listen
    else:
        assert _problems(path, env)[0].startswith("metrics.listen: ")


@pytest.mark.parametrize(
    ("phase", "seconds"),
    [
        ('"250ms"', 0.25),
        ('"0s"', 0.0),
        ("0", 0.0),
        ("2.5", 2.5),
        ('"1m"', 60.0),
        ('"auto"', "auto"),
    ],
)
def test_a_phase_takes_seconds_or_a_duration_string_like_every_duration(
    tmp_path: Path, phase: str, seconds: float | str
) -> None:
    text = DESIGN_EXAMPLE.replace('interval = "10s"', f'interval = "10m"\n  phase = {phase}')
    (device,) = load_settings(_config(tmp_path, text), {}).resolved_devices
    assert device.heartbeats[0].phase == seconds


def test_union_branches_give_one_line_per_value() -> None:
    class Model(BaseModel):
        value: Literal["counter", "toggle"] | int = 1
        names: list[str] | str = "a"
        phases: list[int | Literal["auto"]] = []

    def lines(data: dict[str, object]) -> list[str]:
        with pytest.raises(ValidationError) as info:
            Model.model_validate(data)
        return translate_errors(info.value, data)

    assert lines({"value": {"a": 1}}) == [
        "value: {'a': 1} must be one of 'counter', 'toggle' or an integer"
    ]
    assert lines({"names": [1]}) == [
        "names: [1] must be a list ([0]: 1 is not a string) or a string"
    ]
    assert lines({"phases": [1, "b"]}) == ["phases[1]: 'b' must be an integer or 'auto'"]
