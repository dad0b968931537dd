"""Resolve each ``[[devices]]`` entry against its driver: ``Config``, timers, transport kind.

The result, :class:`ResolvedDevice`, is what the runner needs to start a device: the driver
module, the validated ``Config`` instance, and one :class:`ResolvedTimer` per poll/heartbeat.
Every problem found is appended to a list instead of raised, so a config with many mistakes is
refused once, with all of them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from service.driver import TimerSpec
from service.registry import (
    COMMON_DEVICE_KEYS,
    COMMON_TIMER_KEYS,
    DriverError,
    LoadedDriver,
    Registry,
)
from service.settings_errors import format_location, translate_errors
from service.settings_models import DeviceSettings, TimerSettings
from service.transports import modbus, serial
from service.transports.serial import SerialSettings

__all__ = ["ResolvedDevice", "ResolvedTimer", "bus_gap", "bus_of", "gap_of", "resolve_device"]

_TIMER_KINDS: dict[str, str] = {"polls": "poll", "heartbeats": "heartbeat"}
_MODBUS_KINDS = frozenset({"modbus-tcp", "modbus-rtu", "modbus-rtu-over-tcp"})
_KNOWN_KINDS = _MODBUS_KINDS | {"serial"}


@dataclass(frozen=True, slots=True)
class ResolvedTimer:
    """One poll or heartbeat, ready for :class:`service.Timer`.

    Attributes:
        spec: what the driver's callback sees as ``tick.timer``.
        phase: offset of the schedule grid, seconds, or ``"auto"``.
        align: heartbeats: the grid is the clock's multiples of the interval, not the start.
        immediate: first tick at start instead of one interval later.
        timeout: seconds a tick may run before it is cancelled, or ``None``.
    """

    spec: TimerSpec
    phase: float | Literal["auto"] = 0.0
    immediate: bool = False
    timeout: float | None = None
    align: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        """``"poll"`` (DELAY) or ``"heartbeat"`` (FIXED)."""
        return self.spec.kind

    @property
    def interval(self) -> float:
        """Seconds."""
        return self.spec.interval


@dataclass(frozen=True)
class ResolvedDevice:
    """A device validated against its driver.

    Attributes:
        settings: the common settings (name, transport, read-only flag, ...).
        driver: the loaded driver.
        config: the driver's ``Config`` instance, or ``None`` when it defines none.
        timers: polls then heartbeats, in config order (or the driver's defaults).
        unit_id: the Modbus unit id (1 when not set), ``None`` for serial-line devices.
        stale_after: seconds without success before readings are stale (3 x longest interval
            unless set).
        bus: the name of the bus the device is on.
    """

    settings: DeviceSettings
    driver: LoadedDriver
    config: BaseModel | None
    timers: tuple[ResolvedTimer, ...]
    unit_id: int | None
    stale_after: float
    bus: str

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    @property
    def transport(self) -> Any:
        """The transport settings model (``ModbusTcpSettings``, ``SerialSettings``, ...)."""
        return self.settings.transport

    @property
    def polls(self) -> tuple[ResolvedTimer, ...]:
        return tuple(t for t in self.timers if t.kind == "poll")

    @property
    def heartbeats(self) -> tuple[ResolvedTimer, ...]:
        return tuple(t for t in self.timers if t.kind == "heartbeat")


def bus_of(transport: Any) -> str:
    """The bus name of a transport settings model (the transport module's ``bus_name``)."""
    if isinstance(transport, SerialSettings):
        return serial.bus_name(transport)
    return modbus.bus_name(transport)


def gap_of(transport: Any) -> float:
    """Seconds of silence between frames on the transport's bus (``default_gap``)."""
    if isinstance(transport, SerialSettings):
        return serial.default_gap(transport)
    return modbus.default_gap(transport)


def bus_gap(members: Iterable[ResolvedDevice]) -> float:
    """Seconds of silence a shared bus keeps between frames: the largest gap of its devices.

    Every device on a line gets at least the silence it asked for (a quirky device's 30 ms
    applies to the whole line, whichever device is listed first), and the timing budget
    counts the same gap.
    """
    return max((gap_of(d.transport) for d in members), default=0.0)


def _field_keys(model: type[BaseModel]) -> set[str]:
    keys = set(model.model_fields)
    keys |= {f.alias for f in model.model_fields.values() if f.alias}
    return keys


def _validate_extras(
    model: type[BaseModel] | None,
    values: Mapping[str, Any],
    *,
    loc: Sequence[int | str],
    root: Any,
    owner: str,
    common: frozenset[str],
    problems: list[str],
    env_names: Mapping[tuple[str, ...], str],
) -> BaseModel | None:
    """Validate driver-owned keys with ``model``; unknown keys are problems."""
    known = _field_keys(model) if model is not None else set()
    ok = True
    for key in values:
        if key not in known:
            where = format_location([*loc, key], root)
            close = difflib.get_close_matches(key, sorted(known | set(common)), n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else f"{owner} takes "
                + (", ".join(repr(k) for k in sorted(known)) if known else "no other keys")
            )
            problems.append(f"{where}: unknown key ({hint})")
            ok = False
    if model is None:
        return None
    try:
        instance = model.model_validate({k: v for k, v in values.items() if k in known})
    except ValidationError as exc:
        problems.extend(translate_errors(exc, root, prefix=loc, env_names=env_names))
        return None
    except Exception as exc:  # a driver's validator failing with something else: its bug
        where = format_location(loc, root)
        problems.append(
            f"{where}: {owner} {model.__name__} validation failed: {type(exc).__name__}: {exc}"
        )
        return None
    return instance if ok else None


def _has_both(driver: LoadedDriver) -> bool:
    return hasattr(driver.module, "poll") and hasattr(driver.module, "heartbeat")


def _timers(
    driver: LoadedDriver,
    raw: Mapping[str, Any],
    *,
    loc: tuple[int | str, ...],
    root: Any,
    problems: list[str],
    env_names: Mapping[tuple[str, ...], str],
) -> list[ResolvedTimer]:
    timers: list[ResolvedTimer] = []
    where = format_location(loc, root)
    before = len(problems)
    for key, kind in _TIMER_KINDS.items():
        entries = raw.get(key)
        has_callback = hasattr(driver.module, kind)
        model = driver.poll_model if kind == "poll" else driver.heartbeat_model
        defaults = driver.default_polls if kind == "poll" else driver.default_heartbeats
        source: Sequence[Any]
        if entries and not has_callback:
            problems.append(
                f"{where}.{key}: driver {driver.name!r} has no {kind}(); remove these entries"
            )
            continue
        if not isinstance(entries, list):
            if entries is not None:
                continue  # a wrong type was reported by the common model
            entries = []
        if entries:
            source, entry_root, entry_loc = entries, root, (*loc, key)
        elif has_callback and defaults:
            source = list(defaults)
            entry_root = {f"{driver.name}.DEFAULT_{key.upper()}": source}
            entry_loc = (f"{driver.name}.DEFAULT_{key.upper()}",)
        elif has_callback and not _has_both(driver):
            problems.append(
                f"{where}.{key}: driver {driver.name!r} needs at least one "
                f"[[devices.{key}]] entry (name, interval, ...)"
            )
            continue
        else:
            continue
        for index, entry in enumerate(source):
            if not isinstance(entry, Mapping):
                continue  # reported by the common model
            try:
                common = TimerSettings.model_validate(
                    {k: v for k, v in entry.items() if k in COMMON_TIMER_KEYS}
                )
            except ValidationError as exc:
                if source is not entries:  # config entries were reported by DeviceSettings
                    problems.extend(
                        translate_errors(
                            exc, entry_root, prefix=(*entry_loc, index), env_names=env_names
                        )
                    )
                common = None
            extras = {k: v for k, v in entry.items() if k not in COMMON_TIMER_KEYS}
            options = _validate_extras(
                model,
                extras,
                loc=(*entry_loc, index),
                root=entry_root,
                owner=f"driver {driver.name!r}",
                common=COMMON_TIMER_KEYS,
                problems=problems,
                env_names=env_names,
            )
            if common is None or (model is not None and options is None):
                continue
            if kind == "poll" and common.phase != 0:
                label = format_location((*entry_loc, index), entry_root)
                problems.append(
                    f"{label}.phase: {common.phase!r}: a phase applies to heartbeats (FIXED "
                    "schedules) only; a poll's next tick follows the end of the previous one"
                )
                continue
            if kind == "poll" and common.align:
                label = format_location((*entry_loc, index), entry_root)
                problems.append(
                    f"{label}.align: true: align applies to heartbeats (FIXED schedules) only; "
                    "a poll's next tick follows the end of the previous one"
                )
                continue
            spec = TimerSpec(common.name, kind, common.interval, options)
            timers.append(
                ResolvedTimer(
                    spec, common.phase, common.immediate, common.timeout, align=common.align
                )
            )
    listed = any(isinstance(raw.get(key), list) and raw.get(key) for key in _TIMER_KINDS)
    if not timers and not listed and len(problems) == before:
        problems.append(f"{where}: no polls nor heartbeats configured")
    return timers


def _duplicate_timers(
    raw: Mapping[str, Any], loc: tuple[int | str, ...], root: Any, problems: list[str]
) -> None:
    seen: dict[str, str] = {}
    for key in _TIMER_KINDS:
        entries = raw.get(key)
        if not isinstance(entries, list):
            continue
        for index, entry in enumerate(entries):
            name = entry.get("name") if isinstance(entry, Mapping) else None
            if not isinstance(name, str):
                continue
            here = format_location((*loc, key, index), root)
            if name in seen:
                problems.append(
                    f"{here}.name: {name!r} is already the name of {seen[name]} "
                    f"(timer names must be unique per device)"
                )
            else:
                seen[name] = here


def resolve_device(
    index: int,
    raw: Any,
    *,
    root: Any,
    registry: Registry,
    problems: list[str],
    env_names: Mapping[tuple[str, ...], str],
) -> ResolvedDevice | None:
    """Validate ``devices[index]`` (``raw``) against its driver; append problems found.

    Returns the resolved device, or ``None`` when anything about it was wrong.
    """
    loc: tuple[int | str, ...] = ("devices", index)
    where = format_location(loc, root)
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be a table ([[devices]]), not {raw!r}")
        return None
    before = len(problems)
    settings: DeviceSettings | None = None
    try:
        settings = DeviceSettings.model_validate(raw)
    except ValidationError as exc:
        problems.extend(translate_errors(exc, root, prefix=loc, env_names=env_names))
    _duplicate_timers(raw, loc, root, problems)

    driver: LoadedDriver | None = None
    name = raw.get("driver")
    if isinstance(name, str):
        try:
            driver = registry.get(name)
        except DriverError as exc:
            problems.append(f"{where}.driver: {exc}")
    if driver is None:
        return None

    extras = {k: v for k, v in raw.items() if k not in COMMON_DEVICE_KEYS}
    config = _validate_extras(
        driver.config_model,
        extras,
        loc=loc,
        root=root,
        owner=f"driver {driver.name!r}",
        common=COMMON_DEVICE_KEYS,
        problems=problems,
        env_names=env_names,
    )
    transport = raw.get("transport")
    kind = transport.get("kind") if isinstance(transport, Mapping) else None
    if isinstance(kind, str) and kind in _KNOWN_KINDS and kind not in driver.transports:
        problems.append(
            f"{where}.transport.kind: driver {driver.name!r} works with "
            f"{', '.join(repr(t) for t in driver.transports)}, not {kind!r}"
        )
    if isinstance(kind, str) and kind not in _MODBUS_KINDS and raw.get("unit_id") is not None:
        problems.append(f"{where}.unit_id: applies to Modbus transports only, not {kind!r}")
    timers = _timers(driver, raw, loc=loc, root=root, problems=problems, env_names=env_names)

    if settings is None or len(problems) > before:
        return None
    unit_id = settings.unit_id
    if unit_id is None and settings.transport.kind in _MODBUS_KINDS:
        unit_id = 1
    longest = max(t.interval for t in timers)
    stale_after = settings.stale_after if settings.stale_after is not None else 3 * longest
    return ResolvedDevice(
        settings=settings,
        driver=driver,
        config=config,
        timers=tuple(timers),
        unit_id=unit_id,
        stale_after=stale_after,
        bus=bus_of(settings.transport),
    )
