"""A simulated line-oriented serial device on a pseudo-terminal, for tests and ``gatebeat demo``.

The simulator owns both ends of a pty: it reads commands from the master end and writes replies
there, and holds the slave end open so the line stays up while no client is connected. Clients
open :attr:`SerialSimulator.path`: the slave's ``/dev/pts/N`` name, or a stable symlink
(``link=``) that survives :meth:`SerialSimulator.restart`, which is how a USB adapter that is
unplugged and plugged back in looks to a client.

Replies come from a table (command -> reply) or a function (command -> reply or ``None`` for no
reply). A ``str`` reply gets the terminator appended; ``bytes`` are sent exactly as given (for
fixed-length frames or deliberately broken ones). Knobs that misbehave like real devices, all
changeable while running: ``delay`` (slow), ``silent`` (no replies), ``split``/``split_pause``
(a reply in several writes), and :meth:`SerialSimulator.inject` (garbage on the line at any time).

Example::

    async with SerialSimulator({"READ?": "21.5"}) as sim:
        ...  # open sim.path at any baud rate; "READ?\\r\\n" is answered with "21.5\\r\\n"
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import pty
import tty
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self

__all__ = [
    "Reply",
    "Responder",
    "SerialSimulator",
    "SimRequest",
    "serial_sensor_profile",
]

Reply = str | bytes | None
"""A reply: text (terminator appended), raw bytes (sent as is), or ``None`` (stay silent)."""

Responder = Mapping[str, str | bytes] | Callable[[str], Reply]
"""A table of command -> reply, or a function of the command (without its terminator)."""


@dataclass(slots=True)
class SimRequest:
    """One command the simulator received.

    Attributes:
        command: the command without its terminator (decoded, undecodable bytes replaced).
        received_at: loop time (seconds) the command's terminator arrived.
        replied_at: loop time the reply was fully handed to the line, or ``None``.
    """

    command: str
    received_at: float
    replied_at: float | None = None


class SerialSimulator:
    """A line device on a pseudo-terminal that answers commands.

    Args:
        responder: a table of command -> reply, or a function command -> reply.
        terminator: ends commands and is appended to text replies.
        encoding: text encoding of commands and replies.
        link: a symlink path kept pointing at the current pty (stable across restarts).
        unknown: reply to a command missing from a table (``None``: no reply).
        delay: seconds before each reply.
        silent: receive commands but never reply.
        split: send replies in chunks of this many bytes (``None``: in one write).
        split_pause: seconds between chunks.
    """

    def __init__(
        self,
        responder: Responder,
        *,
        terminator: str = "\r\n",
        encoding: str = "ascii",
        link: str | os.PathLike[str] | None = None,
        unknown: Reply = None,
        delay: float = 0.0,
        silent: bool = False,
        split: int | None = None,
        split_pause: float = 0.005,
    ) -> None:
        if not terminator:
            raise ValueError("SerialSimulator: terminator must not be empty")
        if split is not None and split < 1:
            raise ValueError(f"SerialSimulator: split must be >= 1 byte, got {split!r}")
        for what, seconds in (("delay", delay), ("split_pause", split_pause)):
            if not (math.isfinite(seconds) and seconds >= 0):
                raise ValueError(f"SerialSimulator: {what} must be >= 0 seconds, got {seconds!r}")
        self.responder = responder
        self.terminator = terminator
        self.encoding = encoding
        self.link = Path(link) if link is not None else None
        self.unknown = unknown
        self.delay = delay
        self.silent = silent
        self.split = split
        self.split_pause = split_pause
        self.requests: list[SimRequest] = []
        self._master: int | None = None
        self._slave: int | None = None
        self._tty_name: str | None = None
        self._inbox = bytearray()
        self._out = bytearray()
        self._drained = asyncio.Event()
        self._drained.set()
        self._changed = asyncio.Event()
        self._queue: asyncio.Queue[SimRequest] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._writing = False
        self._pending = 0

    @property
    def path(self) -> str:
        """The path clients open: the symlink if one was given, else the pty's slave name."""
        if self.link is not None:
            return str(self.link)
        if self._tty_name is None:
            raise RuntimeError("SerialSimulator: not started, no path yet")
        return self._tty_name

    @property
    def running(self) -> bool:
        """Whether the pty exists now."""
        return self._master is not None

    async def start(self) -> None:
        """Create the pty (and point the link at it) and start answering. Idempotent."""
        if self._master is not None:
            return
        loop = asyncio.get_running_loop()
        master, slave = pty.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._tty_name = os.ttyname(slave)
        if self.link is not None:
            temporary = self.link.with_name(self.link.name + ".new")
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            temporary.symlink_to(self._tty_name)
            temporary.replace(self.link)
        self._inbox.clear()
        self._out.clear()
        self._drained.set()
        self._queue = asyncio.Queue()
        self._pending = 0
        loop.add_reader(master, self._on_readable)
        self._worker = asyncio.create_task(self._answer(), name=f"serial-sim {self.path}")

    async def stop(self) -> None:
        """Close the pty, as if the device were unplugged; removes the link. Idempotent."""
        if self._master is None:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._master)
        if self._writing:
            loop.remove_writer(self._master)
            self._writing = False
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        os.close(self._master)
        if self._slave is not None:
            os.close(self._slave)
        self._master = self._slave = None
        self._out.clear()
        self._drained.set()
        if self.link is not None and self.link.is_symlink():
            self.link.unlink()

    async def restart(self) -> None:
        """Stop, then start on a new pty; the link (if any) then points at the new one."""
        await self.stop()
        await self.start()

    def inject(self, data: bytes) -> None:
        """Put ``data`` on the line now, outside any reply (noise, a half frame, garbage)."""
        self._put(data)

    async def wait_requests(self, count: int) -> list[SimRequest]:
        """Wait until at least ``count`` commands have been received; returns them all.

        Unbounded: callers put it under ``asyncio.timeout()``.
        """
        while len(self.requests) < count:
            self._changed.clear()
            await self._changed.wait()
        return self.requests

    async def wait_idle(self) -> None:
        """Wait until every received command is answered and all output is on the line.

        Unbounded: callers put it under ``asyncio.timeout()``.
        """
        while self._pending or not self._drained.is_set():
            self._changed.clear()
            await self._changed.wait()

    # -- line I/O -------------------------------------------------------------------------

    def _on_readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # no client side: nothing to read
        if not data:
            return
        self._inbox += data
        end = self.terminator.encode(self.encoding)
        now = asyncio.get_running_loop().time()
        while (index := self._inbox.find(end)) >= 0:
            raw = bytes(self._inbox[:index])
            del self._inbox[: index + len(end)]
            request = SimRequest(raw.decode(self.encoding, errors="replace"), now)
            self.requests.append(request)
            self._pending += 1
            self._queue.put_nowait(request)
        self._changed.set()

    def _put(self, data: bytes) -> None:
        if self._master is None or not data:
            return
        self._out += data
        self._drained.clear()
        self._flush()

    def _flush(self) -> None:
        master = self._master
        if master is None:
            return
        while self._out:
            try:
                written = os.write(master, self._out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._out.clear()  # no client side: the bytes are lost, as on a real line
                break
            del self._out[:written]
        loop = asyncio.get_running_loop()
        if self._out and not self._writing:
            loop.add_writer(master, self._flush)
            self._writing = True
        elif not self._out:
            if self._writing:
                loop.remove_writer(master)
                self._writing = False
            self._drained.set()
            self._changed.set()

    async def _answer(self) -> None:
        while True:
            request = await self._queue.get()
            reply = self._reply_to(request.command)
            if reply is not None and not self.silent:
                if self.delay > 0:
                    await asyncio.sleep(self.delay)
                data = reply if isinstance(reply, bytes) else reply.encode(self.encoding)
                if isinstance(reply, str):
                    data += self.terminator.encode(self.encoding)
                chunk = self.split or len(data)
                for start in range(0, len(data), chunk):
                    if start:
                        await asyncio.sleep(self.split_pause)
                    self._put(data[start : start + chunk])
                await self._drained.wait()
                request.replied_at = asyncio.get_running_loop().time()
            self._pending -= 1
            self._changed.set()

    def _reply_to(self, command: str) -> Reply:
        if isinstance(self.responder, Mapping):
            return self.responder.get(command, self.unknown)
        return self.responder(command)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def serial_sensor_profile(
    *, temperature_celsius: float | Callable[[], float] = 21.5
) -> Callable[[str], Reply]:
    """The responder of the ``example_serial_sensor`` device: an ASCII thermometer.

    ``READ?`` is answered with the temperature in degrees Celsius (``"21.50"``), ``*IDN?`` with an
    identification string, anything else with ``ERR``. Use it as
    ``SerialSimulator(serial_sensor_profile())``.

    Args:
        temperature_celsius: a fixed value, or a function called on every ``READ?``.
    """

    def respond(command: str) -> Reply:
        if command == "READ?":
            value = temperature_celsius() if callable(temperature_celsius) else temperature_celsius
            return f"{value:.2f}"
        if command == "*IDN?":
            return "GATEBEAT,SERIAL-SENSOR,0,1.0"
        return "ERR"

    return respond
