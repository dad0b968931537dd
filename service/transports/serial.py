"""Line-oriented serial transport: send a command, read one reply frame (pyserial-asyncio).

A reply frame ends with a terminator (``"\\r\\n"`` by default) or has a fixed length
(``frame_length`` bytes). Every exchange happens inside the device's :meth:`Bus.turn`, so devices
sharing one RS-485 line never talk over each other.

Line protocols carry no transaction ids, so the session resynchronises by itself:

- input that arrives between exchanges is stale (a late reply, noise) and is discarded before
  each request;
- after a timeout, a cancelled request or a framing error, the next request first waits for the
  line to go quiet (``resync_quiet`` seconds without a byte since the failure, bounded by
  ``timeout``), so the tail of a late or garbled reply is not taken for the next answer. A reply
  later than ``timeout + resync_quiet`` can still be mistaken for the next one: no line protocol
  without ids can tell; raise ``timeout`` for slow devices;
- a frame longer than ``max_frame_length`` raises :class:`FrameError` and the buffer is dropped.

The port opens lazily on the first request. When it disappears (a USB adapter unplugged, a
simulator stopped) the session closes it and reopens it on a later request; failed opens back off
exponentially (``reconnect_delay`` doubling up to ``reconnect_delay_max``, shortened by up to
``reconnect_jitter``), and requests made while backing off fail at once with
:class:`DeviceUnavailable`. Nothing runs in the background, so an absent device costs no CPU.

A device that stops answering is backed off the same way, like a Modbus device: after a
``request`` or ``read_frame`` timed out, requests and frame reads fail at once with
:class:`DeviceUnavailable` (without taking a bus turn) until the next attempt is due, and the
first reply ends the backoff. So a dead device on a shared line costs the others one ``timeout``
per backoff step, not one per poll. ``send`` expects no reply and is not held back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import termios
from typing import Any, Self

import serial_asyncio

from service.bus import Bus
from service.transports.backoff import Backoff
from service.transports.errors import DeviceTimeout, DeviceUnavailable, FrameError
from service.transports.serial_protocol import BUFFER_CAP_MIN, LineProtocol
from service.transports.serial_settings import SerialSettings, bus_name, default_gap

__all__ = [
    "SerialLineSession",
    "SerialSettings",
    "bus_name",
    "default_gap",
]

log = logging.getLogger("gatebeat.transport.serial")


class SerialLineSession:
    """One device's conversation on a serial line: command out, one reply frame back.

    Args:
        settings: the device's serial settings.
        device: the device name, used in errors and logs.
        bus: the bus the device shares (see :func:`bus_name`, :func:`default_gap`).
    """

    def __init__(self, settings: SerialSettings, *, device: str, bus: Bus) -> None:
        self.settings = settings
        self.device = device
        self.bus = bus
        self._terminator = settings.terminator.encode(settings.encoding)
        self._protocol: LineProtocol | None = None
        self._transport: Any = None
        self._lock = asyncio.Lock()
        self._backoff = Backoff(
            first=settings.reconnect_delay,
            cap=settings.reconnect_delay_max,
            jitter=settings.reconnect_jitter,
        )
        """When the port may be opened again after a failed open."""
        self._silence = Backoff(
            first=settings.reconnect_delay,
            cap=settings.reconnect_delay_max,
            jitter=settings.reconnect_jitter,
        )
        """When a device that stopped answering is tried again."""
        self._down = False
        self._silent = False
        self._closed = False
        self._needs_resync = False
        self._failed_at = -float("inf")
        self._last_exchange = -float("inf")

    @property
    def connected(self) -> bool:
        """Whether the port is open now."""
        return self._protocol is not None and self._protocol.lost is None

    async def request(self, command: bytes | str) -> str:
        """Write ``command`` as given and return the next reply frame, without its terminator.

        Args:
            command: the bytes to send; a ``str`` is encoded with ``encoding``. Nothing is
                appended: include the command's own terminator (``"READ?\\r\\n"``).

        Raises:
            DeviceUnavailable: the port cannot be opened, is backing off, or was lost; or the
                device stopped answering and its next attempt is not due yet.
            DeviceTimeout: no complete reply within ``timeout`` seconds (starts the backoff).
            FrameError: the reply is longer than ``max_frame_length`` or cannot be decoded.
        """
        data = self._encode(command, "request")
        async with self._lock:
            await self._ensure_open("request", data)
            await self._pace()
            async with self.bus.turn(self.device):
                try:
                    await self._resync("request", data)
                    async with asyncio.timeout(self.settings.timeout):
                        await self._write(data)
                        reply = await self._read_frame("request", data)
                except asyncio.CancelledError:
                    self._mark_resync()  # a reply may still be on its way
                    raise
                except TimeoutError as exc:
                    self._mark_resync()
                    raise self._timed_out(f"request {data!r}", "reply") from exc
                finally:
                    self._last_exchange = asyncio.get_running_loop().time()
                self._answered()
                return reply

    async def send(self, data: bytes | str) -> None:
        """Write ``data`` inside a bus turn without waiting for a reply.

        A device that stopped answering does not hold ``send`` back (nothing waits for it).

        Raises:
            DeviceUnavailable: the port cannot be opened, is backing off, or was lost.
            DeviceTimeout: the bytes could not be written within ``timeout`` seconds.
        """
        raw = self._encode(data, "send")
        async with self._lock:
            await self._ensure_open("send", raw, expects_reply=False)
            await self._pace()
            async with self.bus.turn(self.device):
                try:
                    async with asyncio.timeout(self.settings.timeout):
                        await self._write(raw)
                except TimeoutError as exc:
                    raise DeviceTimeout(
                        f"device {self.device!r}: send {raw!r}: not written within "
                        f"{self.settings.timeout} s",
                        device=self.device,
                    ) from exc
                finally:
                    self._last_exchange = asyncio.get_running_loop().time()

    async def read_frame(self) -> str:
        """Return the next frame the device sends by itself (no command, no bus turn).

        Raises:
            DeviceUnavailable: the port cannot be opened, is backing off, or was lost; or the
                device stopped answering and its next attempt is not due yet.
            DeviceTimeout: no complete frame within ``timeout`` seconds (starts the backoff).
            FrameError: the frame is too long or cannot be decoded.
        """
        async with self._lock:
            await self._ensure_open("read_frame", None)
            try:
                async with asyncio.timeout(self.settings.timeout):
                    frame = await self._read_frame("read_frame", None)
            except TimeoutError as exc:
                raise self._timed_out("read_frame", "frame") from exc
            self._answered()
            return frame

    async def close(self) -> None:
        """Close the port; later requests fail with :class:`DeviceUnavailable`. Idempotent."""
        self._closed = True
        self._drop_port()

    # -- connection ---------------------------------------------------------------------

    async def _ensure_open(
        self, function: str, data: bytes | None, *, expects_reply: bool = True
    ) -> None:
        what = function if data is None else f"{function} {data!r}"
        if self._closed:
            raise DeviceUnavailable(
                f"device {self.device!r}: {what}: session closed", device=self.device
            )
        now = asyncio.get_running_loop().time()
        if expects_reply and self._silence.backing_off(now):
            raise DeviceUnavailable(
                f"device {self.device!r}: {what}: not answering, next attempt in "
                f"{self._silence.retry_at - now:.3f} s",
                device=self.device,
            )
        if self.connected:
            return
        self._drop_port()
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now < self._backoff.retry_at:
            raise DeviceUnavailable(
                f"device {self.device!r}: {what}: port {self.settings.port!r} offline, next "
                f"attempt in {self._backoff.retry_at - now:.2f} s",
                device=self.device,
            )
        s = self.settings
        cap = max(BUFFER_CAP_MIN, 4 * s.max_frame_length)
        try:
            transport, protocol = await serial_asyncio.create_serial_connection(
                loop,
                lambda: LineProtocol(cap),
                s.port,
                baudrate=s.baudrate,
                parity=s.parity,
                stopbits=s.stopbits,
                bytesize=s.bytesize,
            )
        except (OSError, ValueError) as exc:
            delay = self._backoff.failed(loop.time())
            if not self._down:
                self._down = True
                log.warning(
                    "device %s: cannot open serial port %s (%s); retrying with backoff",
                    self.device,
                    s.port,
                    exc,
                    extra={"device": self.device},
                )
            raise DeviceUnavailable(
                f"device {self.device!r}: {what}: cannot open port {s.port!r} ({exc}); next "
                f"attempt in {delay:.2f} s",
                device=self.device,
            ) from exc
        transport.set_write_buffer_limits(high=0)
        self._transport = transport
        self._protocol = protocol
        self._backoff.succeeded()
        self._needs_resync = False
        if self._down:
            self._down = False
            log.info(
                "device %s: serial port %s reopened",
                self.device,
                s.port,
                extra={"device": self.device},
            )
        if s.connect_pause > 0:
            await asyncio.sleep(s.connect_pause)

    def _drop_port(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._transport = None
        self._protocol = None

    def _port_lost(self, function: str, data: bytes | None) -> DeviceUnavailable:
        """Close a lost port and return the error to raise; a later request reopens it."""
        exc = self._protocol.lost if self._protocol is not None else None
        self._drop_port()
        if not self._down:
            self._down = True
            log.warning(
                "device %s: serial port %s lost (%s)",
                self.device,
                self.settings.port,
                exc,
                extra={"device": self.device},
            )
        what = function if data is None else f"{function} {data!r}"
        return DeviceUnavailable(
            f"device {self.device!r}: {what}: port {self.settings.port!r} lost ({exc})",
            device=self.device,
        )

    # -- answers ------------------------------------------------------------------------

    def _timed_out(self, what: str, expected: str) -> DeviceTimeout:
        """Back the device off after no ``expected`` came in time; return the error to raise.

        The first timeout after a reply logs a warning; later ones (each retry that finds the
        device still silent) only lengthen the backoff.
        """
        wait = self._silence.failed(asyncio.get_running_loop().time())
        if not self._silent:
            self._silent = True
            log.warning(
                "device %s stopped answering; backing off (next attempt in %.3f s)",
                self.device,
                wait,
                extra={"device": self.device},
            )
        return DeviceTimeout(
            f"device {self.device!r}: {what}: no complete {expected} within "
            f"{self.settings.timeout} s (received {self._pending()!r})",
            device=self.device,
        )

    def _answered(self) -> None:
        """The device replied: end its backoff, and log once that it answers again."""
        if self._silent:
            self._silent = False
            log.info("device %s answers again", self.device, extra={"device": self.device})
        self._silence.succeeded()

    # -- exchange -----------------------------------------------------------------------

    def _encode(self, data: bytes | str, function: str) -> bytes:
        if isinstance(data, bytes):
            return data
        try:
            return data.encode(self.settings.encoding)
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"device {self.device!r}: {function}: {data!r} cannot be encoded as "
                f"{self.settings.encoding}"
            ) from exc

    async def _pace(self) -> None:
        gap = self.settings.request_gap
        if gap > 0:
            wait = self._last_exchange + gap - asyncio.get_running_loop().time()
            if wait > 0:
                await asyncio.sleep(wait)

    async def _resync(self, function: str, data: bytes) -> None:
        """Discard stale input; after an error, first wait (bounded) for the line to go quiet."""
        protocol = self._protocol
        assert protocol is not None
        if self._needs_resync:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.settings.timeout
            while protocol.lost is None:
                protocol.buffer.clear()
                quiet_at = max(protocol.last_received, self._failed_at) + self.settings.resync_quiet
                now = loop.time()
                if now >= quiet_at or now >= deadline:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(min(quiet_at, deadline)):
                        await protocol.wait_received()
            self._needs_resync = False
        protocol.buffer.clear()
        protocol.overflowed = False
        if protocol.lost is None:
            try:
                self._transport.serial.reset_input_buffer()
            except (OSError, termios.error) as exc:
                protocol.lost = exc  # unplugged before the loop noticed
                raise self._port_lost(function, data) from exc

    async def _write(self, data: bytes) -> None:
        protocol = self._protocol
        assert protocol is not None
        if protocol.lost is not None:
            raise self._port_lost("write", data)
        self._transport.write(data)
        await protocol.wait_drained()
        if protocol.lost is not None:
            raise self._port_lost("write", data)

    async def _read_frame(self, function: str, data: bytes | None) -> str:
        protocol = self._protocol
        assert protocol is not None
        while True:
            frame = self._take_frame(protocol, function, data)
            if frame is not None:
                return self._decode(frame, function, data)
            if protocol.lost is not None:
                raise self._port_lost(function, data)
            await protocol.wait_received()

    def _take_frame(
        self, protocol: LineProtocol, function: str, data: bytes | None
    ) -> bytes | None:
        buffer = protocol.buffer
        limit = self.settings.max_frame_length
        if protocol.overflowed:
            protocol.overflowed = False
            raise self._frame_error(
                function, data, f"more than max_frame_length {limit} bytes without a frame end"
            )
        length = self.settings.frame_length
        if length is not None:
            if len(buffer) < length:
                return None
            frame = bytes(buffer[:length])
            del buffer[:length]
            return frame
        end = buffer.find(self._terminator)
        if end < 0:
            if len(buffer) > limit + len(self._terminator):
                buffer.clear()
                raise self._frame_error(
                    function, data, f"more than max_frame_length {limit} bytes without a terminator"
                )
            return None
        frame = bytes(buffer[:end])
        del buffer[: end + len(self._terminator)]
        if len(frame) > limit:
            raise self._frame_error(
                function, data, f"frame of {len(frame)} bytes exceeds max_frame_length {limit}"
            )
        return frame

    def _decode(self, frame: bytes, function: str, data: bytes | None) -> str:
        try:
            return frame.decode(self.settings.encoding)
        except UnicodeDecodeError:
            raise self._frame_error(
                function, data, f"reply {frame[:40]!r} is not {self.settings.encoding}"
            ) from None

    def _mark_resync(self) -> None:
        """Make the next request first wait for ``resync_quiet`` seconds of silence."""
        self._needs_resync = True
        self._failed_at = asyncio.get_running_loop().time()

    def _frame_error(self, function: str, data: bytes | None, why: str) -> FrameError:
        self._mark_resync()
        if self._protocol is not None:
            self._protocol.buffer.clear()
        what = function if data is None else f"{function} {data!r}"
        return FrameError(f"device {self.device!r}: {what}: {why}", device=self.device)

    def _pending(self) -> bytes:
        return bytes(self._protocol.buffer[:40]) if self._protocol is not None else b""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
