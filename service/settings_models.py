"""The pydantic models of gatebeat's configuration (the parts the framework owns).

Driver-specific keys (a device's ``Config``, a timer's ``Poll``/``Heartbeat`` fields) are kept
as extras here and validated against the driver in :mod:`service.settings_devices`.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from service.http import check_basic_auth_secret, check_basic_auth_user
from service.intervals import setting_seconds
from service.journal import journal_path_problem
from service.transports.modbus_settings import (
    ModbusRtuOverTcpSettings,
    ModbusRtuSettings,
    ModbusTcpSettings,
)
from service.transports.serial import SerialSettings

__all__ = [
    "MAX_DEVICES",
    "MAX_INTERVAL",
    "MAX_TIMERS_PER_DEVICE",
    "MIN_INTERVAL",
    "DeviceSettings",
    "Interval",
    "LoggingSettings",
    "MetricsSettings",
    "RuntimeSettings",
    "Sections",
    "TimerSettings",
    "TransportSettings",
    "parse_listen",
]

MIN_INTERVAL = 0.01
"""The shortest poll/heartbeat interval accepted, seconds (10 ms)."""
MAX_INTERVAL = 7 * 86400.0
"""The longest poll/heartbeat interval accepted, seconds (one week)."""

NAME_PATTERN = r"^[a-zA-Z0-9_.:-]{1,64}$"
MAX_TIMERS_PER_DEVICE = 64
"""Polls and heartbeats of one device, each (keeps label cardinality bounded)."""
MAX_DEVICES = 5000
"""Devices in one config (tested to 10,000 timers in one process; see the README's limits)."""
_NAME = re.compile(NAME_PATTERN)
_LISTEN = re.compile(r"\[(?P<v6>[0-9a-fA-F:.]+)\]:(?P<port>\d+)|(?P<host>[^:\[\]\s]+):(?P<p>\d+)")


def _interval(value: Any) -> float:
    seconds = setting_seconds(value, what="interval")
    if seconds < MIN_INTERVAL:
        raise ValueError(f"{value!r} is below the minimum interval of {MIN_INTERVAL} s (10ms)")
    if seconds > MAX_INTERVAL:
        raise ValueError(f"{value!r} is above the maximum interval of {MAX_INTERVAL:.0f} s (7d)")
    return seconds


def _seconds(value: Any) -> float:
    return setting_seconds(value, what="duration")


def _phase(value: Any) -> Any:
    if value == "auto":
        return value
    try:
        return setting_seconds(value, what="phase", allow_zero=True)
    except ValueError as exc:
        raise ValueError(f"{exc}; or 'auto' to spread devices out") from None


def _name(value: Any) -> Any:
    if isinstance(value, str) and not _NAME.fullmatch(value):
        shown = repr(value) if len(value) <= 80 else f"{value[:60]!r}... ({len(value)} characters)"
        raise ValueError(f"{shown} is not a valid name (1 to 64 of: letters, digits and _ . : -)")
    return value


Interval = Annotated[float, BeforeValidator(_interval)]
"""A poll/heartbeat interval: seconds or a duration string, between 10 ms and 7 days."""
Seconds = Annotated[float, BeforeValidator(_seconds)]
"""A positive duration in seconds (number or duration string)."""
Name = Annotated[str, BeforeValidator(_name)]
Phase = Annotated[float | Literal["auto"], BeforeValidator(_phase)]
"""A schedule offset: seconds (number or duration string, zero allowed) or ``"auto"``."""

TransportSettings = Annotated[
    ModbusTcpSettings | ModbusRtuOverTcpSettings | ModbusRtuSettings | SerialSettings,
    Field(discriminator="kind"),
]
"""One of the transport settings models, chosen by its ``kind``."""


def parse_listen(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:9810`` for IPv6) into host and port.

    Raises:
        ValueError: naming the text when it is not ``HOST:PORT`` with a port 0-65535.
    """
    match = _LISTEN.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. '127.0.0.1:9810' or '[::1]:9810')")
    host = match.group("v6") or match.group("host")
    port = int(match.group("port") or match.group("p"))
    if match.group("v6"):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
    if port > 65535:
        raise ValueError(f"{text!r}: port {port} is not in 0-65535")
    return host, port


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricsSettings(_Section):
    """``[metrics]``: the Prometheus exporter."""

    listen: str = Field(
        default="127.0.0.1:9810",
        description="HOST:PORT the exporter listens on ('0.0.0.0:9810' for all interfaces).",
    )
    tls_cert: str | None = Field(default=None, description="PEM certificate file; enables HTTPS.")
    tls_key: str | None = Field(default=None, description="PEM private key file for tls_cert.")
    basic_auth_user: str | None = Field(default=None, description="HTTP basic auth user name.")
    basic_auth_password: SecretStr | None = Field(
        default=None,
        description="HTTP basic auth password, or 'sha256:' and the 64 hex digits of its "
        "SHA-256 (set both user and password).",
    )
    auth_healthz: bool = Field(
        default=True,
        description="With basic auth, require it for /healthz too; false leaves /healthz open "
        "for a container health check.",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("basic_auth_user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None:
            check_basic_auth_user(value)  # the exporter's own rule
        return value

    @field_validator("basic_auth_password")
    @classmethod
    def _password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_basic_auth_secret(value.get_secret_value())  # the exporter's own rule
        return value

    @model_validator(mode="after")
    def _check(self) -> MetricsSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        if (self.basic_auth_user is None) != (self.basic_auth_password is None):
            raise ValueError("basic_auth_user and basic_auth_password must be set together")
        return self

    @property
    def host(self) -> str:
        """The host part of ``listen``."""
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        """The port part of ``listen``."""
        return parse_listen(self.listen)[1]


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class LoggingSettings(_Section):
    """``[logging]``: log line format and level."""

    format: Literal["text", "json"] = Field(
        default="text", description="'text' (key=value lines) or 'json' (JSON lines)."
    )
    level: Annotated[
        Literal["debug", "info", "warning", "error", "critical"], BeforeValidator(_lower)
    ] = Field(default="info", description="Least severe level logged.")


class RuntimeSettings(_Section):
    """``[runtime]``: the process."""

    shutdown_timeout: Seconds = Field(
        default=5.0, description="Seconds allowed for a clean shutdown after SIGTERM/SIGINT."
    )
    hook_timeout: Seconds = Field(
        default=10.0,
        description="Seconds each driver start-up or shut-down hook (and each transport close) "
        "may take before it is cancelled and logged; the service goes on either way.",
    )
    loop: Literal["asyncio", "uvloop"] = Field(
        default="asyncio", description="Event loop implementation."
    )
    strict_budgets: bool = Field(
        default=False, description="Refuse to start when a timing budget exceeds an interval."
    )
    driver_dirs: list[str] = Field(
        default_factory=list, description="Directories of extra driver modules (*.py)."
    )
    wakeup: Literal["auto", "loop", "precise"] = Field(
        default="auto",
        description="Timer wake-ups: 'precise' arms a Linux timerfd so ticks start within a "
        "fraction of a millisecond (wake-ups coalesced to at most one per 0.9 ms); 'loop' uses "
        "only the event loop's call_at (1-2 ms late, fewer wake-ups on dense schedules); "
        "'auto' = precise on Linux with a real clock.",
    )
    max_loop_lag: Seconds = Field(
        default=1.0, description="Event-loop lag in seconds above which /healthz reports 503."
    )
    exit_after_unhealthy: Seconds | None = Field(
        default=None,
        description="Exit with code 70 after the service has been unhealthy (stalled loop or "
        "stale heartbeats) this many seconds in a row, so Docker or systemd restarts it. "
        "Unset: never exit by itself.",
    )
    journal: str | None = Field(
        default=None,
        description="Path of the SQLite event journal (e.g. /var/lib/gatebeat/events.db); "
        "unset: no journal.",
    )
    journal_max_age: Seconds = Field(
        default=30 * 86400.0, description="Seconds an event is kept in the journal."
    )
    journal_max_events: int = Field(
        default=100_000, ge=100, description="Events kept in the journal at most."
    )

    @field_validator("shutdown_timeout", "hook_timeout")
    @classmethod
    def _bounded(cls, value: float) -> float:
        if value > 3600:
            raise ValueError(f"{value!r} s is above the maximum of 3600 s")
        return value

    @field_validator("journal")
    @classmethod
    def _journal_path(cls, value: str | None) -> str | None:
        if value is not None:
            problem = journal_path_problem(value)
            if problem is not None:
                raise ValueError(f"{value!r}: {problem}")
        return value

    @field_validator("loop")
    @classmethod
    def _installed(cls, value: str) -> str:
        if value == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ValueError("'uvloop' is not installed (pip install 'gatebeat[uvloop]')")
        return value


class Sections(_Section):
    """The top-level tables other than ``devices``."""

    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)


class TimerSettings(BaseModel):
    """The common keys of one ``[[devices.polls]]`` / ``[[devices.heartbeats]]`` entry.

    Other keys are the driver's (its ``Poll``/``Heartbeat`` model) and are kept as extras.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    name: Name = Field(description="Unique per device; the 'timer' label.")
    interval: Interval = Field(description="Seconds between ticks (or '250ms', '5s', '1m').")
    phase: Phase = Field(
        default=0.0,
        description="Offset of the schedule grid, seconds (or '250ms', '1s'), or 'auto' to "
        "spread devices out.",
    )
    align: bool = Field(
        default=False,
        description="Heartbeats: grid on the clock's multiples of the interval (plus phase), "
        "not on the start time, so a restarted device keeps its place in the interval.",
    )
    immediate: bool = Field(default=False, description="First tick at start, not after interval.")
    timeout: Seconds | None = Field(
        default=None, description="Seconds a tick may take before it is cancelled."
    )

    @model_validator(mode="after")
    def _check(self) -> TimerSettings:
        if isinstance(self.phase, float) and not 0 <= self.phase < self.interval:
            raise ValueError(
                f"phase {self.phase!r} must be >= 0 and below the interval {self.interval} s"
            )
        return self


class DeviceSettings(BaseModel):
    """The common keys of one ``[[devices]]`` entry; driver ``Config`` keys are kept as extras."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: Name = Field(description="Unique device name; the 'device' label.")
    driver: str = Field(description="Driver name (see 'gatebeat drivers').")
    unit_id: int | None = Field(
        default=None,
        ge=0,
        le=255,
        description="Modbus unit (slave) id; default 1 for Modbus transports.",
    )
    transport: TransportSettings = Field(description="How to reach the device; see 'kind'.")
    read_only: bool = Field(default=False, description="Refuse every write (commissioning).")
    down_after_failures: int = Field(
        default=3, ge=1, le=1000, description="Consecutive failures before the device is down."
    )
    stale_after: Seconds | None = Field(
        default=None, description="Seconds without success before readings are stale."
    )
    enabled: bool = Field(default=True, description="false keeps the device configured but idle.")
    polls: list[TimerSettings] = Field(
        default_factory=list, max_length=MAX_TIMERS_PER_DEVICE, description="DELAY timers."
    )
    heartbeats: list[TimerSettings] = Field(
        default_factory=list, max_length=MAX_TIMERS_PER_DEVICE, description="FIXED timers."
    )
