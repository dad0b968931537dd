"""Timing budgets, checked at config time: can each bus serve its polls and heartbeats?

Pauses, timeouts and retries add up. In the worst case every request on a bus times out and
is retried, and the bus serves one request at a time, so one *round* of a bus (one tick of each
of its timers) takes::

    sum over timers of  requests x (timeout x (retries + 1) + max(bus gap, request_gap))

A timer whose interval is shorter than that round may overrun (heartbeats) or fall behind
(polls) when its devices misbehave. :func:`check_budget` lists every such timer; it is a pure
function over the small dataclasses below, which the settings layer fills in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["BudgetError", "BudgetFinding", "BusLoad", "DeviceLoad", "TimerLoad", "check_budget"]


@dataclass(frozen=True, slots=True)
class TimerLoad:
    """One poll or heartbeat of a device.

    Attributes:
        name: the timer's name.
        interval: seconds between ticks.
        requests: requests one tick sends (after grouping; a heartbeat write is 1).
    """

    name: str
    interval: float
    requests: int


@dataclass(frozen=True, slots=True)
class DeviceLoad:
    """A device's timing settings and timers.

    Attributes:
        name: the device's name.
        timeout: seconds to wait for one reply.
        retries: retries after a missing reply.
        request_gap: least seconds between two requests to this device.
        timers: its polls and heartbeats.
    """

    name: str
    timeout: float
    retries: int
    timers: tuple[TimerLoad, ...]
    request_gap: float = 0.0

    def exchange_seconds(self, bus_gap: float) -> float:
        """Worst-case seconds one request of this device holds the bus, gap included."""
        return self.timeout * (self.retries + 1) + max(bus_gap, self.request_gap)


@dataclass(frozen=True, slots=True)
class BusLoad:
    """A bus and the devices on it.

    Attributes:
        name: the bus name.
        gap: seconds of silence between frames.
        devices: the devices sharing it.
    """

    name: str
    gap: float
    devices: tuple[DeviceLoad, ...]


@dataclass(frozen=True, slots=True)
class BudgetFinding:
    """A timer whose interval is shorter than the worst-case round of its bus.

    Attributes:
        bus: the bus name.
        device: the device name.
        timer: the timer name.
        needed_seconds: worst-case seconds of one round of the bus.
        own_seconds: worst-case seconds of this timer's own requests.
        interval: the timer's interval, seconds.
    """

    bus: str
    device: str
    timer: str
    needed_seconds: float
    own_seconds: float
    interval: float

    def __str__(self) -> str:
        return (
            f"bus {self.bus!r}: devices[{self.device}].{self.timer}: interval {self.interval:g} s "
            f"is shorter than the worst case {self.needed_seconds:.3f} s of one round of the bus "
            f"(this timer alone: {self.own_seconds:.3f} s; lower timeout or retries, or "
            f"lengthen the interval)"
        )


class BudgetError(ValueError):
    """Raised by a strict :func:`check_budget`; ``findings`` lists every problem."""

    def __init__(self, findings: list[BudgetFinding]) -> None:
        super().__init__("timing budget exceeded:\n" + "\n".join(f"  {f}" for f in findings))
        self.findings = findings


def check_budget(buses: Iterable[BusLoad], *, strict: bool = False) -> list[BudgetFinding]:
    """Return every timer whose interval is shorter than its bus's worst-case round.

    Args:
        buses: every bus with its devices and timers.
        strict: raise instead of returning findings.

    Raises:
        BudgetError: ``strict`` and at least one finding.
    """
    findings: list[BudgetFinding] = []
    for bus in buses:
        own: dict[tuple[str, str], float] = {}
        for device in bus.devices:
            exchange = device.exchange_seconds(bus.gap)
            for timer in device.timers:
                own[device.name, timer.name] = timer.requests * exchange
        round_seconds = sum(own.values())
        for device in bus.devices:
            for timer in device.timers:
                if round_seconds > timer.interval:
                    findings.append(
                        BudgetFinding(
                            bus=bus.name,
                            device=device.name,
                            timer=timer.name,
                            needed_seconds=round_seconds,
                            own_seconds=own[device.name, timer.name],
                            interval=timer.interval,
                        )
                    )
    if strict and findings:
        raise BudgetError(findings)
    return findings
