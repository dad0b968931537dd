"""One entry point that opens the right transport session for a device's settings.

Sessions connect lazily (on their first request) and reconnect with capped exponential backoff,
so opening never blocks and never fails because a device is offline.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from service.bus import Bus
from service.transports.modbus import (
    ModbusRtuOverTcpSettings,
    ModbusRtuSettings,
    ModbusSession,
    ModbusTcpSettings,
)

if TYPE_CHECKING:
    from service.transports.serial import SerialLineSession

__all__ = ["MODBUS_KINDS", "TRANSPORT_KINDS", "open_session"]

MODBUS_KINDS: frozenset[str] = frozenset({"modbus-tcp", "modbus-rtu", "modbus-rtu-over-tcp"})
"""Transport kinds served by :class:`~service.transports.modbus.ModbusSession`."""

TRANSPORT_KINDS: frozenset[str] = MODBUS_KINDS | {"serial"}
"""Every transport kind a device's ``transport.kind`` (and a driver's ``TRANSPORTS``) may name."""


def open_session(
    settings: Any,
    *,
    device: str,
    unit_id: int | None = None,
    bus: Bus,
    read_only: bool = False,
    writable: Iterable[tuple[str, int]] = (),
) -> ModbusSession | SerialLineSession:
    """Open the session for ``settings`` (by its ``kind``); nothing is connected yet.

    Args:
        settings: a Modbus or serial settings model (``kind`` selects the transport).
        device: the device name.
        unit_id: the Modbus unit id (ignored by serial lines).
        bus: the shared bus of the device's line (see ``bus_name``/``default_gap``).
        read_only: refuse every write (Modbus).
        writable: ``(table, address)`` pairs writes may go to (Modbus).

    Raises:
        ValueError: unknown transport kind, or line settings that clash with another device on
            the same link.
    """
    if isinstance(settings, ModbusTcpSettings | ModbusRtuSettings | ModbusRtuOverTcpSettings):
        return ModbusSession(
            settings,
            device=device,
            unit_id=unit_id,
            bus=bus,
            read_only=read_only,
            writable=writable,
        )
    kind = getattr(settings, "kind", None)
    if kind == "serial":  # imported here: the serial transport is an optional part
        from service.transports.serial import SerialLineSession

        return SerialLineSession(settings, device=device, bus=bus)
    raise ValueError(f"device {device!r}: unknown transport kind {kind!r}")
