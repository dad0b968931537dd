"""Stop signals that arrive before the event loop exists: end start-up at once, cleanly.

As PID 1 (a container without ``--init``) a signal whose action is the default is dropped by
the kernel, so a SIGTERM during imports or the config load (about half a second) was lost and
``docker stop`` waited its whole grace period for a SIGKILL. :func:`install_early` is called
first thing by the ``gatebeat`` command: until the runner installs its own loop handlers,
SIGTERM, SIGINT and SIGHUP raise :class:`StopBeforeStart`, which the CLI turns into a log line
and its usual exit status. Library users (tests, ``serve()`` in-process) are not affected.
"""

from __future__ import annotations

import signal
from types import FrameType

__all__ = ["STOP_SIGNALS", "StopBeforeStart", "install_early"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""Signals that stop gatebeat cleanly (SIGHUP too: no config reload, see docs/reliability.md)."""


class StopBeforeStart(BaseException):
    """A stop signal arrived before the service was running; nothing needs shutting down.

    A ``BaseException`` like ``KeyboardInterrupt``: no ``except Exception`` on the way
    (driver discovery, settings validation) may swallow it.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"{self.name} before start-up finished")


def install_early() -> None:
    """Make SIGTERM, SIGINT and SIGHUP raise :class:`StopBeforeStart` (main thread only)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise)


def _raise(signum: int, frame: FrameType | None) -> None:
    raise StopBeforeStart(signum)
