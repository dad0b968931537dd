"""systemd notify messages over a real datagram socket."""

from __future__ import annotations

import socket
from pathlib import Path

from service.systemd import SystemdNotifier


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    assert notifier.ready() is False


def test_ready_watchdog_and_stopping_arrive_on_the_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(5)
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    try:
        assert notifier.watchdog_interval == 2.0
        assert notifier.ready()
        assert notifier.watchdog(healthy=True)
        assert notifier.watchdog(healthy=False) is False
        assert notifier.stopping()
        received = [receiver.recv(256) for _ in range(3)]
    finally:
        notifier.close()
        receiver.close()
    assert received == [b"READY=1", b"WATCHDOG=1", b"STOPPING=1"]


def test_abstract_socket_address() -> None:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0gatebeat-test-notify")
    receiver.settimeout(5)
    notifier = SystemdNotifier({"NOTIFY_SOCKET": "@gatebeat-test-notify"})
    try:
        assert notifier.ready()
        assert receiver.recv(64) == b"READY=1"
    finally:
        notifier.close()
        receiver.close()
