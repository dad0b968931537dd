"""The event journal: what happened to the service and its devices, in SQLite.

Prometheus shows rates and states; the journal keeps the story an operator reads after the fact:
service start and stop (with the config's hash), device down and recovered, overrun and error
bursts (rate limited), config problems. It is written off the event loop by one writer thread,
in WAL mode with ``synchronous=NORMAL``: a SIGKILL or power cut loses at most the last few
events and never corrupts the file. Retention is by age and by row count.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

__all__ = ["Event", "EventJournal", "JournalError", "journal_path_problem", "read_events"]

logger = logging.getLogger("gatebeat.journal")

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
_STOP = object()
_PRUNE_EVERY = 500  # inserts between retention passes
_BATCH_MAX = 500  # events per transaction at most


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


def _reason(exc: BaseException) -> str:
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


class EventJournal:
    """An append-only event log written by a background thread.

    Args:
        path: the SQLite file (created with its directory if missing).
        max_age: seconds an event is kept.
        max_events: rows kept at most (the oldest go first).
        burst_interval: seconds; rate-limited kinds write at most one row per device, timer and
            kind in this time, with the number of suppressed events in the next row.

    Raises:
        JournalError: the file cannot be created or opened as a journal (the message names the
            path and the reason: a directory, a parent that is a file, corrupt, not writable).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_age: float = 30 * 86400.0,
        max_events: int = 100_000,
        burst_interval: float = 60.0,
    ) -> None:
        if max_age <= 0 or max_events <= 0:
            raise ValueError(
                f"journal retention must be > 0, got max_age={max_age!r} max_events={max_events!r}"
            )
        self.path = Path(path)
        self.max_age = max_age
        self.max_events = max_events
        self.burst_interval = burst_interval
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._last_burst: dict[tuple[str, str | None, str | None], tuple[float, int]] = {}
        problem = journal_path_problem(self.path)
        if problem is not None:
            raise JournalError(self.path, problem)
        try:  # fail here, on the caller's thread, if unusable
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _connect(self.path).close()
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(self.path, _reason(exc)) from exc
        self._thread = threading.Thread(target=self._write_loop, name="gatebeat-journal")
        self._thread.daemon = True
        self._thread.start()

    def record(
        self,
        kind: str,
        message: str,
        *,
        device: str | None = None,
        timer: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue one event; never blocks the caller (the write happens on the journal thread)."""
        self._queue.put((time.time(), kind, device, timer, message, dict(details or {})))

    def record_burst(
        self,
        kind: str,
        message: str,
        *,
        device: str | None = None,
        timer: str | None = None,
        details: Mapping[str, Any] | None = None,
        now: float | None = None,
    ) -> bool:
        """Queue a rate-limited event (overruns, errors); returns whether a row was written.

        ``now`` is a monotonic time in seconds (defaults to ``time.monotonic()``).
        """
        now = time.monotonic() if now is None else now
        key = (kind, device, timer)
        last, suppressed = self._last_burst.get(key, (-float("inf"), 0))
        if now - last < self.burst_interval:
            self._last_burst[key] = (last, suppressed + 1)
            return False
        self._last_burst[key] = (now, 0)
        merged = dict(details or {})
        if suppressed:
            merged["suppressed_since_last"] = suppressed
        self.record(kind, message, device=device, timer=timer, details=merged)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued and stop the writer thread (waits at most ``timeout`` seconds)."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def _write_loop(self) -> None:
        connection = _connect(self.path)
        inserted = 0
        try:
            self._prune(connection)
            while True:
                item = self._queue.get()
                batch = [item]
                while len(batch) < _BATCH_MAX:  # bounded, or a steady producer starves commits
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = any(entry is _STOP for entry in batch)
                rows = [_row(entry) for entry in batch if entry is not _STOP]
                if rows:
                    with connection:
                        connection.executemany(
                            "INSERT INTO events (ts, kind, device, timer, message, details)"
                            " VALUES (?, ?, ?, ?, ?, ?)",
                            rows,
                        )
                    inserted += len(rows)
                    if inserted >= _PRUNE_EVERY:
                        inserted = 0
                        self._prune(connection)
                if stop:
                    return
        except sqlite3.Error:
            logger.exception("journal=%s write failed; journal disabled", self.path)
        finally:
            connection.close()

    def _prune(self, connection: sqlite3.Connection) -> None:
        with connection:
            connection.execute("DELETE FROM events WHERE ts < ?", (time.time() - self.max_age,))
            connection.execute(
                "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?",
                (self.max_events,),
            )


def _row(entry: object) -> tuple[object, ...]:
    fields = cast("tuple[object, ...]", entry)
    return (*fields[:5], json.dumps(fields[5], default=str))


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=5.0, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.executescript(_SCHEMA)
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
        raise JournalError(path, _reason(exc)) from exc
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
        raise JournalError(path, _reason(exc)) from exc
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
