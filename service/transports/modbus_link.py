"""Physical Modbus links: one pymodbus client per TCP endpoint or serial port.

Every device reached through the same endpoint (a TCP gateway in front of RTU devices, one
RS-485 line) shares one :class:`ModbusLink`, and every exchange on it happens inside a turn of
the shared :class:`~service.bus.Bus`, so the link needs no lock of its own.

The link connects lazily, on the first request. pymodbus's own reconnect loop is switched off
(``reconnect_delay=0``) in favour of :class:`~service.transports.backoff.Backoff`: a failed
connect makes requests fail fast with ``DeviceUnavailable`` until the next attempt is due, so a
device that is offline at startup is retried for ever and blocks nobody.

Each device's ``timeout`` and ``retries`` apply to its own requests: pymodbus's client is built
with ``retries=0`` and a reply wait longer than any device's timeout (:attr:`ModbusLink.
wait_ceiling`), and the session bounds and repeats each attempt itself. Only what belongs to the
connection (line settings, reconnect bounds, ``connect_pause``) comes from the first device.

RTU frames carry no transaction id, so a reply that comes after its request was given up
(a timed-out attempt, a cancelled or mismatched exchange) would be taken for the answer to the
next request. After such a loss (:meth:`ModbusLink.reply_lost`) the next exchange on an RTU
link first waits until the line has been silent for the lost request's ``timeout`` (at most
``RESYNC_LIMIT`` times that), and pymodbus drops whatever arrives while no request is
outstanding; RTU over TCP also reconnects, which discards all the old connection still brings.
A reply later than that can still be mistaken when it has the same unit, function and length
(no RTU master can tell); the response checks (:func:`~service.transports.errors.
check_response`) catch the rest. Modbus TCP needs none of this: pymodbus skips replies whose
transaction id is not the one awaited.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.framer import FramerType

from service.bus import Bus
from service.transports.backoff import Backoff
from service.transports.errors import DeviceUnavailable, modbus_errors
from service.transports.modbus_settings import (
    ModbusRtuOverTcpSettings,
    ModbusRtuSettings,
    ModbusSettings,
)

__all__ = ["ModbusLink", "link_for", "link_key", "release"]

log = logging.getLogger("gatebeat.transports.modbus")

LINK_FIELDS: dict[str, tuple[str, ...]] = {
    "modbus-tcp": ("host", "port"),
    "modbus-rtu-over-tcp": ("host", "port"),
    "modbus-rtu": ("port", "baudrate", "parity", "stopbits", "bytesize"),
}
"""The settings that make a link: devices sharing one must agree on them."""
_links: weakref.WeakKeyDictionary[Bus, dict[str, ModbusLink]] = weakref.WeakKeyDictionary()


def link_key(settings: ModbusSettings) -> str:
    """The identity of the physical link (``"tcp:HOST:PORT"``, ``"serial:PORT"``)."""
    if isinstance(settings, ModbusRtuSettings):
        return f"serial:{settings.port}"
    return f"tcp:{settings.host}:{settings.port}"


WAIT_MARGIN = 1.0
"""Seconds pymodbus's own reply wait exceeds the longest device timeout on the link, so the
session's per-attempt timeout (the device's ``timeout``) always ends an attempt first."""

RESYNC_LIMIT = 2.0
"""The wait for silence after a lost RTU reply lasts at most this many times its quiet period
(a line that never goes quiet is noise, not a late reply: the response checks remain)."""


class ModbusLink:
    """One pymodbus client and its connection state, shared by the devices behind it.

    Args:
        settings: the settings of the first device opened on the link (its line settings,
            reconnect bounds and ``connect_pause`` apply to the whole link; ``timeout`` and
            ``retries`` stay per device, see :meth:`join`).
        key: the link's identity, see :func:`link_key`.
    """

    def __init__(self, settings: ModbusSettings, *, key: str) -> None:
        self.settings = settings
        self.key = key
        self.users = 0
        self.backoff = Backoff(
            first=settings.reconnect_delay,
            cap=max(settings.reconnect_delay_max, settings.reconnect_delay),
            jitter=settings.reconnect_jitter,
        )
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._client_wait = 0.0
        self._timeouts: dict[str, float] = {}
        self._down = False
        self._last_received = -float("inf")
        self._lost_at: float | None = None
        self._quiet = 0.0

    def join(self, device: str, timeout: float) -> None:
        """Count ``device`` as a user whose requests wait up to ``timeout`` seconds per attempt."""
        self.users += 1
        self._timeouts[device] = timeout

    def leave(self, device: str) -> None:
        """Drop one user (see :func:`release`)."""
        self.users -= 1
        self._timeouts.pop(device, None)

    @property
    def wait_ceiling(self) -> float:
        """Seconds pymodbus waits for a reply: the longest device timeout plus ``WAIT_MARGIN``.

        pymodbus must never end an attempt on its own: the session ends it after the
        requesting device's ``timeout``.
        """
        return max(self._timeouts.values(), default=self.settings.timeout) + WAIT_MARGIN

    @property
    def rtu(self) -> bool:
        """True when frames are RTU (serial line, or RTU over TCP): no transaction ids."""
        return isinstance(self.settings, ModbusRtuSettings | ModbusRtuOverTcpSettings)

    def reply_lost(self, *, quiet: float) -> None:
        """Note that a reply may still arrive for a request nobody awaits any more.

        On RTU the next exchange first waits for ``quiet`` seconds (the lost request's
        timeout) of silence, and RTU over TCP drops the connection now; on Modbus TCP this does
        nothing (transaction ids tell replies apart). Call it inside the bus turn.
        """
        if not self.rtu:
            return
        self._lost_at = asyncio.get_running_loop().time()
        self._quiet = max(self._quiet, quiet)
        if not isinstance(self.settings, ModbusRtuSettings):
            self.drop()

    def _traced(self, sending: bool, data: bytes) -> bytes:
        """pymodbus's packet hook: note when bytes last arrived (loop time)."""
        if not sending:
            self._last_received = asyncio.get_running_loop().time()
        return data

    async def _resync(self) -> None:
        """After a lost reply, wait until the line has been quiet long enough (bounded)."""
        if self._lost_at is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RESYNC_LIMIT * self._quiet
        while True:
            quiet_at = max(self._lost_at, self._last_received) + self._quiet
            now = loop.time()
            if now >= quiet_at or now >= deadline:
                break
            await asyncio.sleep(min(quiet_at, deadline) - now)
        if loop.time() < quiet_at:
            log.debug("Modbus link %s: not quiet after %.3f s; going on", self.key, self._quiet)
        self._lost_at = None
        self._quiet = 0.0

    @property
    def connected(self) -> bool:
        """True while the client holds an open connection."""
        return self._client is not None and self._client.connected

    def _make_client(self, wait: float) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        s = self.settings
        common: dict[str, Any] = {
            "timeout": wait,
            "retries": 0,  # the session repeats attempts with each device's own retries
            "reconnect_delay": 0,
            "reconnect_delay_max": 0,
            "trace_packet": self._traced,
        }
        if isinstance(s, ModbusRtuSettings):
            return AsyncModbusSerialClient(
                s.port,
                framer=FramerType.RTU,
                baudrate=s.baudrate,
                parity=s.parity,
                stopbits=s.stopbits,
                bytesize=s.bytesize,
                **common,
            )
        framer = FramerType.RTU if isinstance(s, ModbusRtuOverTcpSettings) else FramerType.SOCKET
        return AsyncModbusTcpClient(s.host, port=s.port, framer=framer, **common)

    async def client(
        self, device: str, *, connect_within: float
    ) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        """Return the connected client, connecting first when due; call inside a bus turn.

        After a lost reply on RTU this first waits for the line to go quiet (see
        :meth:`reply_lost`).

        Args:
            device: the device asking (named in errors).
            connect_within: seconds a connect may take (the device's ``timeout`` plus one).

        Raises:
            DeviceUnavailable: the link is backing off after a failure, or connecting failed.
        """
        if self._client is not None and self._client_wait < self.wait_ceiling:
            self.close()  # a device with a longer timeout joined: rebuild with a longer wait
        if self._client is None or not self._client.connected:
            await self._connect(device, connect_within)
        await self._resync()
        assert self._client is not None
        return self._client

    async def _connect(self, device: str, connect_within: float) -> None:
        loop = asyncio.get_running_loop()
        if self.backoff.backing_off(loop.time()):
            wait = self.backoff.retry_at - loop.time()
            raise DeviceUnavailable(
                f"device {device!r}: link {self.key} is down, next connect attempt in {wait:.3f} s",
                device=device,
            )
        if self._client is None:
            self._client_wait = self.wait_ceiling
            self._client = self._make_client(self._client_wait)
        with modbus_errors(device, f"connect to {self.key}"):
            async with asyncio.timeout(connect_within):
                ok = await self._client.connect()
        if not ok:
            wait = self.backoff.failed(loop.time())
            if not self._down:
                self._down = True
                log.warning("Modbus link %s is down; retrying with backoff", self.key)
            raise DeviceUnavailable(
                f"device {device!r}: cannot connect to {self.key}, next attempt in {wait:.3f} s",
                device=device,
            )
        self.backoff.succeeded()
        if self._down:
            self._down = False
            log.info("Modbus link %s is up again", self.key)
        if self.settings.connect_pause:
            await asyncio.sleep(self.settings.connect_pause)

    def drop(self) -> None:
        """Close the connection after an I/O failure, so the next request reconnects."""
        if self._client is not None:
            self._client.close()

    def close(self) -> None:
        """Close the client for good (the link may still be reopened lazily)."""
        if self._client is not None:
            self._client.close()
            self._client = None


def link_for(bus: Bus, settings: ModbusSettings, *, device: str) -> ModbusLink:
    """Return the link of ``settings`` on ``bus``, creating it on first use.

    Raises:
        ValueError: the link exists with different line settings (baud rate, parity, ...).
    """
    key = link_key(settings)
    links = _links.setdefault(bus, {})
    link = links.get(key)
    if link is None:
        link = links[key] = ModbusLink(settings, key=key)
    else:
        if link.settings.kind != settings.kind:
            raise ValueError(
                f"device {device!r}: {key} is already used as {link.settings.kind!r}, "
                f"not {settings.kind!r}"
            )
        for name in LINK_FIELDS[settings.kind]:
            mine, theirs = getattr(settings, name), getattr(link.settings, name)
            if mine != theirs:
                raise ValueError(
                    f"device {device!r}: {name} {mine!r} differs from {theirs!r} used by the "
                    f"other devices on {key}"
                )
    link.join(device, settings.timeout)
    return link


def release(bus: Bus, link: ModbusLink, *, device: str) -> None:
    """Drop ``device`` as a user of ``link``; the last one closes it."""
    link.leave(device)
    if link.users <= 0:
        link.close()
        links = _links.get(bus)
        if links is not None and links.get(link.key) is link:
            del links[link.key]
