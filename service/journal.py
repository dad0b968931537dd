"""The event journal: what happened to the service and its devices, in SQLite.

Prometheus shows rates and states; the journal keeps the story an operator reads after the fact:
service start and stop (with the config's hash), device down and recovered, overrun and error
bursts (rate limited), config problems. It is written off the event loop by one writer thread,
in WAL mode with ``synchronous=NORMAL``: a SIGKILL or power cut loses at most the last few
events and never corrupts the file. Retention is by age and by row count.

The journal must never hurt the service it describes. :meth:`EventJournal.record` never blocks
and its queue is bounded (the oldest events go first when it is full, and are counted). A
failed write (another process holding a lock, a full disk) is retried with backoff, never the
end of the writer; the outage is logged once when it starts and once when it ends, and the
events dropped meanwhile are recorded as one ``journal_dropped`` event.

The file itself (schema, checks, reading) is :mod:`service.journal_file`.
"""

from __future__ import annotations

import collections
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.journal_file import (
    Event,
    JournalError,
    connect,
    describe_error,
    journal_path_problem,
    read_events,
)

__all__ = [
    "Event",
    "EventJournal",
    "JournalError",
    "JournalStatistics",
    "journal_path_problem",
    "read_events",
]

logger = logging.getLogger("gatebeat.journal")

_PRUNE_EVERY = 500  # inserts between retention passes
_BATCH_MAX = 500  # events per transaction at most
_RETRY_FIRST = 0.05  # seconds before the first retry of a failed write; doubles each time
_RETRY_MAX = 5.0  # seconds between retries at most

_Entry = tuple[float, str, str | None, str | None, str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class JournalStatistics:
    """Counters of one :class:`EventJournal` since it was opened.

    Attributes:
        queued: events waiting for the writer now (including a batch being retried).
        written: events committed to the file.
        dropped: events discarded, oldest first, because the queue was full.
        failed_writes: write attempts that failed (each one is retried).
        writing: False while the last write attempt failed (an outage).
    """

    queued: int
    written: int
    dropped: int
    failed_writes: int
    writing: bool


class EventJournal:
    """An append-only event log written by a background thread.

    Args:
        path: the SQLite file (created with its directory if missing).
        max_age: seconds an event is kept.
        max_events: rows kept at most (the oldest go first).
        burst_interval: seconds; rate-limited kinds write at most one row per device, timer and
            kind in this time, with the number of suppressed events in the next row.
        max_queued: events held in memory at most while the writer is behind or the file cannot
            be written; beyond it the oldest are dropped (and counted).
        busy_timeout: seconds one write waits for another connection's lock before it fails
            and is retried later.

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
        max_queued: int = 10_000,
        busy_timeout: float = 5.0,
    ) -> None:
        if max_age <= 0 or max_events <= 0 or max_queued <= 0:
            raise ValueError(
                f"journal limits must be > 0, got max_age={max_age!r} "
                f"max_events={max_events!r} max_queued={max_queued!r}"
            )
        self.path = Path(path)
        self.max_age = max_age
        self.max_events = max_events
        self.burst_interval = burst_interval
        self.max_queued = max_queued
        self.busy_timeout = busy_timeout
        self._last_burst: dict[tuple[str, str | None, str | None], tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # notified on record() and close()
        self._closing = threading.Event()
        self._close_deadline = float("inf")  # time.monotonic() seconds
        self._pending: collections.deque[_Entry] = collections.deque()
        self._batch: list[_Entry] = []  # taken by the writer, not yet committed
        self._written = self._dropped = self._unreported_drops = self._failed = 0
        self._writing = True
        problem = journal_path_problem(self.path)
        if problem is not None:
            raise JournalError(self.path, problem)
        try:  # fail here, on the caller's thread, if unusable
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connect(self.path, busy_timeout=busy_timeout).close()
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(self.path, describe_error(exc)) from exc
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
        """Queue one event; never blocks the caller (the write happens on the journal thread).

        When ``max_queued`` events are already waiting, the oldest is dropped and counted; the
        first drop of a run is logged.
        """
        entry: _Entry = (time.time(), kind, device, timer, message, dict(details or {}))
        with self._lock:
            full = len(self._pending) >= self.max_queued
            if full:
                self._pending.popleft()
                self._dropped += 1
                self._unreported_drops += 1
            first_drop = full and self._unreported_drops == 1
            self._pending.append(entry)
            self._ready.notify()
        if first_drop:
            logger.warning(
                "event journal %s is %d events behind: dropping the oldest until it catches up",
                self.path,
                self.max_queued,
            )

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

    def statistics(self) -> JournalStatistics:
        """The journal's counters now (safe from any thread)."""
        with self._lock:
            return JournalStatistics(
                queued=len(self._pending) + len(self._batch),
                written=self._written,
                dropped=self._dropped,
                failed_writes=self._failed,
                writing=self._writing,
            )

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued and stop the writer thread (waits at most ``timeout`` seconds).

        During an outage the writer keeps retrying until the timeout, then gives up; what it
        could not write is logged as lost.
        """
        with self._lock:
            self._close_deadline = time.monotonic() + timeout
            self._closing.set()
            self._ready.notify()
        # Slack for the last attempt, whose connect, prune and insert may each wait up to
        # busy_timeout on a lock, to give up (at most 1 s); a writer stuck longer is a daemon
        # thread and does not hold the exit.
        self._thread.join(timeout + min(1.0, 4 * self.busy_timeout + 0.1))
        if self._thread.is_alive():
            logger.warning(
                "event journal %s: writer still busy after %.1f s; %d events not written",
                self.path,
                timeout,
                self.statistics().queued,
            )

    # -- the writer thread ------------------------------------------------------------------

    def _write_loop(self) -> None:
        connection: sqlite3.Connection | None = None
        inserted = 0
        delay = _RETRY_FIRST
        outage: tuple[float, str] | None = None  # (since, reason) while writes fail
        try:
            try:  # retention at start too; if this fails, the first write retries it
                connection = connect(self.path, busy_timeout=self.busy_timeout)
                self._prune(connection)
            except sqlite3.Error:
                connection = None
            while self._take_batch():
                try:
                    if connection is None:
                        connection = connect(self.path, busy_timeout=self.busy_timeout)
                        self._prune(connection)
                    with connection:
                        connection.executemany(
                            "INSERT INTO events (ts, kind, device, timer, message, details)"
                            " VALUES (?, ?, ?, ?, ?, ?)",
                            [(*e[:5], json.dumps(e[5], default=str)) for e in self._batch],
                        )
                except sqlite3.Error as exc:
                    if connection is not None:
                        connection.close()
                        connection = None
                    if outage is None:
                        outage = (time.monotonic(), describe_error(exc))
                        logger.warning(
                            "event journal %s cannot be written (%s); keeping up to %d events "
                            "in memory and retrying",
                            self.path,
                            outage[1],
                            self.max_queued,
                        )
                    with self._lock:  # counted after the log line, so waiters see both
                        self._failed += 1
                        self._writing = False
                    if not self._wait_to_retry(delay):
                        return
                    delay = min(delay * 2, _RETRY_MAX)
                    continue
                inserted += len(self._batch)
                with self._lock:
                    self._written += len(self._batch)
                    self._batch = []
                    self._writing = True
                if outage is not None:
                    logger.info(
                        "event journal %s written again after %.1f s",
                        self.path,
                        time.monotonic() - outage[0],
                    )
                    outage, delay = None, _RETRY_FIRST
                self._report_drops()
                if inserted >= _PRUNE_EVERY:
                    inserted = 0
                    self._prune(connection)
        finally:
            if connection is not None:
                connection.close()

    def _take_batch(self) -> bool:
        """Wait for events (keeping a batch that failed); False once closed with none left."""
        with self._lock:
            if self._batch:
                return True
            while not self._pending and not self._closing.is_set():
                self._ready.wait(1.0)  # record() and close() notify; the bound is a safety net
            count = min(len(self._pending), _BATCH_MAX)
            self._batch = [self._pending.popleft() for _ in range(count)]
            return bool(self._batch)

    def _wait_to_retry(self, delay: float) -> bool:
        """Sleep ``delay`` seconds before a retry; False when closing and out of time."""
        if self._closing.is_set():
            remaining = self._close_deadline - time.monotonic()
            if remaining <= 0:
                lost = self.statistics().queued
                logger.error("event journal %s closed with %d events unwritten", self.path, lost)
                return False
            time.sleep(min(delay, remaining))
            return True
        self._closing.wait(delay)  # close() cuts the wait short
        return True

    def _report_drops(self) -> None:
        """Once the writer has caught up, record how many events were dropped meanwhile."""
        with self._lock:
            dropped = self._unreported_drops
            if not dropped or len(self._pending) >= max(1, self.max_queued // 2):
                return
            self._unreported_drops = 0
        logger.warning("event journal %s caught up; %d events were dropped", self.path, dropped)
        self.record(
            "journal_dropped",
            f"{dropped} events dropped: the journal could not keep up or could not be written",
            details={"dropped": dropped},
        )

    def _prune(self, connection: sqlite3.Connection) -> None:
        """Apply retention; a failure only postpones it (the events are safe)."""
        try:
            with connection:
                connection.execute("DELETE FROM events WHERE ts < ?", (time.time() - self.max_age,))
                connection.execute(
                    "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?",
                    (self.max_events,),
                )
        except sqlite3.Error as exc:
            logger.debug("event journal %s retention postponed: %s", self.path, exc)
