"""The SQLite event journal: writes off the caller's thread, retention, rate limits, SIGKILL."""

from __future__ import annotations

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


def test_reading_a_missing_journal_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no event journal"):
        read_events(tmp_path / "absent.db")


def test_sigkill_while_writing_leaves_a_consistent_database(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    writer = textwrap.dedent(
        f"""
        from service.journal import EventJournal
        journal = EventJournal({str(path)!r})
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
