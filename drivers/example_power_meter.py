"""Example driver: a power meter with float32 readings and a FIXED watchdog write."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from service.driver import Device, Readings, Tick, TimerSpec
from service.values import RegisterSpec

TRANSPORTS = ["modbus-tcp", "modbus-rtu", "modbus-rtu-over-tcp"]
DEFAULT_POLLS = [{"name": "readings", "interval": 1.0}]
DEFAULT_HEARTBEATS = [{"name": "watchdog", "interval": 1.0}]

REGISTERS = [
    RegisterSpec(field="voltage_volts", table="input", address=0, type="float32"),
    RegisterSpec(field="current_amperes", table="input", address=2, type="float32"),
    RegisterSpec(field="power_watts", table="input", address=4, type="float32"),
    RegisterSpec(
        field="energy_joules", table="input", address=6, type="float32", scale=3600.0
    ),  # the meter counts watt-hours; Prometheus wants base units
]


class Config(BaseModel):
    """Power meter settings."""

    watchdog_address: int = Field(
        default=100, ge=0, le=65535, description="Holding register the watchdog counter goes to."
    )


async def poll(tick: Tick) -> Readings:
    """Read voltage, current, power and energy in one request."""
    readings: Readings = await tick.session.read(REGISTERS)
    return readings


def writable(device: Device, timers: Sequence[TimerSpec]) -> list[tuple[str, int]]:
    """The one register this driver writes: the watchdog counter."""
    return [("holding", (device.config or Config()).watchdog_address)]


async def heartbeat(tick: Tick) -> None:
    """Write an incrementing counter (1..65535, wrapping) to the watchdog register."""
    address = (tick.config or Config()).watchdog_address
    counter = int(tick.device.state.get("watchdog", 0)) % 65535 + 1
    tick.session.allow_write("holding", address)
    await tick.session.write("holding", address, counter)
    tick.device.state["watchdog"] = counter
