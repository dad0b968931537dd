"""Case 7: generated configs, valid and broken, never crash the loader or ``check-config``.

Hypothesis builds TOML *text* from strategies that mix good and bad values (names, intervals as
numbers, duration strings and garbage, register types and addresses, transports, duplicate
names, unknown keys, the odd syntax error). ``load_settings`` must either succeed or raise
``ConfigError`` whose every problem line starts with a location; any other exception is a bug.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.settings import ConfigError, load_settings

_GOOD_NAMES = ["boiler", "meter-1", "plc.a", "x_2", "a:b"]
_BAD_NAMES = ["", "has space", 'quo"te', "new\nline", "brace{", "ünïcode", "slash/x", "x" * 300]
names = st.one_of(
    st.sampled_from(_GOOD_NAMES),
    st.sampled_from(_BAD_NAMES),
    st.integers(-5, 5),
    st.text(max_size=12),
)
durations = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-10, 10**9),
    st.sampled_from(["250ms", "5s", "1m", "1h", "0s", "-1s", "1x", "", "ms", "1e3", "7d", "8d"]),
    st.text(max_size=8),
    st.booleans(),
    st.lists(st.integers(0, 3), max_size=2),
)
tables = st.sampled_from(["coil", "discrete", "holding", "input", "bogus", "", 3])
types = st.sampled_from(
    ["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64",
     "string", "int17", ""]
)  # fmt: skip
addresses = st.one_of(st.integers(-2, 70000), st.sampled_from(["0", "x", 1.5]))
unknown = st.dictionaries(
    st.sampled_from(["colour", "intervall", "nme", "extra"]), st.integers(), max_size=1
)


@st.composite
def register(draw: st.DrawFn) -> dict[str, Any]:
    reg: dict[str, Any] = {
        "field": draw(st.sampled_from(["temp_celsius", "pump", "bad field", "", "x"])),
        "table": draw(tables),
        "address": draw(addresses),
        "type": draw(types),
    }
    if draw(st.booleans()):
        reg["length"] = draw(st.integers(-1, 300))
    if draw(st.booleans()):
        reg["scale"] = draw(st.one_of(st.floats(), st.text(max_size=3)))
    reg.update(draw(unknown))
    return reg


@st.composite
def timer(draw: st.DrawFn, heartbeat: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": draw(names), "interval": draw(durations)}
    if heartbeat:
        entry["write"] = draw(
            st.fixed_dictionaries(
                {
                    "table": tables,
                    "address": addresses,
                    "value": st.one_of(
                        st.sampled_from(["counter", "toggle", "nope"]), st.integers(-1, 70000)
                    ),
                }
            )
        )
    elif draw(st.booleans()):
        entry["registers"] = draw(st.lists(register(), max_size=3))
    else:
        entry["command"] = draw(st.sampled_from(["READ?\r\n", "", "X"]))
        entry["reply"] = draw(st.sampled_from([r"^(?P<t>\d+)$", "(", r"(?P<bad name>x)", "x"]))
    entry.update(draw(unknown))
    return entry


@st.composite
def transport(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(["modbus-tcp", "modbus-rtu", "modbus-rtu-over-tcp", "serial", "can", 7])
    )
    entry: dict[str, Any] = {"kind": kind}
    if draw(st.booleans()):
        entry["host"] = draw(st.sampled_from(["127.0.0.1", "", "bad host", 5]))
    if draw(st.booleans()):
        entry["port"] = draw(
            st.one_of(st.integers(-1, 70000), st.sampled_from(["/dev/ttyUSB0", ""]))
        )
    if draw(st.booleans()):
        entry["timeout"] = draw(durations)
    if draw(st.booleans()):
        entry["baudrate"] = draw(st.one_of(st.integers(-1, 10**6), st.just("fast")))
    entry.update(draw(unknown))
    return entry


@st.composite
def device(draw: st.DrawFn) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": draw(names),
        "driver": draw(
            st.sampled_from(["modbus", "serial_line", "example_power_meter", "nope", 3])
        ),
        "transport": draw(transport()),
    }
    if draw(st.booleans()):
        entry["unit_id"] = draw(st.one_of(st.integers(-1, 300), st.just("1")))
    if draw(st.booleans()):
        entry["read_only"] = draw(st.one_of(st.booleans(), st.just("yes")))
    entry["polls"] = draw(st.lists(timer(False), max_size=2))
    entry["heartbeats"] = draw(st.lists(timer(True), max_size=2))
    entry.update(draw(unknown))
    return entry


@st.composite
def config(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if draw(st.booleans()):
        data["metrics"] = {
            "listen": draw(st.sampled_from(["127.0.0.1:9810", "nohost", ":1", "[::1]:99999", 5]))
        }
    if draw(st.booleans()):
        data["runtime"] = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "shutdown_timeout": durations,
                    "strict_budgets": st.booleans(),
                    "wakeup": st.sampled_from(["auto", "bogus"]),
                },
            )
        )
    data["devices"] = draw(st.lists(device(), max_size=3))
    data.update(
        draw(st.dictionaries(st.sampled_from(["metric", "device", "x"]), st.integers(), max_size=1))
    )
    return data


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(value)


def render(data: dict[str, Any], garbage: str | None) -> str:
    lines = []
    for section in ("metrics", "runtime"):
        if section in data:
            lines.append(f"[{section}]")
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in data[section].items()]
    for key, value in data.items():
        if key not in ("metrics", "runtime", "devices"):
            lines.insert(0, f"{key} = {toml_value(value)}")
    for dev in data["devices"]:
        lines.append("[[devices]]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in dev.items()]
    if garbage is not None:
        lines.insert(len(lines) // 2, garbage)
    return "\n".join(lines) + "\n"


configs = st.tuples(
    config(), st.one_of(st.none(), st.none(), st.sampled_from(["= 1", "[[", 'x = "', "a b c"]))
)

_LOCATION = re.compile(r"^(?P<top>[A-Za-z_][\w-]*)(\[[^\]\n]*\]|\.[\w-]+)*: ")
_SECTIONS = {"devices", "metrics", "runtime", "logging"}


def located(problem: str, top_keys: set[str]) -> bool:
    """``devices[boiler].polls[0].interval: ...``, ``metrics.listen: ...``, ``colour: unknown
    key`` (a top-level key of this config), or a timing-budget finding ``bus 'x': ...``."""
    if problem.startswith("bus '"):
        return True
    match = _LOCATION.match(problem)
    return match is not None and match["top"] in _SECTIONS | top_keys


def check(text: str, path: Path, top_keys: set[str]) -> list[str]:
    path.write_text(text, encoding="utf-8")
    try:
        load_settings(str(path), env={})
    except ConfigError as exc:
        assert exc.problems, "a ConfigError lists at least one problem"
        for problem in exc.problems:
            assert located(problem, top_keys) or problem.startswith(f"{path}: "), (
                f"problem without a location: {problem!r}\n--- config ---\n{text}"
            )
        return exc.problems
    return []


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(configs)
def test_generated_configs_load_or_fail_with_located_problems(
    tmp_path: Path, case: tuple[dict[str, Any], str | None]
) -> None:
    data, garbage = case
    check(render(data, garbage), tmp_path / "gatebeat.toml", set(data))


@pytest.mark.e2e
def test_check_config_never_prints_a_traceback(tmp_path: Path) -> None:
    # a handful of fixed, diverse samples (deterministic: the CLI starts a process each)
    texts = [
        render({"devices": []}, None),
        render({"devices": [{"name": "a b", "driver": 3, "transport": {"kind": 7}}]}, None),
        render({"metrics": {"listen": 5}, "devices": [{"name": "x" * 300}]}, "[["),
        render(
            {
                "devices": [
                    {
                        "name": "boiler",
                        "driver": "modbus",
                        "transport": {"kind": "modbus-tcp", "host": "127.0.0.1", "port": 70000},
                        "polls": [
                            {
                                "name": "t",
                                "interval": "1x",
                                "registers": [
                                    {"field": "f", "table": "bogus", "address": -1, "type": "x"}
                                ],
                            }
                        ],
                    },
                    {"name": "boiler", "driver": "nope", "transport": {"kind": "serial"}},
                ]
            },
            None,
        ),
        render(
            {
                "runtime": {"shutdown_timeout": float("nan")},
                "devices": [
                    {
                        "name": "ok",
                        "driver": "modbus",
                        "transport": {"kind": "modbus-tcp", "host": "127.0.0.1"},
                        "heartbeats": [
                            {
                                "name": "w",
                                "interval": 0.5,
                                "write": {"table": "holding", "address": 100, "value": 1},
                            }
                        ],
                    }
                ],
            },
            None,
        ),
    ]
    for index, text in enumerate(texts):
        path = tmp_path / f"c{index}.toml"
        path.write_text(text)
        result = subprocess.run(
            [sys.executable, "-m", "service", "check-config", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        output = result.stdout + result.stderr
        assert "Traceback" not in output, output
        assert result.returncode in (0, 2), (result.returncode, output)
