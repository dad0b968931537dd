"""The asyncio protocol under a serial line session: a byte buffer and one waiting reader.

:class:`~service.transports.serial.SerialLineSession` frames replies out of this buffer; the
protocol only collects bytes (dropping them all when more than its cap piles up unread), notes
when they last arrived (loop time, for resynchronisation), tracks write flow control, and wakes
the reader.
"""

from __future__ import annotations

import asyncio

__all__ = ["BUFFER_CAP_MIN", "LineProtocol"]

BUFFER_CAP_MIN = 64 * 1024
"""Bytes kept unread at most (or 4 x ``max_frame_length``) before the buffer is dropped."""


class LineProtocol(asyncio.Protocol):
    """Collects received bytes and wakes the one reader waiting for them."""

    def __init__(self, cap: int) -> None:
        self.buffer = bytearray()
        self.overflowed = False
        self.lost: BaseException | None = None
        self.transport: asyncio.BaseTransport | None = None
        self.last_received = -float("inf")
        self._cap = cap
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.last_received = asyncio.get_running_loop().time()
        if len(self.buffer) > self._cap:
            self.buffer.clear()
            self.overflowed = True
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc if exc is not None else ConnectionError("port closed")
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        if self._drained is None or self._drained.done():
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def wait_received(self) -> None:
        """Wait until more bytes arrive or the port is lost."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def wait_drained(self) -> None:
        """Wait until the transport's write buffer is empty (or the port is lost)."""
        if self._drained is not None:
            await asyncio.shield(self._drained)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
