"""gatebeat's configuration: a TOML file overridden by ``GATEBEAT_...`` environment variables.

Loading happens in three steps, and every problem of every step is collected before anything
is refused, so an operator fixes a config in one round:

1. the TOML file is parsed (syntax errors carry line and column);
2. environment variables (prefix ``GATEBEAT_``, ``__`` between nesting levels, read by
   pydantic-settings' env source) are merged over it, section by section:
   ``GATEBEAT_METRICS__LISTEN`` replaces one key of ``[metrics]``; ``GATEBEAT_DEVICES``
   (JSON) replaces the whole device list;
3. the top-level sections are validated, then each device against its driver (see
   :mod:`service.settings_devices`), then the timing budgets are checked.

The result is a :class:`GatebeatSettings` whose :attr:`~GatebeatSettings.resolved_devices`
hold what the runner starts.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, SettingsError
from pydantic_settings.sources.utils import parse_env_vars

from service.budget import BusLoad, DeviceLoad, TimerLoad, check_budget
from service.registry import DriverError, Registry, discover
from service.settings_devices import ResolvedDevice, ResolvedTimer, bus_gap, resolve_device
from service.settings_errors import ConfigError, env_note, format_location, translate_errors
from service.settings_models import (
    MAX_DEVICES,
    DeviceSettings,
    LoggingSettings,
    MetricsSettings,
    RuntimeSettings,
    Sections,
)
from service.settings_ports import serial_port_problems
from service.transports.modbus_plan import plan_reads

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "ConfigError",
    "GatebeatSettings",
    "ResolvedDevice",
    "ResolvedTimer",
    "env_driver_dirs",
    "load_settings",
]

ENV_PREFIX = "GATEBEAT_"
ENV_DELIMITER = "__"
CONFIG_ENV = "GATEBEAT_CONFIG"


class GatebeatSettings(BaseSettings):
    """The whole, validated configuration. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    devices: list[DeviceSettings] = Field(default_factory=list, max_length=MAX_DEVICES)

    _resolved: tuple[ResolvedDevice, ...] = PrivateAttr(default=())
    _warnings: tuple[str, ...] = PrivateAttr(default=())
    _source: str | None = PrivateAttr(default=None)

    @property
    def resolved_devices(self) -> tuple[ResolvedDevice, ...]:
        """Every device validated against its driver, in config order (disabled ones too)."""
        return self._resolved

    @property
    def warnings(self) -> tuple[str, ...]:
        """Timing-budget warnings (problems that do not stop a start)."""
        return self._warnings

    @property
    def source(self) -> str | None:
        """The config file read, or ``None`` when everything came from the environment."""
        return self._source

    def summary(self) -> str:
        """One line: devices (enabled), timers, buses, drivers."""
        devices = self._resolved
        enabled = [d for d in devices if d.enabled]
        timers = sum(len(d.timers) for d in enabled)
        buses = len({d.bus for d in enabled})
        drivers = ", ".join(sorted({d.driver.name for d in devices})) or "none"
        return (
            f"ok: {len(enabled)} device(s) enabled of {len(devices)}, {timers} timer(s), "
            f"{buses} bus(es); drivers: {drivers}; metrics on {self.metrics.listen}"
        )


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' env source, reading a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env = dict(env)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._env, self.case_sensitive, self.env_ignore_empty)


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


_TOML_AT = re.compile(r"^(?P<msg>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)$")


def _read_toml(path: str) -> dict[str, Any]:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a config file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_AT.match(str(exc))
        if match is None:
            raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None
        raise ConfigError(
            [
                f"{path}: line {match['line']}, column {match['col']}: TOML syntax error: "
                f"{match['msg'][0].lower()}{match['msg'][1:]}"
            ]
        ) from None


_SECRET_SECTIONS = frozenset({"metrics"})  # whole-section JSON may hold basic_auth_password


def _env_key(var: str) -> tuple[str, ...]:
    """The config key path a ``GATEBEAT_...`` variable names (``runtime.driver_dirs``)."""
    return tuple(var.upper()[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER))


def _not_json(var: str, text: str, cause: BaseException | None) -> str:
    """The problem line of a variable whose value should have been JSON, and was not.

    The value is shown unless it is long or may hold the basic-auth password.
    """
    key = _env_key(var)
    if key == ("devices",):
        wanted = "a list of device tables, as a JSON array"
    elif key[-1] == "driver_dirs":
        wanted = "a list, as JSON: '[\"/etc/gatebeat/drivers\"]'"
    else:
        wanted = f"a table, as a JSON object (or one variable per key: {var}__KEY)"
    shown = "the value" if key[0] in _SECRET_SECTIONS or len(text) > 60 else repr(text)
    reason = f" ({cause})" if cause is not None else ""
    return f"{var}: {shown} is not valid JSON{reason}; {'.'.join(key)} is {wanted}"


def _leaves(value: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    """Every (key path, value) a variable sets; lists and scalars are leaves (never merged)."""
    if isinstance(value, Mapping) and value:
        found: list[tuple[tuple[str, ...], Any]] = []
        for key, item in value.items():
            found += _leaves(item, (*path, str(key).lower()))
        return found
    return [(path, value)]


def _lookup(data: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data
    for part in path:
        if not isinstance(node, Mapping):
            return None
        node = next((v for k, v in node.items() if str(k).lower() == part), None)
    return node


def _env_overrides(
    env: Mapping[str, str],
) -> tuple[dict[str, Any], dict[tuple[str, ...], str], list[str]]:
    """The values set by ``GATEBEAT_...`` variables, which variable set each key, and problems.

    Each variable is also read on its own, so a problem names the variable that caused it and
    every key path (lower case) maps to the variable whose value took effect: a JSON section
    (``GATEBEAT_METRICS='{...}'``) is credited only with the keys it holds, and a nested
    variable (``GATEBEAT_METRICS__LISTEN``) wins over it, as in pydantic-settings.
    """
    problems: list[str] = []
    usable: dict[str, str] = {}
    single: dict[str, dict[str, Any]] = {}
    for var, text in env.items():
        if not var.upper().startswith(ENV_PREFIX) or var.upper() == CONFIG_ENV:
            continue
        try:
            single[var] = dict(_MappingEnvSource(GatebeatSettings, {var: text})())
        except SettingsError as exc:
            problems.append(_not_json(var, text, exc.__cause__))
            continue
        devices = single[var].get("devices")
        if isinstance(devices, Mapping):
            problems.append(
                f"{var}: devices cannot be set one key at a time; GATEBEAT_DEVICES (a JSON "
                "array of device tables) replaces the whole device list, or edit the file"
            )
            continue
        usable[var] = text
    values = dict(_MappingEnvSource(GatebeatSettings, usable)()) if usable else {}
    names: dict[tuple[str, ...], str] = {}
    for var in usable:
        for path, value in _leaves(single[var], ()):
            if path and _lookup(values, path) == value:
                names.setdefault(path, var)
    return values, names, problems


def env_driver_dirs(env: Mapping[str, str]) -> list[str] | None:
    """``runtime.driver_dirs`` as the environment sets it (``GATEBEAT_RUNTIME__DRIVER_DIRS``, or
    inside ``GATEBEAT_RUNTIME``), or ``None`` when no variable sets it.

    For commands that only need the drivers (``drivers``, ``sample-config``), so they find the
    same drivers as ``run``.

    Raises:
        ConfigError: a variable that sets it is not valid JSON, or it is not a list of paths.
    """
    relevant = {
        var: text
        for var, text in env.items()
        if _env_key(var)[:1] == ("runtime",) and var.upper().startswith(ENV_PREFIX)
    }
    values, names, problems = _env_overrides(relevant)
    if problems:
        raise ConfigError(problems)
    runtime = values.get("runtime")
    dirs = runtime.get("driver_dirs") if isinstance(runtime, Mapping) else None
    if dirs is None:
        return None
    if not isinstance(dirs, list) or not all(isinstance(d, str) for d in dirs):
        note = env_note(("runtime", "driver_dirs"), names)
        raise ConfigError([f"runtime.driver_dirs: must be a list of paths, not {dirs!r}{note}"])
    return dirs


def _requests(device: ResolvedDevice, timer: ResolvedTimer) -> int:
    """Requests one tick of ``timer`` sends: grouped register reads, else one."""
    registers = getattr(timer.spec.options, "registers", None)
    if not isinstance(registers, list) or not registers:
        return 1
    transport = device.transport
    try:
        return len(
            plan_reads(
                registers,
                max_fill=getattr(transport, "max_fill", 0),
                one_request_per_field=getattr(transport, "one_request_per_field", False),
            )
        )
    except (TypeError, ValueError, AttributeError):
        return len(registers)


def _budget_findings(devices: Sequence[ResolvedDevice]) -> list[str]:
    """Every timer whose interval its bus cannot serve in the worst case (:mod:`service.budget`)."""
    buses: dict[str, list[ResolvedDevice]] = {}
    for device in devices:
        if device.enabled:
            buses.setdefault(device.bus, []).append(device)
    loads = [
        BusLoad(
            name=name,
            gap=bus_gap(members),
            devices=tuple(
                DeviceLoad(
                    name=d.name,
                    timeout=d.transport.timeout,
                    retries=getattr(d.transport, "retries", 0),
                    request_gap=d.transport.request_gap,
                    timers=tuple(
                        TimerLoad(f"{t.kind}s[{t.name}]", t.interval, _requests(d, t))
                        for t in d.timers
                    ),
                )
                for d in members
            ),
        )
        for name, members in buses.items()
    ]
    return [str(finding) for finding in check_budget(loads)]


def load_settings(
    path: str | None,
    env: Mapping[str, str] | None = None,
    *,
    registry: Registry | None = None,
) -> GatebeatSettings:
    """Read, merge and validate the configuration.

    Args:
        path: the TOML file; ``None`` reads ``GATEBEAT_CONFIG`` from ``env``, and without it
            the configuration comes from the environment alone.
        env: the environment variables (``os.environ`` when ``None``).
        registry: the drivers to resolve against (discovered, with ``runtime.driver_dirs``,
            when ``None``).

    Raises:
        ConfigError: with every problem found, one located line each.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    if path is None:
        path = environ.get(CONFIG_ENV) or None
    data = _read_toml(path) if path is not None else {}
    overrides, env_names, problems = _env_overrides(environ)
    merged = _deep_merge(data, overrides)

    sections: Sections | None = None
    try:
        sections = Sections.model_validate({k: v for k, v in merged.items() if k != "devices"})
    except ValidationError as exc:
        known: dict[tuple[str, ...], list[str]] = {(): [*Sections.model_fields, "devices"]}
        for name, field in Sections.model_fields.items():
            assert field.annotation is not None
            known[(name,)] = list(getattr(field.annotation, "model_fields", {}))
        problems.extend(translate_errors(exc, merged, env_names=env_names, known_keys=known))

    if registry is None:
        runtime = merged.get("runtime")
        dirs = runtime.get("driver_dirs", []) if isinstance(runtime, Mapping) else []
        if not isinstance(dirs, list) or not all(isinstance(d, str) for d in dirs):
            dirs = []  # reported by the Sections validation
        try:
            registry = discover(dirs)
        except DriverError as exc:
            note = env_note(("runtime", "driver_dirs"), env_names)
            problems.append(f"runtime.driver_dirs: {exc.problem}{note}")
            registry = discover([])

    raw_devices = merged.get("devices", [])
    resolved: list[ResolvedDevice] = []
    indices: list[int] = []  # each resolved device's position in raw_devices
    before = len(problems)
    if not isinstance(raw_devices, list):
        problems.append(f"devices: must be a list of [[devices]] tables, not {raw_devices!r}")
    elif not raw_devices:
        problems.append("devices: no devices configured (add a [[devices]] table)")
    else:
        first_with: dict[str, int] = {}
        for index, raw in enumerate(raw_devices):
            device_name = raw.get("name") if isinstance(raw, Mapping) else None
            if isinstance(device_name, str):
                name = device_name
                if name in first_with:
                    where = format_location(("devices", index, "name"), merged)
                    other = format_location(("devices", first_with[name]), merged)
                    problems.append(
                        f"{where}: {name!r} is already the name of {other} "
                        f"(device names must be unique)"
                    )
                else:
                    first_with[name] = index
            device = resolve_device(
                index, raw, root=merged, registry=registry, problems=problems, env_names=env_names
            )
            if device is not None:
                resolved.append(device)
                indices.append(index)
        problems.extend(serial_port_problems(list(zip(indices, resolved, strict=True)), merged))
    note = env_note(("devices",), env_names)  # the list comes whole from one place
    problems[before:] = [p if p.endswith(note) else p + note for p in problems[before:]]

    warnings: list[str] = []
    if not problems and sections is not None:
        for finding in _budget_findings(resolved):
            (problems if sections.runtime.strict_budgets else warnings).append(finding)
    if problems or sections is None:
        raise ConfigError(problems)

    settings = GatebeatSettings.model_validate(
        {
            "metrics": sections.metrics,
            "logging": sections.logging,
            "runtime": sections.runtime,
            "devices": [device.settings for device in resolved],
        }
    )
    settings._resolved = tuple(resolved)
    settings._warnings = tuple(warnings)
    settings._source = path
    return settings
