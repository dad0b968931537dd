"""Parsing and validation of time intervals (seconds).

Intervals reach gatebeat as numbers of seconds, as :class:`datetime.timedelta` objects or, in
config files, as strings with a unit (``"250ms"``, ``"5s"``, ``"1m"``, ``"1h"``). Everything is
turned into a finite, positive ``float`` of seconds here, in one place, so every error message
names the offending value the same way.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

__all__ = ["IntervalLike", "parse_duration", "setting_seconds", "to_seconds"]

IntervalLike = float | int | timedelta | str

_UNITS: dict[str, float] = {
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_DURATION = re.compile(
    r"^\s*(?P<number>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?P<unit>[a-zµ]*)\s*$"
)


def parse_duration(text: str) -> float:
    """Parse a duration string such as ``"250ms"``, ``"5s"``, ``"1.5m"`` into seconds.

    A bare number (``"2.5"``) is seconds. Raises ``ValueError`` naming the text when it is not
    a number followed by one of the units ``us ms s m min h d``.
    """
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration (use seconds, or a number with a unit: "
            f"'250ms', '5s', '1m', '1h')"
        )
    unit = match.group("unit") or "s"
    if unit not in _UNITS:
        raise ValueError(f"{text!r} has an unknown unit {unit!r} (known: us, ms, s, m, min, h, d)")
    return float(match.group("number")) * _UNITS[unit]


def to_seconds(value: object, *, what: str = "interval", allow_zero: bool = False) -> float:
    """Return ``value`` as a finite float of seconds that is > 0 (or >= 0 with ``allow_zero``).

    Args:
        value: seconds as ``int``/``float``, a ``timedelta``, or a duration string.
        what: the name used in error messages (``"interval"``, ``"timeout"``, ...).
        allow_zero: accept exactly zero (for offsets and pauses).

    Raises:
        TypeError: ``value`` is of an unsupported type (``bool`` included).
        ValueError: ``value`` is not finite, negative, or zero when zero is not allowed.
    """
    if isinstance(value, bool):
        raise TypeError(
            f"{what} must be seconds (a number), a timedelta or a duration string, "
            f"not bool {value!r}"
        )
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = parse_duration(value)
    else:
        raise TypeError(
            f"{what} must be seconds (a number), a timedelta or a duration string, "
            f"not {type(value).__name__} {value!r}"
        )
    if not math.isfinite(seconds):
        raise ValueError(f"{what} must be finite, got {value!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{what} must be {bound} seconds, got {value!r}")
    return seconds


def setting_seconds(value: object, *, what: str = "duration", allow_zero: bool = False) -> float:
    """:func:`to_seconds` for config validators: every bad value is a ``ValueError``.

    pydantic turns ``ValueError`` into a located validation error, but lets ``TypeError``
    escape as a traceback, so a config value of the wrong type (``interval = false``,
    ``timeout = [1]``) must be reported as a ``ValueError`` too.
    """
    try:
        return to_seconds(value, what=what, allow_zero=allow_zero)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
