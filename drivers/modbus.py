"""Generic, config-only Modbus driver: a register table per poll, a watchdog write per heartbeat.

```toml
[[devices.polls]]
name = "temps"
interval = 5.0
registers = [{ field = "supply_temperature_celsius", table = "holding", address = 0,
               type = "int16", scale = 0.1 }]

[[devices.heartbeats]]
name = "watchdog"
interval = 1.0
write = { table = "holding", address = 100, value = "counter" }   # or "toggle", or an integer
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.driver import Device, Readings, Tick, TimerSpec
from service.values import RegisterSpec

TRANSPORTS = ["modbus-tcp", "modbus-rtu", "modbus-rtu-over-tcp"]


class Config(BaseModel):
    """The generic driver needs nothing beyond the common device settings."""

    model_config = ConfigDict(extra="forbid")


class Poll(BaseModel):
    """The registers one poll reads (grouped into as few requests as allowed)."""

    model_config = ConfigDict(extra="forbid")

    registers: list[RegisterSpec] = Field(
        min_length=1, description="Register specs read by this poll; fields must be unique."
    )

    @model_validator(mode="after")
    def _unique_fields(self) -> Self:
        seen: set[str] = set()
        for index, spec in enumerate(self.registers):
            if spec.field in seen:
                raise ValueError(f"registers[{index}].field: {spec.field!r} appears twice")
            seen.add(spec.field)
        return self


class HeartbeatWrite(BaseModel):
    """What a heartbeat writes, and where."""

    model_config = ConfigDict(extra="forbid")

    table: Literal["holding", "coil"] = Field(description="Table written: holding or coil.")
    address: int = Field(ge=0, le=65535, description="0-based address written.")
    value: Literal["counter", "toggle"] | int = Field(
        default="counter",
        description="'counter' (holding: 1, 2, ... wrapping at 65535), 'toggle' (0/1), or a "
        "constant.",
    )

    @model_validator(mode="after")
    def _fits_table(self) -> Self:
        if self.table == "coil" and self.value == "counter":
            raise ValueError("value: a coil cannot hold a counter (use 'toggle' or 0/1)")
        if isinstance(self.value, int):
            top = 1 if self.table == "coil" else 65535
            if not 0 <= self.value <= top:
                raise ValueError(f"value: {self.value} is outside 0..{top} for a {self.table}")
        return self


class Heartbeat(BaseModel):
    """One heartbeat's write (declared writable by this entry)."""

    model_config = ConfigDict(extra="forbid")

    write: HeartbeatWrite = Field(description="The watchdog write of every tick.")


def writable(device: Device, timers: Sequence[TimerSpec]) -> list[tuple[str, int]]:
    """The heartbeat writes of the config: the only addresses this device may be written at."""
    return [
        (t.options.write.table, t.options.write.address)
        for t in timers
        if t.kind == "heartbeat" and isinstance(t.options, Heartbeat)
    ]


async def poll(tick: Tick) -> Readings:
    """Read and decode the poll's registers."""
    options: Poll = tick.options
    readings: Readings = await tick.session.read(options.registers)
    return readings


async def heartbeat(tick: Tick) -> None:
    """Write the heartbeat's counter, toggle or constant (the address is declared writable)."""
    write: HeartbeatWrite = tick.options.write
    key = f"heartbeat:{tick.timer.name}"
    previous = int(tick.device.state.get(key, 0))
    if write.value == "counter":
        value = previous % 65535 + 1
    elif write.value == "toggle":
        value = 1 - previous
    else:
        value = write.value
    tick.session.allow_write(write.table, write.address)
    await tick.session.write(
        write.table, write.address, bool(value) if write.table == "coil" else value
    )
    tick.device.state[key] = value
