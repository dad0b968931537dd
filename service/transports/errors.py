"""Typed transport errors, and the one boundary that turns pymodbus failures into them.

Hierarchy::

    TransportError                 base; .device names the device
    ├── DeviceUnavailable          not connected, connect failed, or backing off (fails fast)
    ├── DeviceTimeout              no (complete) reply within timeout x (retries + 1)
    ├── ModbusExceptionResponse    the device answered with a Modbus exception code
    ├── FrameError                 a reply arrived but was malformed or for someone else
    └── WriteRefused               read-only device, or an address not declared writable

pymodbus raises I/O failures (``ConnectionException``, ``ModbusIOException``, timeouts) but
*returns* Modbus exception responses (``response.isError()``); :func:`modbus_errors` and
:func:`check_response` handle both, so no pymodbus exception crosses into drivers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

__all__ = [
    "EXCEPTION_CODE_NAMES",
    "DeviceTimeout",
    "DeviceUnavailable",
    "FrameError",
    "ModbusExceptionResponse",
    "TransportError",
    "WriteRefused",
    "check_response",
    "modbus_errors",
    "request_label",
]

EXCEPTION_CODE_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
"""Modbus exception codes (Modbus Application Protocol v1.1b3, section 7) and their names."""


class TransportError(Exception):
    """Base of every transport failure; the message names the device and what was asked.

    Args:
        message: the full human-readable message.
        device: the device name.
    """

    def __init__(self, message: str, *, device: str) -> None:
        super().__init__(message)
        self.device = device


class DeviceUnavailable(TransportError):
    """The device cannot be reached now: not connected, connect failed, or backing off."""


class DeviceTimeout(TransportError):
    """No complete reply arrived within the timeout (after all retries)."""


class FrameError(TransportError):
    """A reply arrived but was malformed, or belonged to another unit or transaction."""


class WriteRefused(TransportError):
    """A write was refused before reaching the line: read-only device or undeclared address."""


class ModbusExceptionResponse(TransportError):
    """The device answered with a Modbus exception response.

    Args:
        message: the full message.
        device: the device name.
        function: the request's function name (``"read_holding_registers"``, ...).
        address: the request's first address.
        code: the Modbus exception code (2 = illegal data address, 6 = device busy, ...).
    """

    def __init__(
        self, message: str, *, device: str, function: str, address: int, code: int
    ) -> None:
        super().__init__(message, device=device)
        self.function = function
        self.address = address
        self.code = code


def request_label(
    device: str, function: str, address: int | None = None, count: int | None = None
) -> str:
    """``device 'NAME': FUNCTION at address A (count N)``: how every error names a request."""
    where = f"device {device!r}: {function}"
    if address is not None:
        where += f" at address {address}"
        if count is not None and count != 1:
            where += f" (count {count})"
    return where


@contextlib.contextmanager
def modbus_errors(
    device: str, function: str, *, address: int | None = None, count: int | None = None
) -> Iterator[None]:
    """Translate pymodbus and I/O exceptions raised inside the block into typed errors.

    ``TransportError`` raised inside passes through unchanged; ``CancelledError`` is never
    touched.

    Args:
        device: the device name, for the message.
        function: the pymodbus function or operation (``"read_coils"``, ``"connect"``, ...).
        address: the request's first address, if any.
        count: the number of registers or bits asked for, if any.

    Raises:
        DeviceUnavailable: the connection is down or could not be made.
        DeviceTimeout: no reply in time.
        FrameError: a reply for another unit id or transaction.
        TransportError: any other pymodbus failure.
    """
    where = request_label(device, function, address, count)
    try:
        yield
    except TransportError:
        raise
    except ConnectionException as exc:
        raise DeviceUnavailable(f"{where}: not connected ({exc})", device=device) from exc
    except ModbusIOException as exc:
        text = str(exc)
        if "device id" in text or "transaction id" in text:
            raise FrameError(f"{where}: unexpected reply ({text})", device=device) from exc
        raise DeviceTimeout(f"{where}: no reply ({text})", device=device) from exc
    except TimeoutError as exc:
        raise DeviceTimeout(f"{where}: no reply in time", device=device) from exc
    except ModbusException as exc:
        raise TransportError(f"{where}: {exc}", device=device) from exc
    except OSError as exc:
        raise DeviceUnavailable(f"{where}: {exc}", device=device) from exc


def check_response(
    response: Any, *, device: str, function: str, address: int, count: int | None = None
) -> Any:
    """Return ``response``, or raise when it is a Modbus exception response (``isError()``).

    Args:
        response: the PDU pymodbus returned.
        device: the device name.
        function: the request's function name.
        address: the request's first address.
        count: the number of registers or bits asked for, if any.

    Raises:
        ModbusExceptionResponse: the device answered with an exception code.
        FrameError: pymodbus returned nothing (no PDU) where a reply was expected.
    """
    where = request_label(device, function, address, count)
    if response is None:
        raise FrameError(f"{where}: no reply PDU", device=device)
    if response.isError():
        code = int(getattr(response, "exception_code", 0))
        name = EXCEPTION_CODE_NAMES.get(code, "unknown exception code")
        raise ModbusExceptionResponse(
            f"{where}: exception code {code} ({name})",
            device=device,
            function=function,
            address=address,
            code=code,
        )
    return response
