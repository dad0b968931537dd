"""Modbus sessions: one per device, over a link shared with the other devices behind it.

A :class:`ModbusSession` reads register specs (grouped into as few requests as the protocol
allows) and writes only what the config declared writable. Every request/response exchange
happens inside ``bus.turn(device)`` of the shared bus, so devices on one line never interleave
and the bus gap is kept; ``request_gap`` additionally spaces requests to this one device.

A device that stops answering is backed off on its own (requests fail fast with
``DeviceUnavailable`` until its next attempt is due), so a dead unit on a shared line costs the
other units one timeout per backoff step, not one per poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from service.bus import Bus, rtu_silence_seconds
from service.driver import Readings, Value
from service.transports.backoff import Backoff
from service.transports.errors import (
    DeviceTimeout,
    DeviceUnavailable,
    FrameError,
    WriteRefused,
    check_response,
    modbus_errors,
    request_label,
)
from service.transports.modbus_link import ModbusLink, link_for, release
from service.transports.modbus_plan import READ_FUNCTION, ReadRequest, plan_reads
from service.transports.modbus_settings import (
    ModbusRtuOverTcpSettings,
    ModbusRtuSettings,
    ModbusSettings,
    ModbusTcpSettings,
)
from service.values import RegisterSpec, Table, decode, encode

__all__ = [
    "ModbusRtuOverTcpSettings",
    "ModbusRtuSettings",
    "ModbusSession",
    "ModbusSettings",
    "ModbusTcpSettings",
    "bus_name",
    "default_gap",
]

log = logging.getLogger("gatebeat.transports.modbus")

WRITABLE_TABLES: frozenset[str] = frozenset({"holding", "coil"})


def bus_name(settings: ModbusSettings) -> str:
    """The bus a device is on: ``settings.bus``, else ``"tcp:HOST:PORT"`` / ``"serial:PORT"``."""
    if settings.bus:
        return settings.bus
    if isinstance(settings, ModbusRtuSettings):
        return f"serial:{settings.port}"
    return f"tcp:{settings.host}:{settings.port}"


def default_gap(settings: ModbusSettings) -> float:
    """Seconds of silence the bus keeps between frames: ``settings.gap``, else the default.

    The default is the RTU inter-frame silence (3.5 characters) on a serial line and 0 over TCP.
    """
    if settings.gap is not None:
        return settings.gap
    if isinstance(settings, ModbusRtuSettings):
        return rtu_silence_seconds(settings.baudrate)
    return 0.0


class ModbusSession:
    """One device's view of its Modbus link.

    Args:
        settings: the device's transport settings.
        device: the device name (in every error message).
        unit_id: the Modbus unit (device) id; ``None`` means 1.
        bus: the shared bus of the link (one per physical line or gateway).
        read_only: refuse every write with ``WriteRefused``.
        writable: ``(table, address)`` pairs writes may go to (see :meth:`allow_write`).
    """

    def __init__(
        self,
        settings: ModbusSettings,
        *,
        device: str,
        unit_id: int | None,
        bus: Bus,
        read_only: bool = False,
        writable: Iterable[tuple[str, int]] = (),
    ) -> None:
        if unit_id is not None and not 0 <= unit_id <= 255:
            raise ValueError(f"device {device!r}: unit_id must be 0..255, got {unit_id!r}")
        self.settings = settings
        self.device = device
        self.unit_id = 1 if unit_id is None else unit_id
        self.bus = bus
        self.read_only = read_only
        self._writable: set[tuple[str, int]] = set()
        self._sealed = False
        for table, address in writable:
            self.allow_write(table, address)
        self._link: ModbusLink = link_for(bus, settings, device=device)
        self._backoff = Backoff(
            first=settings.reconnect_delay,
            cap=max(settings.reconnect_delay_max, settings.reconnect_delay),
            jitter=settings.reconnect_jitter,
        )
        self._plans: dict[tuple[RegisterSpec, ...], list[ReadRequest]] = {}
        self._last_end = -float("inf")
        self._silent = False
        self._closed = False
        self.requests_sent = 0
        """Requests put on the line by this session (for tests and benchmarks)."""

    # -- writes allowed -------------------------------------------------------------------

    def allow_write(self, table: str, address: int, count: int = 1) -> None:
        """Declare ``count`` addresses from ``address`` of ``table`` writable.

        Raises:
            ValueError: the table cannot be written (input registers, discrete inputs) or the
                address is out of range.
            WriteRefused: the session is sealed and the addresses were not declared before.
        """
        if table not in WRITABLE_TABLES:
            raise ValueError(
                f"device {self.device!r}: table {table!r} cannot be written "
                f"(only holding registers and coils)"
            )
        if not (address >= 0 and address + count - 1 <= 65535 and count >= 1):
            raise ValueError(f"device {self.device!r}: address {address} (count {count}) invalid")
        if self._sealed and not self.is_writable(table, address, count):
            raise WriteRefused(
                f"device {self.device!r}: {table} {address} (count {count}) was not declared "
                f"writable before start (the driver's writable() or the config declares writes)",
                device=self.device,
            )
        self._writable.update((table, a) for a in range(address, address + count))

    def seal_writes(self) -> None:
        """Freeze the set of writable addresses: from now on :meth:`allow_write` only accepts
        addresses already declared (the framework seals a session once the driver's
        ``writable()`` declarations are in, so no code path can open new ones at run time)."""
        self._sealed = True

    def is_writable(self, table: str, address: int, count: int = 1) -> bool:
        """True when every address of the block was declared writable (ignores read-only)."""
        return all((table, a) in self._writable for a in range(address, address + count))

    # -- reads ----------------------------------------------------------------------------

    def plan(self, specs: Sequence[RegisterSpec]) -> list[ReadRequest]:
        """The read requests :meth:`read` sends for ``specs`` (cached per spec tuple)."""
        key = tuple(specs)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = plan_reads(
                key,
                max_fill=self.settings.max_fill,
                one_request_per_field=self.settings.one_request_per_field,
            )
        return plan

    async def read(self, specs: Sequence[RegisterSpec]) -> Readings:
        """Read and decode ``specs`` in as few requests as allowed; returns field -> value.

        Raises:
            TransportError: any request failed (no partial readings are returned).
            ValueDecodeError: registers could not be decoded for a field.
        """
        readings: Readings = {}
        for request in self.plan(specs):
            raw = await self.read_raw(request.table, request.address, request.count)
            for spec in request.specs:
                readings[spec.field] = decode(spec, request.slice(raw, spec))
        return readings

    async def read_raw(self, table: Table, address: int, count: int) -> list[int] | list[bool]:
        """Read ``count`` registers (or bits) of ``table`` from ``address`` in one request.

        Raises:
            TransportError: the request failed; see ``service.transports.errors``.
        """
        function = READ_FUNCTION[table]
        unit = self.unit_id

        def call(client: Any) -> Awaitable[Any]:
            return getattr(client, function)(address, count=count, device_id=unit)  # type: ignore[no-any-return]

        response = await self._exchange(function, address, count, call)
        if table in ("coil", "discrete"):
            return list(response.bits[:count])  # length checked by check_response
        return list(response.registers)

    # -- writes ---------------------------------------------------------------------------

    async def write(self, table: str, address: int, value: int | bool | Sequence[int]) -> None:
        """Write one value (or consecutive values) to a declared holding register or coil.

        Args:
            table: ``"holding"`` or ``"coil"``.
            address: the first address.
            value: a register value 0..65535 (holding), a bool (coil), or a sequence of them.

        Raises:
            WriteRefused: the device is read-only, or an address was not declared writable.
            ValueError: a register value is outside 0..65535.
            TransportError: the write failed on the line.
        """
        values = list(value) if isinstance(value, Sequence) else [value]
        if not values:
            raise ValueError(f"device {self.device!r}: nothing to write to {table} {address}")
        self._check_writable(table, address, len(values))
        unit = self.unit_id
        call: Callable[[Any], Awaitable[Any]]
        if table == "coil":
            bits = [bool(v) for v in values]
            if len(bits) == 1:
                function = "write_coil"

                def call(c: Any) -> Awaitable[Any]:
                    return c.write_coil(address, bits[0], device_id=unit)  # type: ignore[no-any-return]
            else:
                function = "write_coils"

                def call(c: Any) -> Awaitable[Any]:
                    return c.write_coils(address, bits, device_id=unit)  # type: ignore[no-any-return]
        else:
            registers = [int(v) for v in values]
            for offset, reg in enumerate(registers):
                if not 0 <= reg <= 0xFFFF:
                    raise ValueError(
                        f"device {self.device!r}: value {reg!r} for holding "
                        f"{address + offset} is outside 0..65535"
                    )
            if len(registers) == 1:
                function = "write_register"

                def call(c: Any) -> Awaitable[Any]:
                    return c.write_register(address, registers[0], device_id=unit)  # type: ignore[no-any-return]
            else:
                function = "write_registers"

                def call(c: Any) -> Awaitable[Any]:
                    return c.write_registers(address, registers, device_id=unit)  # type: ignore[no-any-return]

        await self._exchange(function, address, len(values), call)

    async def write_value(self, spec: RegisterSpec, value: Value) -> None:
        """Encode ``value`` per ``spec`` (scale, type, orders) and write it.

        Raises:
            WriteRefused: read-only device, table not writable, or address not declared.
            ValueDecodeError: the value does not fit the spec's type.
            TransportError: the write failed on the line.
        """
        self._check_writable(spec.table, spec.address, spec.count)
        registers = encode(spec, value)
        if spec.table == "coil":
            await self.write("coil", spec.address, bool(registers[0]))
        else:
            await self.write(
                spec.table, spec.address, registers if spec.count > 1 else registers[0]
            )

    def _check_writable(self, table: str, address: int, count: int) -> None:
        what = f"{table} {address}" + (f" (count {count})" if count != 1 else "")
        if self.read_only:
            raise WriteRefused(
                f"device {self.device!r}: read-only, refusing write to {what}", device=self.device
            )
        if table not in WRITABLE_TABLES:
            raise WriteRefused(
                f"device {self.device!r}: table {table!r} cannot be written (write to {what})",
                device=self.device,
            )
        if not self.is_writable(table, address, count):
            raise WriteRefused(
                f"device {self.device!r}: {what} is not declared writable", device=self.device
            )

    # -- the exchange ---------------------------------------------------------------------

    async def _exchange(
        self,
        function: str,
        address: int,
        count: int,
        call: Callable[[Any], Awaitable[Any]],
    ) -> Any:
        loop = asyncio.get_running_loop()
        if self._closed:
            raise DeviceUnavailable(f"device {self.device!r}: session closed", device=self.device)
        if self._backoff.backing_off(loop.time()):
            wait = self._backoff.retry_at - loop.time()
            raise DeviceUnavailable(
                f"device {self.device!r}: {function} at address {address}: not answering, "
                f"next attempt in {wait:.3f} s",
                device=self.device,
            )
        await self._keep_request_gap(loop)
        async with self.bus.turn(self.device):
            client = await self._link.client(
                self.device, connect_within=self.settings.timeout + 1.0
            )
            await self._keep_request_gap(loop)
            try:
                response = await self._attempts(client, function, address, count, call)
                self._answered()
                return check_response(
                    response,
                    device=self.device,
                    function=function,
                    address=address,
                    count=count,
                    unit=self.unit_id,
                )
            except DeviceTimeout:
                self._backoff.failed(loop.time())
                if not self._silent:
                    self._silent = True
                    log.warning("device %s stopped answering; backing off", self.device)
                raise
            except DeviceUnavailable:
                self._link.drop()
                raise
            except (FrameError, asyncio.CancelledError):
                # The reply to this request may still be on its way (RTU: no transaction id).
                self._link.reply_lost(quiet=self.settings.timeout)
                raise
            finally:
                self._last_end = loop.time()

    def _answered(self) -> None:
        """The device replied: end its backoff, and log once that it answers again."""
        if self._silent:
            self._silent = False
            log.info("device %s answers again", self.device)
        self._backoff.succeeded()

    async def _attempts(
        self,
        client: Any,
        function: str,
        address: int,
        count: int,
        call: Callable[[Any], Awaitable[Any]],
    ) -> Any:
        """Send the request up to ``retries + 1`` times, each bounded by this device's
        ``timeout`` (seconds), and return the first reply; call inside the bus turn.

        The link is shared with devices whose timeout and retries may differ, so the attempts
        are counted and timed here rather than by pymodbus (whose client serves them all).

        Raises:
            DeviceTimeout: no attempt got a reply in time.
            TransportError: any other failure (not retried).
        """
        timeout = self.settings.timeout
        attempts = self.settings.retries + 1
        last: Exception | None = None
        try:
            for _ in range(attempts):
                self.requests_sent += 1
                try:
                    async with asyncio.timeout(timeout):
                        with modbus_errors(self.device, function, address=address, count=count):
                            return await call(client)
                except (TimeoutError, DeviceTimeout) as exc:
                    last = exc
            label = request_label(self.device, function, address, count)
            raise DeviceTimeout(
                f"{label}: no reply within {timeout} s "
                f"({attempts} attempt(s), retries {attempts - 1})",
                device=self.device,
            ) from last
        finally:
            if last is not None:
                # A given-up attempt's reply may still come. During a retry of the same
                # request it is a fine answer; after the last attempt it must not be taken for
                # the next request's: the link resyncs first (RTU only).
                self._link.reply_lost(quiet=timeout)

    async def _keep_request_gap(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.settings.request_gap:
            wait = self._last_end + self.settings.request_gap - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)

    async def close(self) -> None:
        """Release the link; the last session on it closes the connection. Idempotent."""
        if not self._closed:
            self._closed = True
            release(self.bus, self._link, device=self.device)
