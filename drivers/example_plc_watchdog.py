"""Example driver: keep a PLC's watchdog alive by writing an incrementing counter (FIXED)."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from service.driver import Device, Tick, TimerSpec

TRANSPORTS = ["modbus-tcp", "modbus-rtu", "modbus-rtu-over-tcp"]
DEFAULT_HEARTBEATS = [{"name": "watchdog", "interval": 1.0}]


class Config(BaseModel):
    """PLC watchdog settings."""

    address: int = Field(
        default=100, ge=0, le=65535, description="Holding register the PLC watches."
    )
    wrap: int = Field(
        default=65535, ge=2, le=65535, description="The counter runs 1..wrap, then starts over."
    )


def writable(device: Device, timers: Sequence[TimerSpec]) -> list[tuple[str, int]]:
    """The one register this driver writes: the watchdog counter."""
    return [("holding", (device.config or Config()).address)]


async def heartbeat(tick: Tick) -> None:
    """Write the next counter value; the PLC trips its watchdog when it stops changing."""
    config = tick.config or Config()
    counter = int(tick.device.state.get("counter", 0)) % config.wrap + 1
    tick.session.allow_write("holding", config.address)
    await tick.session.write("holding", config.address, counter)
    tick.device.state["counter"] = counter
