"""A shared physical line: one request in flight, a gap between frames, fair turns.

Devices on one RS-485 line, or behind one Modbus TCP gateway in front of RTU devices, must never
talk over each other, and many devices need a silent gap between frames (Modbus RTU: at least
3.5 characters; quirky devices: 30 ms or more). Every device on the line takes a :meth:`Bus.turn`
around each request/response exchange.

Fairness: ``asyncio.Lock`` hands the line to waiters in the order they asked, so a device that
polls often cannot starve one that polls rarely. The time a turn waited is reported to
observers (the exporter's ``gatebeat_bus_wait_seconds`` histogram) and, since the tick is
waiting too, it shows up in the tick's duration rather than disappearing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

__all__ = ["Bus", "BusWaitObserver", "rtu_silence_seconds"]

BusWaitObserver = Callable[[str, str, float], None]
"""Called with (bus name, device name, seconds waited) for every turn."""


def rtu_silence_seconds(baudrate: int, *, bits_per_char: int = 11) -> float:
    """The Modbus RTU inter-frame silence (3.5 characters) at ``baudrate``, in seconds.

    Above 19200 baud the Modbus spec fixes it at 1.75 ms.
    """
    if baudrate <= 0:
        raise ValueError(f"baudrate must be > 0, got {baudrate!r}")
    if baudrate > 19200:
        return 0.00175
    return 3.5 * bits_per_char / baudrate


class Bus:
    """One shared line.

    Args:
        name: the bus name (the ``bus`` label).
        gap: seconds of silence enforced between the end of one exchange and the next (>= 0).
    """

    def __init__(self, name: str, *, gap: float = 0.0) -> None:
        if not gap >= 0:
            raise ValueError(f"bus {name!r}: gap must be >= 0 seconds, got {gap!r}")
        self.name = name
        self.gap = gap
        self._lock = asyncio.Lock()
        self._released_at = -float("inf")
        self._observers: list[BusWaitObserver] = []

    def add_observer(self, observer: BusWaitObserver) -> None:
        self._observers.append(observer)

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    @contextlib.asynccontextmanager
    async def turn(self, device: str) -> AsyncIterator[float]:
        """Hold the line for one exchange; yields the seconds this turn waited for it."""
        loop = asyncio.get_running_loop()
        asked = loop.time()
        async with self._lock:
            quiet_until = self._released_at + self.gap
            now = loop.time()
            if now < quiet_until:
                await asyncio.sleep(quiet_until - now)
            waited = loop.time() - asked
            for observer in self._observers:
                observer(self.name, device, waited)
            try:
                yield waited
            finally:
                self._released_at = loop.time()
