"""The driver interface: what a driver module provides, and what the framework hands it.

A driver is one module; its file name is the driver name. It may define:

``Config``
    a pydantic model of the device-level settings the driver needs beyond the common ones
    (``name``, ``driver``, ``transport``, ``unit_id``, ...). ``Field(description=...)`` is
    the documentation rendered by ``gatebeat sample-config``.
``Poll`` / ``Heartbeat``
    pydantic models of extra fields of one ``[[devices.polls]]`` / ``[[devices.heartbeats]]``
    entry (the generic ``modbus`` driver puts its register table there).
``async def poll(tick: Tick) -> Readings``
    called on every DELAY poll tick; returns the readings (field name -> value).
``async def heartbeat(tick: Tick) -> Readings | None``
    called on every FIXED heartbeat tick (typically a watchdog write).
``async def startup(device: Device)`` / ``async def shutdown(device: Device)``
    optional hooks, run once after the transport is set up and before it is closed.
``def writable(device: Device, timers: Sequence[TimerSpec]) -> Iterable[tuple[str, int]]``
    the ``(table, address)`` pairs the driver may write, computed once from its config before
    the device starts; afterwards the session refuses writes anywhere else.
``TRIGGERS``
    optional list of ``(trigger, async callback(device))`` pairs for extra tasks.
``TRANSPORTS``
    the transport kinds the driver works with (``"modbus-tcp"``, ``"modbus-rtu"``,
    ``"modbus-rtu-over-tcp"``, ``"serial"``).
``DEFAULT_POLLS`` / ``DEFAULT_HEARTBEATS``
    lists of dicts used when the device's config lists no polls / heartbeats.

The framework injects the transport session (``tick.session``); drivers never open connections.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

__all__ = ["Device", "Readings", "Tick", "TimerSpec", "Value"]

Value = float | int | bool | str
Readings = dict[str, Value]
"""Field name -> value. Field names become metric names ``gatebeat_reading_<field>``."""


@dataclass(frozen=True, slots=True)
class TimerSpec:
    """One configured poll or heartbeat of a device.

    Attributes:
        name: unique per device; the ``timer`` label.
        kind: ``"poll"`` (DELAY) or ``"heartbeat"`` (FIXED).
        interval: seconds.
        options: the driver's ``Poll``/``Heartbeat`` model instance, or ``None``.
    """

    name: str
    kind: str
    interval: float
    options: BaseModel | None = None


@dataclass(eq=False)
class Device:
    """A configured device as its driver sees it.

    Attributes:
        name: unique device name; the ``device`` label.
        driver: the driver's name.
        config: the driver's ``Config`` instance (or ``None`` when it defines none).
        session: the transport session injected by the framework.
        settings: the device's validated common settings (unit id, read-only flag, ...).
        state: scratch space the driver may keep between ticks (a watchdog counter, ...).
        log: a logger whose records carry the device name.
    """

    name: str
    driver: str
    config: Any
    session: Any
    settings: Any = None
    state: dict[str, Any] = field(default_factory=dict)
    log: logging.LoggerAdapter[logging.Logger] = field(init=False)

    def __post_init__(self) -> None:
        self.log = logging.LoggerAdapter(
            logging.getLogger(f"gatebeat.device.{self.name}"), {"device": self.name}
        )


@dataclass(frozen=True, slots=True)
class Tick:
    """What a driver's ``poll``/``heartbeat`` receives on every tick.

    Attributes:
        device: the device.
        timer: the poll or heartbeat being run.
        number: the tick's number on its schedule.
        due: loop time (seconds) the tick was due.
    """

    device: Device
    timer: TimerSpec
    number: int
    due: float

    @property
    def session(self) -> Any:
        """The device's transport session (Modbus or serial line)."""
        return self.device.session

    @property
    def config(self) -> Any:
        """The driver's ``Config`` instance for this device."""
        return self.device.config

    @property
    def options(self) -> Any:
        """The ``Poll``/``Heartbeat`` options of this timer, or ``None``."""
        return self.timer.options
