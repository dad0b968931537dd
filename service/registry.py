"""Driver discovery: bundled modules, installed entry points and mounted directories.

A driver is a module whose name is the driver name. Three places provide them:

``builtin``
    modules of the ``drivers`` package (``drivers/modbus.py`` is the driver ``modbus``);
    names starting with ``_`` are skipped.
``entry point``
    the ``gatebeat.drivers`` entry point group of installed distributions (the entry point
    name is the driver name, its value the module).
``path``
    ``*.py`` files in the directories of ``runtime.driver_dirs`` (Docker users mount
    ``/etc/gatebeat/drivers`` without rebuilding the image).

Discovery only lists names and where they come from; a module is imported when it is first
needed, so one broken driver does not stop a gateway that does not use it. The same name from
two places is an error naming both. Loading checks the module's shape (``poll``/``heartbeat``
are coroutine functions, ``Config``/``Poll``/``Heartbeat`` are pydantic models, ...).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import pkgutil
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from service.transports.factory import TRANSPORT_KINDS

__all__ = [
    "COMMON_DEVICE_KEYS",
    "COMMON_TIMER_KEYS",
    "DriverError",
    "DriverInfo",
    "DriverSource",
    "LoadedDriver",
    "Registry",
    "check_module",
    "discover",
]

ENTRY_POINT_GROUP = "gatebeat.drivers"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

COMMON_DEVICE_KEYS = frozenset(
    {
        "name",
        "driver",
        "unit_id",
        "transport",
        "read_only",
        "down_after_failures",
        "stale_after",
        "enabled",
        "polls",
        "heartbeats",
    }
)
"""Device keys the framework owns; a driver's ``Config`` may not define fields with these names."""

COMMON_TIMER_KEYS = frozenset({"name", "interval", "phase", "align", "immediate", "timeout"})
"""Timer keys the framework owns; a driver's ``Poll``/``Heartbeat`` may not redefine them."""

_CALLBACKS = ("poll", "heartbeat", "startup", "shutdown")


class DriverError(Exception):
    """A driver is unknown, defined twice, or broken (import error, wrong shape).

    Attributes:
        driver: the driver name.
        problem: what is wrong, naming the module or the places involved.
    """

    def __init__(self, driver: str, problem: str) -> None:
        super().__init__(f"driver {driver!r}: {problem}")
        self.driver = driver
        self.problem = problem


@dataclass(frozen=True, slots=True)
class DriverSource:
    """Where a driver comes from.

    Attributes:
        kind: ``"builtin"``, ``"entry point"`` or ``"path"``.
        module: the module name to import (builtin, entry point) or ``None`` (path).
        path: the file (path drivers) or ``None``.
        dist: the distribution that declared the entry point, or ``None``.
    """

    kind: str
    module: str | None = None
    path: Path | None = None
    dist: str | None = None

    def describe(self) -> str:
        """A short human description: ``builtin``, ``entry point (dist)``, or the file path."""
        if self.kind == "builtin":
            return "builtin"
        if self.kind == "entry point":
            return f"entry point ({self.dist or '?'}: {self.module})"
        return str(self.path)


@dataclass(frozen=True, slots=True)
class DriverInfo:
    """A discovered (not yet imported) driver."""

    name: str
    source: DriverSource


@dataclass(frozen=True)
class LoadedDriver:
    """An imported driver module whose shape has been checked.

    Attributes:
        name: the driver name.
        source: where it came from.
        module: the module itself.
        config_model / poll_model / heartbeat_model: the driver's pydantic models, or ``None``.
        transports: the transport kinds it works with.
        default_polls / default_heartbeats: timer entries used when a device lists none.
    """

    name: str
    source: DriverSource
    module: ModuleType
    config_model: type[BaseModel] | None
    poll_model: type[BaseModel] | None
    heartbeat_model: type[BaseModel] | None
    transports: tuple[str, ...]
    default_polls: tuple[Mapping[str, Any], ...] = ()
    default_heartbeats: tuple[Mapping[str, Any], ...] = ()
    triggers: tuple[Any, ...] = field(default=())

    @property
    def callbacks(self) -> tuple[str, ...]:
        """The callbacks the module defines, among ``poll heartbeat startup shutdown``."""
        return tuple(name for name in _CALLBACKS if hasattr(self.module, name))

    def callback(self, name: str) -> Any:
        """The module's ``poll``/``heartbeat``/``startup``/``shutdown`` function, or ``None``."""
        return getattr(self.module, name, None)


class Registry:
    """The drivers found by :func:`discover`; imports each on first use and caches it."""

    def __init__(self, infos: Iterable[DriverInfo], duplicates: Mapping[str, str] | None = None):
        self._infos = {info.name: info for info in infos}
        self._duplicates = dict(duplicates or {})
        self._loaded: dict[str, LoadedDriver] = {}

    def names(self) -> list[str]:
        """All driver names, sorted (defined-twice names included)."""
        return sorted(set(self._infos) | set(self._duplicates))

    def info(self, name: str) -> DriverInfo:
        """The discovery record of ``name``; raises :class:`DriverError` if unknown/duplicated."""
        if name in self._duplicates:
            raise DriverError(name, self._duplicates[name])
        try:
            return self._infos[name]
        except KeyError:
            known = ", ".join(repr(n) for n in sorted(self._infos)) or "none"
            close = difflib.get_close_matches(name, list(self._infos), n=1)
            hint = f"did you mean {close[0]!r}? see" if close else f"known: {known}; see"
            raise DriverError(name, f"unknown driver ({hint} 'gatebeat drivers')") from None

    def get(self, name: str) -> LoadedDriver:
        """Import (once) and check the driver ``name``.

        Raises:
            DriverError: unknown, defined twice, fails to import, or has the wrong shape.
        """
        if name in self._loaded:
            return self._loaded[name]
        info = self.info(name)
        module = _import(info)
        loaded = check_module(name, info.source, module)
        self._loaded[name] = loaded
        return loaded


def discover(driver_dirs: Sequence[str | Path] = (), *, package: str = "drivers") -> Registry:
    """Find every driver: the ``package`` modules, entry points, then ``driver_dirs`` files.

    Args:
        driver_dirs: directories holding extra ``*.py`` driver modules; missing ones raise.
        package: the package of bundled drivers.

    Raises:
        DriverError: a directory of ``driver_dirs`` does not exist (driver name ``"*"``).
    """
    found: dict[str, list[DriverSource]] = {}

    pkg = importlib.import_module(package)
    for mod in pkgutil.iter_modules(list(getattr(pkg, "__path__", []))):
        if mod.name.startswith("_"):
            continue
        found.setdefault(mod.name, []).append(
            DriverSource("builtin", module=f"{package}.{mod.name}")
        )

    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else None
        source = DriverSource("entry point", module=ep.value, dist=dist)
        found.setdefault(ep.name, []).append(source)

    for directory in driver_dirs:
        root = Path(directory)
        if not root.is_dir():
            raise DriverError("*", f"driver directory {str(root)!r} does not exist")
        for path in sorted(root.glob("*.py")):
            if path.stem.startswith("_"):
                continue
            found.setdefault(path.stem, []).append(DriverSource("path", path=path.resolve()))

    infos: list[DriverInfo] = []
    duplicates: dict[str, str] = {}
    for name, sources in found.items():
        unique = list(dict.fromkeys(sources))
        if len(unique) == 1:
            infos.append(DriverInfo(name, unique[0]))
        else:
            places = " and ".join(s.describe() for s in unique)
            duplicates[name] = f"defined twice: {places}; rename one of them"
    return Registry(infos, duplicates)


def _import(info: DriverInfo) -> ModuleType:
    source = info.source
    try:
        if source.path is not None:
            module_name = f"gatebeat_driver_dirs.{info.name}"
            spec = importlib.util.spec_from_file_location(module_name, source.path)
            if spec is None or spec.loader is None:
                raise DriverError(info.name, f"cannot load {str(source.path)!r}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(module_name, None)
                raise
            return module
        assert source.module is not None
        return importlib.import_module(source.module.split(":", 1)[0])
    except DriverError:
        raise
    except Exception as exc:  # any import-time failure of a third-party module
        where = str(source.path) if source.path is not None else source.module
        raise DriverError(
            info.name, f"module {where!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc


def _model(name: str, module: ModuleType, attr: str, reserved: frozenset[str]) -> Any:
    model = getattr(module, attr, None)
    if model is None:
        return None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise DriverError(
            name, f"module {module.__name__!r}: {attr} must be a pydantic BaseModel subclass"
        )
    clash = sorted(set(model.model_fields) & reserved)
    if clash:
        raise DriverError(
            name,
            f"module {module.__name__!r}: {attr} redefines framework keys "
            f"{', '.join(clash)}; rename those fields",
        )
    return model


def _defaults(name: str, module: ModuleType, attr: str) -> tuple[Mapping[str, Any], ...]:
    value = getattr(module, attr, ())
    if not isinstance(value, list | tuple) or not all(isinstance(v, Mapping) for v in value):
        raise DriverError(name, f"module {module.__name__!r}: {attr} must be a list of dicts")
    return tuple(value)


def check_module(name: str, source: DriverSource, module: ModuleType) -> LoadedDriver:
    """Check that ``module`` has the shape of a driver and describe it.

    Raises:
        DriverError: naming the module and what is wrong.
    """
    where = f"module {module.__name__!r}"
    if not _NAME.fullmatch(name):
        raise DriverError(
            name, f"{where}: a driver name starts with a letter, then letters, digits and '_'"
        )
    if not hasattr(module, "poll") and not hasattr(module, "heartbeat"):
        raise DriverError(name, f"{where} defines neither poll() nor heartbeat()")
    for callback in _CALLBACKS:
        fn = getattr(module, callback, None)
        if fn is not None and not inspect.iscoroutinefunction(fn):
            raise DriverError(name, f"{where}: {callback} must be an 'async def' function")
    transports = getattr(module, "TRANSPORTS", None)
    if (
        not isinstance(transports, list | tuple)
        or not transports
        or not all(isinstance(t, str) for t in transports)
    ):
        raise DriverError(name, f"{where}: TRANSPORTS must be a non-empty list of transport kinds")
    unknown = [t for t in transports if t not in TRANSPORT_KINDS]
    if unknown:
        raise DriverError(
            name,
            f"{where}: TRANSPORTS names unknown transport kinds {unknown!r} "
            f"(known: {', '.join(sorted(TRANSPORT_KINDS))})",
        )
    triggers = getattr(module, "TRIGGERS", ())
    if not isinstance(triggers, list | tuple) or not all(
        isinstance(t, tuple) and len(t) == 2 and inspect.iscoroutinefunction(t[1]) for t in triggers
    ):
        raise DriverError(
            name, f"{where}: TRIGGERS must be a list of (trigger, async callback) pairs"
        )
    return LoadedDriver(
        name=name,
        source=source,
        module=module,
        config_model=_model(name, module, "Config", COMMON_DEVICE_KEYS),
        poll_model=_model(name, module, "Poll", COMMON_TIMER_KEYS),
        heartbeat_model=_model(name, module, "Heartbeat", COMMON_TIMER_KEYS),
        transports=tuple(transports),
        default_polls=_defaults(name, module, "DEFAULT_POLLS"),
        default_heartbeats=_defaults(name, module, "DEFAULT_HEARTBEATS"),
        triggers=tuple(triggers),
    )
