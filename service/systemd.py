"""systemd's notify protocol: ``READY=1`` after start-up, ``WATCHDOG=1`` only while healthy.

When systemd runs gatebeat with ``Type=notify`` and ``WatchdogSec=``, it sets ``NOTIFY_SOCKET``
(and ``WATCHDOG_USEC``). Sending ``WATCHDOG=1`` from a timer alone would prove only that the
loop turns; gatebeat sends it only while its health check passes (heartbeats fresh, loop lag
low), so systemd restarts a service that runs but no longer does its work. No dependency: the
protocol is one datagram per message on a Unix socket.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

__all__ = ["SystemdNotifier"]


class SystemdNotifier:
    """Sends notify messages when ``NOTIFY_SOCKET`` is set; does nothing otherwise.

    Args:
        environ: where to read ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` (default ``os.environ``).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        if address:
            self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_interval: float | None = int(usec) / 1e6 if usec.isdigit() else None
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given."""
        return self._address is not None

    def notify(self, message: str) -> bool:
        """Send ``message`` (e.g. ``"READY=1"``); returns whether it was sent."""
        if self._address is None:
            return False
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._socket.sendto(message.encode(), self._address)
        except OSError:
            return False
        return True

    def ready(self) -> bool:
        return self.notify("READY=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self, healthy: bool) -> bool:
        """Send ``WATCHDOG=1`` if ``healthy``; an unhealthy service stays silent on purpose."""
        return self.notify("WATCHDOG=1") if healthy else False

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
