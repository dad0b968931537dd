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
    "FUNCTION_CODES",
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

FUNCTION_CODES: dict[str, int] = {
    "read_coils": 1,
    "read_discrete_inputs": 2,
    "read_holding_registers": 3,
    "read_input_registers": 4,
    "write_coil": 5,
    "write_register": 6,
    "write_coils": 15,
    "write_registers": 16,
}
"""The Modbus function code of each request the sessions send (by pymodbus method name)."""


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
    response: Any,
    *,
    device: str,
    function: str,
    address: int,
    count: int | None = None,
    unit: int | None = None,
) -> Any:
    """Return ``response`` if it answers the request; raise when it does not, or when it is a
    Modbus exception response (``isError()``).

    A reply must carry the request's function code (plus 0x80 for an exception response) and,
    unless the request was a broadcast (unit 0), the request's unit id: RTU frames have no
    transaction id, so a late reply to an earlier request, or another unit's, is told apart only
    by these.

    Args:
        response: the PDU pymodbus returned.
        device: the device name.
        function: the request's function name (``"read_holding_registers"``, ...).
        address: the request's first address.
        count: the number of registers or bits asked for, if any.
        unit: the request's unit id; ``None`` skips the unit check.

    Raises:
        FrameError: no reply PDU, a reply for another function code or unit id, or a read reply
            with another number of registers (bytes of bits) than ``count`` asks for.
        ModbusExceptionResponse: the device answered with an exception code.
    """
    where = request_label(device, function, address, count)
    if response is None:
        raise FrameError(f"{where}: no reply PDU", device=device)
    expected = FUNCTION_CODES.get(function)
    got = getattr(response, "function_code", None)
    if expected is not None and isinstance(got, int) and got & 0x7F != expected:
        raise FrameError(
            f"{where}: reply has function code {got & 0x7F}, the request had {expected} "
            f"(a late reply to an earlier request, or noise)",
            device=device,
        )
    replied_unit = getattr(response, "dev_id", None)
    if unit and isinstance(replied_unit, int) and replied_unit != unit:
        raise FrameError(
            f"{where}: reply comes from unit id {replied_unit}, the request went to unit {unit}",
            device=device,
        )
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
    if count is not None and expected in (3, 4):
        registers = len(getattr(response, "registers", ()))
        if registers != count:
            raise FrameError(
                f"{where}: asked for {count} registers, got {registers}", device=device
            )
    if count is not None and expected in (1, 2):
        data_bytes = (len(getattr(response, "bits", ())) + 7) // 8  # bits come in whole bytes
        if data_bytes != (count + 7) // 8:
            raise FrameError(
                f"{where}: asked for {count} bits ({(count + 7) // 8} bytes), got {data_bytes} "
                f"bytes",
                device=device,
            )
    return response
