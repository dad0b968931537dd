"""Shared fixtures for the whole test suite (keep this file small)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _current_event_loop() -> Iterator[None]:
    """Give pytest-asyncio a current loop to save and restore (pytest-asyncio issue #724).

    Without one, pytest-asyncio 1.5 creates a loop it never closes, and its ResourceWarning
    fails a later test under ``filterwarnings = error``.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    asyncio.set_event_loop(None)
    loop.close()


@pytest.fixture
def stall() -> Callable[[float], None]:
    """Return ``stall(seconds)``: block the running loop for ``seconds`` of virtual time.

    Only for ``@pytest.mark.looptime`` tests. It stands for a synchronous call that hogs the
    loop (a blocking driver, a slow ``json.dumps``): called from a synchronous callback, the
    loop's clock jumps forward while nothing else can run. It moves looptime's clock with its
    public ``setup_looptime(start=...)`` (forward only, so no ``TimeWarning``).
    """

    def advance(seconds: float) -> None:
        loop = asyncio.get_running_loop()
        setup = getattr(loop, "setup_looptime", None)
        if setup is None or not getattr(loop, "looptime_on", False):
            raise RuntimeError("stall() needs a test marked @pytest.mark.looptime")
        setup(start=loop.time() + seconds)

    return advance
