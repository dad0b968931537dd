"""Config checks of serial ports that several devices name: one port is one line.

A serial port is opened once per bus (pymodbus locks it), and devices on one line take turns on
their bus. So devices that name the same port must be on the same bus; Modbus RTU devices on it
must agree on the line settings (a link has one baud rate); and a ``serial`` (line protocol)
device cannot share its port at all: each such device opens the port itself, and bytes read by
one would be lost to the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.settings_devices import ResolvedDevice
from service.settings_errors import format_location
from service.transports.modbus_link import LINK_FIELDS
from service.transports.modbus_settings import ModbusRtuSettings
from service.transports.serial_settings import SerialSettings

__all__ = ["serial_port_problems"]


def serial_port_problems(devices: Sequence[tuple[int, ResolvedDevice]], root: Any) -> list[str]:
    """Problems of enabled devices that open one serial port (``modbus-rtu``, ``serial``).

    Each device is compared with the first device that named its port: another bus, a
    ``serial`` device on either side, or different line settings is one problem naming both
    devices, the field and the values.

    Args:
        devices: ``(index in [[devices]], device)`` pairs, in config order.
        root: the raw config, for device names in locations.
    """
    first: dict[str, tuple[int, ResolvedDevice]] = {}
    problems: list[str] = []
    for index, device in devices:
        transport = device.transport
        if not device.enabled or not isinstance(transport, ModbusRtuSettings | SerialSettings):
            continue
        other_index, other = first.setdefault(transport.port, (index, device))
        if other is device:
            continue
        this = format_location(("devices", index), root)
        that = format_location(("devices", other_index), root)
        port = format_location(("devices", index, "transport", "port"), root)
        if other.bus != device.bus:
            problems.append(
                f"{port}: {transport.port!r} is also the port of {that} on {_bus_text(other)}, "
                f"but {this} is on {_bus_text(device)} (devices on one serial port share one "
                f"line: give them the same bus, or leave bus unset on all of them)"
            )
        elif isinstance(transport, SerialSettings) or isinstance(other.transport, SerialSettings):
            problems.append(
                f"{port}: {transport.port!r} is also the port of {that}; a 'serial' device "
                f"needs a port of its own (each opens it, and one would read the other's "
                f"replies)"
            )
        else:
            for name in LINK_FIELDS["modbus-rtu"][1:]:
                mine, theirs = getattr(transport, name), getattr(other.transport, name)
                if mine != theirs:
                    where = format_location(("devices", index, "transport", name), root)
                    problems.append(
                        f"{where}: {mine!r} differs from {theirs!r} of {that} on the same port "
                        f"{transport.port!r} (one line has one {name})"
                    )
    return problems


def _bus_text(device: ResolvedDevice) -> str:
    if getattr(device.transport, "bus", None) is None:
        return f"the default bus {device.bus!r}"
    return f"bus {device.bus!r}"
