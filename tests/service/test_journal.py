"""The SQLite event journal: writes off the caller's thread, retention, rate limits, SIGKILL."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from service.journal import EventJournal, JournalError, read_events


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_events_are_written_and_read_back_in_order(tmp_path: Path) -> None:
    journal = EventJournal(tmp_path / "j" / "events.db")
    journal.record("service_start", "started", details={"config_hash": "abc"})
    journal.record("device_down", "boiler down", device="boiler", details={"reason": "timeout"})
    journal.record("device_up", "boiler recovered", device="boiler")
    journal.record("device_down", "pump down", device="pump")
    journal.close()

    events = read_events(tmp_path / "j" / "events.db")
    assert [e.kind for e in events] == ["service_start", "device_down", "device_up", "device_down"]
    assert events[0].details == {"config_hash": "abc"}
    boiler = read_events(tmp_path / "j" / "events.db", device="boiler")
    assert [e.message for e in boiler] == ["boiler down", "boiler recovered"]
    assert read_events(tmp_path / "j" / "events.db", since=3600)[-1].device == "pump"


def test_bursts_are_rate_limited_and_suppressed_counts_reported(tmp_path: Path) -> None:
    journal = EventJournal(tmp_path / "events.db", burst_interval=60.0)
    written = [
        journal.record_burst("overrun", "overrun", device="d", timer="t", now=t)
        for t in (0.0, 1.0, 2.0, 30.0, 61.0)
    ]
    assert written == [True, False, False, False, True]
    journal.close()
    events = read_events(tmp_path / "events.db")
    assert [e.details for e in events] == [{}, {"suppressed_since_last": 3}]


def test_retention_keeps_the_newest_rows(tmp_path: Path) -> None:
    journal = EventJournal(tmp_path / "events.db", max_events=10)
    for i in range(600):
        journal.record("tick", f"event {i}")
    journal.close()
    events = read_events(tmp_path / "events.db", limit=10_000)
    assert len(events) <= 10 + 500  # pruned every 500 inserts
    assert events[-1].message == "event 599"
    reopened = EventJournal(tmp_path / "events.db", max_events=10)  # prunes on start
    reopened.close()
    assert [e.message for e in read_events(tmp_path / "events.db")][-1] == "event 599"
    assert len(read_events(tmp_path / "events.db")) == 10


def test_an_unusable_journal_path_is_one_error_naming_path_and_reason(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a regular file\n")
    (tmp_path / "corrupt.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 4080)
    cases = {
        tmp_path / "file" / "events.db": f"{str(tmp_path / 'file')!r} is not a directory",
        tmp_path: "is a directory; give the path of the journal file in it (e.g. events.db)",
        tmp_path / "corrupt.db": "not an SQLite database (corrupt, or another kind of file)",
    }
    for path, reason in cases.items():
        with pytest.raises(JournalError) as info:
            EventJournal(path)
        assert (info.value.path, info.value.reason) == (str(path), reason)
    assert not any(t.name == "gatebeat-journal" for t in threading.enumerate())


def _lock(path: Path) -> sqlite3.Connection:
    """A second, real connection holding the database's write lock until it commits."""
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    return blocker


def test_a_locked_database_is_retried_until_it_is_free_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.db"
    journal = EventJournal(path, busy_timeout=0.05)
    journal.record("service_start", "first")
    wait_for(lambda: journal.statistics().written == 1)
    blocker = _lock(path)
    with caplog.at_level(logging.INFO, logger="gatebeat.journal"):
        journal.record("device_down", "while locked", device="boiler")
        wait_for(lambda: journal.statistics().failed_writes >= 3)  # retried, still alive
        stats = journal.statistics()
        assert (stats.written, stats.queued, stats.writing) == (1, 1, False)
        blocker.execute("COMMIT")
        blocker.close()
        wait_for(lambda: journal.statistics().written == 2)
        journal.close()
    assert [e.message for e in read_events(path)] == ["first", "while locked"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # once when the outage starts, once when it ends
    assert lines[0] == (
        f"event journal {path} cannot be written (locked: another connection holds a write "
        "lock); keeping up to 10000 events in memory and retrying"
    )
    assert lines[1].startswith(f"event journal {path} written again after ")


def test_the_queue_is_bounded_dropping_the_oldest_and_counting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.db"
    journal = EventJournal(path, busy_timeout=0.05, max_queued=100)
    blocker = _lock(path)
    journal.record("tick", "held")
    wait_for(lambda: journal.statistics().failed_writes >= 1)  # the writer holds "held"
    caplog.clear()  # the outage's own warning is the test above's
    with caplog.at_level(logging.WARNING, logger="gatebeat.journal"):
        for i in range(250):
            journal.record("tick", f"event {i}")
        stats = journal.statistics()
        assert (stats.queued, stats.dropped) == (101, 150)
        blocker.execute("COMMIT")
        blocker.close()
        wait_for(lambda: journal.statistics().written == 102)  # + one journal_dropped event
        journal.close()
    events = read_events(path)
    assert [e.message for e in events[:-1]] == ["held"] + [f"event {i}" for i in range(150, 250)]
    assert (events[-1].kind, events[-1].details) == ("journal_dropped", {"dropped": 150})
    lines = [r.getMessage().replace(str(path), "PATH") for r in caplog.records]
    assert lines == [
        "event journal PATH is 100 events behind: dropping the oldest until it catches up",
        "event journal PATH caught up; 150 events were dropped",
    ]


def test_close_during_an_outage_gives_up_at_its_timeout(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    journal = EventJournal(path, busy_timeout=0.05)
    blocker = _lock(path)
    try:
        journal.record("service_stop", "never written")
        wait_for(lambda: journal.statistics().failed_writes >= 1)
        started = time.monotonic()
        journal.close(timeout=0.5)
        assert time.monotonic() - started < 3.0
        assert not any(t.name == "gatebeat-journal" for t in threading.enumerate())
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert read_events(path) == []


def test_reading_a_missing_journal_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no event journal"):
        read_events(tmp_path / "absent.db")


def test_sigkill_while_writing_leaves_a_consistent_database(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    writer = textwrap.dedent(
        f"""
        from service.journal import EventJournal
        # A producer far faster than any disk: a queue this long drops nothing before the
        # kill, so the rows must be an exact prefix (the bound itself is tested above).
        journal = EventJournal({str(path)!r}, max_queued=10_000_000)
        i = 0
        while True:
            journal.record("tick", "event %d" % i, device="d", details={{"i": i}})
            i += 1
        """
    )
    process = subprocess.Popen([sys.executable, "-c", writer])
    try:

        def enough_rows() -> bool:
            if not path.exists():
                return False
            try:
                return len(read_events(path, limit=5000)) >= 2000
            except JournalError:  # created, but the schema not yet committed
                return False

        wait_for(enough_rows, timeout=30)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    connection.close()
    events = read_events(path, limit=100_000)
    numbers = [e.details["i"] for e in events]
    assert numbers == list(range(len(numbers)))  # a prefix, nothing torn or reordered
    journal = EventJournal(path)  # and it is writable again after the crash
    journal.record("service_start", "restarted")
    journal.close()
    assert read_events(path)[-1].kind == "service_start"
