"""Per-device health: up/down with a failure tolerance, fresh readings only, errors by kind.

A :class:`DeviceHealth` is fed by the runner after every poll or heartbeat tick of one device
(``record_success`` / ``record_failure``) and by the watchdog (``check_stale``). It lives on
the event loop; the exporter's scrape thread reads it only through :meth:`DeviceHealth.snapshot`,
an immutable :class:`HealthSnapshot` that is replaced (never mutated) on every change, so a
scrape never sees a half-updated device.

Honest data (FIELD.md 9): a failed read removes the device's readings instead of keeping the
last value or recording zero, and a device goes down after ``down_after_failures`` consecutive
failures (transient errors are tolerated) or when nothing succeeded within ``stale_after``
seconds of loop time. It comes back up on the next success. Each transition is logged once.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from service.driver import Readings, Value

__all__ = [
    "DeviceHealth",
    "HealthSnapshot",
    "InvalidFieldName",
    "validate_field_name",
]

logger = logging.getLogger("gatebeat.health")

FIELD_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
"""Reading field names become metric names ``gatebeat_reading_<field>``."""

_EMPTY: Mapping[str, Value] = MappingProxyType({})


class InvalidFieldName(ValueError):
    """A reading's field name cannot be part of a Prometheus metric name."""


def validate_field_name(name: str, *, device: str) -> str:
    """Return ``name`` if it matches ``[a-zA-Z_][a-zA-Z0-9_]*``, else raise.

    Raises:
        InvalidFieldName: the message names the device and the offending field name.
    """
    if not isinstance(name, str) or FIELD_NAME.fullmatch(name) is None:
        raise InvalidFieldName(
            f"device={device}: reading field {name!r} is not a valid metric name part "
            "(allowed: letters, digits and '_', not starting with a digit)"
        )
    return name


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """An immutable view of one device's health, safe to read from any thread.

    Attributes:
        device: the device name (``device`` label).
        driver: the driver name (``driver`` label).
        up: the device is up (False before the first success, after too many consecutive
            failures, or when stale).
        readings: the fresh readings (field -> value); empty after a failure.
        last_success_timestamp: wall-clock time (``time.time()``, seconds since the epoch)
            of the last success, ``None`` before the first.
        consecutive_failures: failures since the last success.
        error_counts: failures by exception class name since the device was created.
        down_reason: why the device is down, ``None`` while up.
        stale: down because nothing succeeded within ``stale_after`` (as opposed to failures).
    """

    device: str
    driver: str
    up: bool
    readings: Mapping[str, Value]
    last_success_timestamp: float | None
    consecutive_failures: int
    error_counts: Mapping[str, int]
    down_reason: str | None = field(default=None)
    stale: bool = False


class DeviceHealth:
    """Track whether one device is up, and keep its readings only while they are fresh.

    Args:
        device: the device name.
        driver: the driver name.
        down_after_failures: consecutive failures after which the device is down (>= 1).
        stale_after: seconds of loop time without a success after which the device is down
            and its readings are dropped (``check_stale``); ``None`` disables the check.

    Raises:
        ValueError: ``down_after_failures`` < 1 or ``stale_after`` not finite and > 0.
    """

    def __init__(
        self,
        device: str,
        driver: str,
        *,
        down_after_failures: int = 3,
        stale_after: float | None = None,
    ) -> None:
        if isinstance(down_after_failures, bool) or not isinstance(down_after_failures, int):
            raise ValueError(
                f"device={device}: down_after_failures must be an integer >= 1, "
                f"got {down_after_failures!r}"
            )
        if down_after_failures < 1:
            raise ValueError(
                f"device={device}: down_after_failures must be >= 1, got {down_after_failures!r}"
            )
        if stale_after is not None and not (math.isfinite(stale_after) and stale_after > 0):
            raise ValueError(
                f"device={device}: stale_after must be finite and > 0 seconds, got {stale_after!r}"
            )
        self.device = device
        self.driver = driver
        self.down_after_failures = down_after_failures
        self.stale_after = stale_after
        self._last_success_loop: float | None = None
        self._created_loop: float | None = None
        self._snapshot = HealthSnapshot(
            device=device,
            driver=driver,
            up=False,
            readings=_EMPTY,
            last_success_timestamp=None,
            consecutive_failures=0,
            error_counts=MappingProxyType({}),
            down_reason="no successful tick yet",
        )
        self._ever_up = False
        self._logged_down = False

    # -- read side (any thread) -------------------------------------------------------------

    def snapshot(self) -> HealthSnapshot:
        """The current immutable state; safe to call from the exporter's thread."""
        return self._snapshot

    @property
    def up(self) -> bool:
        """The device is up."""
        return self._snapshot.up

    @property
    def readings(self) -> Mapping[str, Value]:
        """Fresh readings (read-only); empty after a failure or while stale."""
        return self._snapshot.readings

    @property
    def last_success_timestamp(self) -> float | None:
        """Wall-clock seconds since the epoch of the last success, ``None`` before the first."""
        return self._snapshot.last_success_timestamp

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success."""
        return self._snapshot.consecutive_failures

    @property
    def error_counts(self) -> Mapping[str, int]:
        """Failures by exception class name (read-only)."""
        return self._snapshot.error_counts

    # -- write side (event loop) -------------------------------------------------------------

    def record_success(
        self, readings: Readings | None = None, *, now: float, dropped: Iterable[str] = ()
    ) -> None:
        """Record a successful tick at loop time ``now`` (seconds), with its readings if any.

        Readings are merged into the device's fresh readings (a device may have several polls
        producing different fields). NaN values are dropped: a reading is a number or absent.

        Args:
            readings: what the tick read (field -> value), or ``None``.
            now: loop time of the success, seconds.
            dropped: fields to remove first: the ones this timer produced last time but not
                now (an optional value the device did not report), so no old value is
                exported as fresh.

        Raises:
            InvalidFieldName: a field name cannot become a metric name; nothing is recorded.
        """
        merged = dict(self._snapshot.readings)
        for name in dropped:
            merged.pop(name, None)
        if readings:
            for name, value in readings.items():
                validate_field_name(name, device=self.device)
                if isinstance(value, float) and math.isnan(value):
                    merged.pop(name, None)
                else:
                    merged[name] = value
        previous = self._snapshot
        if self._logged_down:
            logger.info(
                "device=%s recovered after %d failures was=%r",
                self.device,
                previous.consecutive_failures,
                previous.down_reason,
            )
        elif not self._ever_up:
            logger.info("device=%s up", self.device)
        self._ever_up = True
        self._logged_down = False
        self._last_success_loop = now
        if self._created_loop is None:
            self._created_loop = now
        self._snapshot = HealthSnapshot(
            device=self.device,
            driver=self.driver,
            up=True,
            readings=MappingProxyType(merged),
            last_success_timestamp=time.time(),
            consecutive_failures=0,
            error_counts=previous.error_counts,
        )

    def record_failure(
        self, error: BaseException, *, now: float, fields: Iterable[str] | None = None
    ) -> None:
        """Record a failed tick at loop time ``now`` (seconds): count it, drop readings.

        Args:
            error: the exception; counted under its class name.
            now: loop time of the failure.
            fields: drop only these readings (the fields of the poll that failed); ``None``
                drops all of the device's readings.
        """
        previous = self._snapshot
        if self._created_loop is None:
            self._created_loop = now
        kind = type(error).__name__
        counts = dict(previous.error_counts)
        counts[kind] = counts.get(kind, 0) + 1
        if fields is None:
            readings = _EMPTY
        else:
            kept = dict(previous.readings)
            for name in fields:
                kept.pop(name, None)
            readings = MappingProxyType(kept)
        failures = previous.consecutive_failures + 1
        up = previous.up
        reason = previous.down_reason
        if failures >= self.down_after_failures:
            reason = f"{failures} consecutive failures, last {kind}: {error}"
            if previous.up or not self._logged_down:
                logger.warning(
                    "device=%s down reason=%r failures=%d error=%s",
                    self.device,
                    reason,
                    failures,
                    kind,
                )
                self._logged_down = True
            up = False
        self._snapshot = HealthSnapshot(
            device=self.device,
            driver=self.driver,
            up=up,
            readings=readings,
            last_success_timestamp=previous.last_success_timestamp,
            consecutive_failures=failures,
            error_counts=MappingProxyType(counts),
            down_reason=None if up else reason,
        )

    def check_stale(self, now: float) -> bool:
        """Mark the device down if nothing succeeded within ``stale_after`` s; return ``up``.

        The first call starts the clock for a device that never succeeded.
        """
        if self._created_loop is None:
            self._created_loop = now
        previous = self._snapshot
        if self.stale_after is None:
            return previous.up
        reference = self._last_success_loop
        age = now - (reference if reference is not None else self._created_loop)
        if age < self.stale_after:
            return previous.up
        self._log_stale(age)
        if not previous.stale:
            self._snapshot = replace(
                previous,
                up=False,
                readings=_EMPTY,
                down_reason=f"no success for {age:.3f} s (stale_after {self.stale_after} s)",
                stale=True,
            )
        return False

    def _log_stale(self, age: float) -> None:
        if self._logged_down:
            return
        logger.warning(
            "device=%s down reason=stale seconds_since_success=%.3f stale_after=%s",
            self.device,
            age,
            self.stale_after,
        )
        self._logged_down = True

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        return f"<DeviceHealth {self.device!r} driver={self.driver!r} {state}>"
