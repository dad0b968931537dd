"""The event journal's SQLite file: schema, checks, connections, and reading it back.

:mod:`service.journal` writes the file; ``gatebeat events`` reads it with :func:`read_events`.
Every failure about the file is a :class:`JournalError` naming the path and the reason in words,
so the CLI and the runner report it in one line instead of a traceback.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Event",
    "JournalError",
    "connect",
    "describe_error",
    "journal_path_problem",
    "read_events",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    device TEXT,
    timer TEXT,
    message TEXT NOT NULL,
    details TEXT
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE INDEX IF NOT EXISTS events_device_ts ON events (device, ts);
"""


class JournalError(Exception):
    """The event journal cannot be opened, read or written.

    Attributes:
        path: the journal file.
        reason: what is wrong, in words (``"not an SQLite database"``).
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path!r}: {reason}")


def describe_error(exc: BaseException) -> str:
    """A readable reason for a sqlite3 or OS error about the journal file."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    text = str(exc)
    if text == "file is not a database":
        return "not an SQLite database (corrupt, or another kind of file)"
    if text == "no such table: events":
        return "not an event journal (an SQLite database without an events table)"
    if text == "unable to open database file":
        return "cannot open it as a database file (a directory, or a directory that is missing)"
    if text == "attempt to write a readonly database":
        return "not writable (read-only file or directory)"
    if text == "database is locked":
        return "locked: another connection holds a write lock"
    if text == "database or disk is full":
        return "the disk is full"
    return text


_SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def journal_path_problem(path: str | Path) -> str | None:
    """What makes ``path`` unusable as the journal, found without opening it; else ``None``.

    Cheap checks only, for ``check-config`` and the start: the path is no directory, the
    nearest existing ancestor is a directory (missing directories are created at start), and an
    existing non-empty file starts like an SQLite database.
    """
    path = Path(path)
    if path.is_dir():
        return "is a directory; give the path of the journal file in it (e.g. events.db)"
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{str(ancestor)!r} is not a directory"
    if path.is_file():
        try:
            with path.open("rb") as file:
                head = file.read(len(_SQLITE_MAGIC))
        except OSError as exc:
            return f"cannot read it: {exc.strerror or exc}"
        if head and head != _SQLITE_MAGIC:
            return "not an SQLite database (corrupt, or another kind of file)"
    return None


@dataclass(frozen=True, slots=True)
class Event:
    """One journal row. ``ts`` is wall-clock Unix time in seconds."""

    id: int
    ts: float
    kind: str
    device: str | None
    timer: str | None
    message: str
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.ts)),
            "kind": self.kind,
            "device": self.device,
            "timer": self.timer,
            "message": self.message,
            "details": self.details,
        }


def connect(path: Path, *, busy_timeout: float = 5.0) -> sqlite3.Connection:
    """Open (creating if needed) the journal for writing: WAL mode, the schema in place.

    Args:
        path: the journal file.
        busy_timeout: seconds a statement waits for another connection's lock before it fails
            with "database is locked".

    Raises:
        sqlite3.Error: the file cannot be opened or set up.
    """
    connection = sqlite3.connect(path, timeout=busy_timeout, check_same_thread=False)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.executescript(_SCHEMA)
    except sqlite3.Error:
        connection.close()
        raise
    return connection


def read_events(
    path: str | Path,
    *,
    device: str | None = None,
    since: float | None = None,
    limit: int = 1000,
) -> list[Event]:
    """Read events, oldest first.

    Args:
        path: the journal file.
        device: only events of this device.
        since: only events newer than this many seconds ago.
        limit: at most this many (the newest ones).

    Raises:
        FileNotFoundError: there is no journal at ``path``.
        JournalError: the file is not a readable event journal (corrupt, empty, a directory).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no event journal at {str(path)!r}")
    if path.is_dir():
        raise JournalError(path, "is a directory, not an event journal")
    # An escaped file: URI, so '#', '?' and '%' in the path stay part of the file name.
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        connection = sqlite3.connect(uri, uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise JournalError(path, describe_error(exc)) from exc
    try:
        clauses: list[str] = []
        params: list[object] = []
        if device is not None:
            clauses.append("device = ?")
            params.append(device)
        if since is not None:
            clauses.append("ts >= ?")
            params.append(time.time() - since)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = connection.execute(
            "SELECT id, ts, kind, device, timer, message, details FROM events "
            f"{where} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
    except sqlite3.Error as exc:
        raise JournalError(path, describe_error(exc)) from exc
    finally:
        connection.close()
    return [
        Event(
            id=r[0],
            ts=r[1],
            kind=r[2],
            device=r[3],
            timer=r[4],
            message=r[5],
            details=json.loads(r[6]) if r[6] else {},
        )
        for r in reversed(rows)
    ]
