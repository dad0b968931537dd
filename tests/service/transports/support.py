"""Helpers for the transport tests: bounded retries while a session backs off."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

from service.transports.errors import DeviceUnavailable

T = TypeVar("T")

NEXT_ATTEMPT = re.compile(r"not answering, next attempt in (\d+\.\d{3}) s")


async def once_due(attempt: Callable[[], Awaitable[T]], *, within: float = 3.0) -> T:
    """Repeat ``attempt`` while it fails fast with DeviceUnavailable (backing off), for at most
    ``within`` seconds; return its result or let any other error through."""
    async with asyncio.timeout(within):
        while True:
            try:
                return await attempt()
            except DeviceUnavailable:
                await asyncio.sleep(0.01)


def next_attempt_in(error: DeviceUnavailable) -> float:
    """The seconds until the next attempt that a fail-fast error announces."""
    found = NEXT_ATTEMPT.search(str(error))
    assert found is not None, str(error)
    return float(found.group(1))
