"""Logging setup: one line per event, as ``key=value`` text (default) or JSON lines.

Text lines look like::

    ts=2024-05-01T12:00:00.123Z level=warning logger=gatebeat.health device=boiler msg="device down"

JSON lines (``[logging] format = "json"``) suit Docker log drivers and Loki. Every record stays
on one line: newlines in messages and tracebacks are escaped, so a state change is exactly one
line. ``device``, ``timer`` and any other ``extra=`` keys of a record appear as fields.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any, Literal

__all__ = ["JsonFormatter", "KeyValueFormatter", "LogFormat", "setup_logging"]

LogFormat = Literal["text", "json"]

# Attributes every LogRecord has; anything else was passed with ``extra=`` (or an adapter).
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
_FIRST = ("device", "timer")


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    extras = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
    ordered = {k: extras.pop(k) for k in _FIRST if k in extras}
    ordered.update(sorted(extras.items()))
    return ordered


def _quote(value: object) -> str:
    text = str(value)
    if text and all(c.isalnum() or c in "-_.:/@+" for c in text):
        return text
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    return f'"{escaped}"'


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... device=... msg="..."`` on one line (logfmt)."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"ts={_timestamp(record)}",
            f"level={record.levelname.lower()}",
            f"logger={_quote(record.name)}",
        ]
        parts += [f"{key}={_quote(value)}" for key, value in _extras(record).items()]
        parts.append(f"msg={_quote(record.getMessage())}")
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, extras, ``msg``, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        data.update(_extras(record))
        data["msg"] = record.getMessage()
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


def setup_logging(
    *, format: LogFormat = "text", level: str | int = "INFO", stream: IO[str] | None = None
) -> logging.Handler:
    """Send all logging to ``stream`` (stderr by default) in ``format``; returns the handler.

    Replaces handlers installed by an earlier call, so calling it twice is harmless.

    Args:
        format: ``"text"`` (key=value) or ``"json"`` (JSON lines).
        level: a level name (``"debug"``, ``"INFO"``, ...) or number for the root logger.

    Raises:
        ValueError: ``format`` or ``level`` is unknown.
    """
    formatters: dict[str, type[logging.Formatter]] = {
        "text": KeyValueFormatter,
        "json": JsonFormatter,
    }
    if format not in formatters:
        raise ValueError(f"logging.format must be 'text' or 'json', not {format!r}")
    if isinstance(level, str):
        number = logging.getLevelNamesMapping().get(level.upper())
        if number is None:
            raise ValueError(f"logging.level {level!r} is not a level name")
        level = number
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatters[format]())
    handler.set_name("gatebeat")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "gatebeat"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # pymodbus logs an ERROR with a frame dump on every timeout; gatebeat's typed errors and
    # its one-line-per-transition logs already say it, so only debug shows pymodbus's own.
    logging.getLogger("pymodbus").setLevel(
        logging.DEBUG if level <= logging.DEBUG else logging.CRITICAL
    )
    return handler
