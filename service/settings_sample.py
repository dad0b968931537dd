"""``gatebeat sample-config DRIVER``: a commented TOML config generated from a driver's models.

Each field of the driver's ``Config``, ``Poll`` and ``Heartbeat`` becomes a line with its
``Field(description=...)`` as a comment. Optional fields are written commented out with their
default; required fields are written with their first ``examples=`` value (or a placeholder)
and marked ``REQUIRED``. The transport is a working example for the driver's first kind, to be
edited; the result passes ``gatebeat check-config`` as generated.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from service.registry import LoadedDriver

__all__ = ["render_sample", "toml_value"]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")

_TRANSPORT_EXAMPLES: dict[str, dict[str, Any]] = {
    "modbus-tcp": {"kind": "modbus-tcp", "host": "127.0.0.1", "port": 502},
    "modbus-rtu-over-tcp": {"kind": "modbus-rtu-over-tcp", "host": "127.0.0.1", "port": 502},
    "modbus-rtu": {
        "kind": "modbus-rtu",
        "port": "/dev/ttyUSB0",
        "baudrate": 9600,
        "parity": "N",
        "stopbits": 1,
    },
    "serial": {"kind": "serial", "port": "/dev/ttyUSB0", "baudrate": 9600},
}


def toml_value(value: Any) -> str:
    """Render ``value`` as a TOML value (inline tables for mappings and models)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        items = ", ".join(f"{_key(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _placeholder(annotation: Any) -> Any:
    """A value that a required field of type ``annotation`` accepts, where one can be guessed."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _placeholder(args[0])
    if origin is Literal:
        return args[0]
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return _placeholder(options[0]) if options else None
    if origin in (list, tuple, set, frozenset):
        return [_placeholder(args[0])] if args else []
    if origin is dict:
        return {}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model_placeholder(annotation)
    if annotation is bool:
        return False
    if annotation is int:
        return 0
    if annotation is float:
        return 0.0
    return "change_me"


def _model_placeholder(model: type[BaseModel]) -> dict[str, Any]:
    """Required fields of ``model`` with guessed values; literal options tried until valid."""
    value = {
        name: _field_value(field)
        for name, field in model.model_fields.items()
        if field.is_required()
    }
    for name, field in model.model_fields.items():
        if not field.is_required() or field.examples:
            continue
        options = (
            typing.get_args(field.annotation)
            if typing.get_origin(field.annotation) is (Literal)
            else ()
        )
        for option in options:
            try:
                model.model_validate({**value, name: option})
            except ValueError:
                continue
            value[name] = option
            break
    return value


def _accepts(field: FieldInfo, value: Any) -> bool:
    """True when ``value`` passes the field's type and constraints (``gt``, ``le``, ...)."""
    try:
        TypeAdapter(Annotated[field.annotation, *field.metadata]).validate_python(value)
    except (ValidationError, TypeError, ValueError):
        return False
    return True


def _bounded_number(field: FieldInfo, guess: int | float) -> int | float:
    """A number inside the field's bounds (``gt=0`` refuses the plain guess 0.0)."""
    low = high = None
    for constraint in field.metadata:
        for name in ("gt", "ge"):
            low = getattr(constraint, name, None) if low is None else low
        for name in ("lt", "le"):
            high = getattr(constraint, name, None) if high is None else high
    candidates: list[float] = [guess, 1]
    if low is not None:
        candidates += [low, low + 1]
    if high is not None:
        candidates += [high, high - 1]
    if low is not None and high is not None:
        candidates.append((low + high) / 2)
    for candidate in candidates:
        value = int(candidate) if isinstance(guess, int) else float(candidate)
        if _accepts(field, value):
            return value
    return guess


def _field_value(field: FieldInfo) -> Any:
    if field.examples:
        return field.examples[0]
    value = _placeholder(field.annotation)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _bounded_number(field, value)
    return value


def _comment(text: str, indent: str) -> list[str]:
    """``text`` as TOML comment lines, every line of it (a newline would end the comment)."""
    return [f"{indent}# {line}".rstrip() for line in text.splitlines() or [""]]


def _default(field: FieldInfo) -> Any:
    if field.default is not PydanticUndefined:
        return field.default
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]  # no validated data needed
    return None


def _field_lines(model: type[BaseModel] | None, indent: str) -> list[str]:
    if model is None:
        return []
    lines: list[str] = []
    for name, field in model.model_fields.items():
        key = _key(field.alias or name)
        if field.description:
            lines += _comment(field.description, indent)
        if field.is_required():
            lines.append(f"{indent}{key} = {toml_value(_field_value(field))}   # REQUIRED")
            continue
        default = _default(field)
        if default is None:
            lines.append(f"{indent}# {key} =   (not set by default)")
        else:
            lines.append(f"{indent}# {key} = {toml_value(default)}")
    return lines


def _timer_lines(driver: LoadedDriver, kind: str) -> list[str]:
    key = "polls" if kind == "poll" else "heartbeats"
    model = driver.poll_model if kind == "poll" else driver.heartbeat_model
    defaults = driver.default_polls if kind == "poll" else driver.default_heartbeats
    schedule = (
        "DELAY: next tick one interval after the previous one finished"
        if (kind == "poll")
        else "FIXED: ticks on a grid of start + N x interval"
    )
    lines = ["", f"  [[devices.{key}]]             # {schedule}"]
    if defaults:
        lines.insert(
            1, f"  # Without [[devices.{key}]], the driver uses: {toml_value(list(defaults))}"
        )
    lines += [
        "  # Unique per device; the 'timer' label.",
        f'  name = "{kind}-1"',
        "  # Seconds between ticks; also '250ms', '5s', '1m'.",
        "  interval = 5.0" if kind == "poll" else "  interval = 1.0",
        "  # First tick at start instead of one interval later.",
        "  # immediate = false",
        "  # Seconds a tick may run before it is cancelled.",
        "  # timeout = 2.0",
    ]
    if kind == "heartbeat":
        lines += [
            "  # Offset of the schedule grid, seconds, or 'auto'.",
            "  # phase = 0.0",
            "  # Grid on the clock's multiples of the interval (plus phase), not the start.",
            "  # align = false",
        ]
    lines += _field_lines(model, "  ")
    if defaults:  # the whole entry stays commented out, so the defaults apply
        lines = [
            line if line.lstrip().startswith("#") or not line else "  # " + line.lstrip()
            for line in lines
        ]
    return lines


def render_sample(driver: LoadedDriver) -> str:
    """The commented sample config of ``driver`` (a complete, valid TOML document)."""
    kind = driver.transports[0]
    transport = _TRANSPORT_EXAMPLES.get(kind, {"kind": kind})
    others = ", ".join(repr(k) for k in driver.transports[1:])
    lines = [
        f"# gatebeat sample config for the {driver.name!r} driver ({driver.source.describe()}).",
        "# Edit the transport, then: gatebeat check-config --config THIS-FILE",
        "",
        "[metrics]",
        "# HOST:PORT of the Prometheus exporter.",
        'listen = "127.0.0.1:9810"',
        "",
        "[logging]",
        '# "text" (key=value) or "json" (JSON lines).',
        'format = "text"',
        'level = "info"',
        "",
        "[[devices]]",
        "# Unique device name (letters, digits, _ . : -); the 'device' label.",
        f'name = "{driver.name}-1"',
        f'driver = "{driver.name}"',
        f"# How to reach the device{f'; this driver also works with {others}' if others else ''}.",
        f"transport = {toml_value(transport)}",
    ]
    if kind.startswith("modbus"):
        lines += ["# Modbus unit (slave) id.", "unit_id = 1"]
    lines += [
        "# Refuse every write (for commissioning).",
        "# read_only = false",
        "# Consecutive failed ticks before the device counts as down.",
        "# down_after_failures = 3",
        "# Seconds without success before readings are dropped (default 3 x longest interval).",
        "# stale_after = 30.0",
    ]
    lines += _field_lines(driver.config_model, "")
    for timer_kind in ("poll", "heartbeat"):
        if hasattr(driver.module, timer_kind):
            lines += _timer_lines(driver, timer_kind)
    return "\n".join(lines) + "\n"
