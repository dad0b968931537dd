"""Example driver: an ASCII thermometer on a serial line (``READ?`` -> ``21.50``).

The device answers ``READ?`` followed by CR LF with the temperature in degrees Celsius as a plain
decimal number on one line. Its simulator is
:func:`service.simulators.serial.serial_sensor_profile`.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from service.driver import Readings, Tick

__all__ = ["DEFAULT_POLLS", "TRANSPORTS", "Config", "SensorReplyError", "poll"]

TRANSPORTS = ("serial",)
DEFAULT_POLLS = [{"name": "temperature", "interval": 1.0}]


class SensorReplyError(ValueError):
    """The sensor answered something that is not a temperature."""


class Config(BaseModel):
    """Settings of one ASCII serial thermometer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: str = Field(
        default="READ?\r\n", min_length=1, description="Command that asks for the temperature."
    )
    offset_celsius: float = Field(
        default=0.0, description="Calibration offset added to every reading, in degrees Celsius."
    )


async def poll(tick: Tick) -> Readings:
    """Ask for the temperature and return ``temperature_celsius``.

    Raises:
        SensorReplyError: the reply is not a finite number.
        TransportError: the transport failed (device unavailable, timeout, bad frame).
    """
    config: Config = tick.config if tick.config is not None else Config()
    reply: str = await tick.session.request(config.command)
    try:
        value = float(reply.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise SensorReplyError(
            f"device {tick.device.name!r}: poll {tick.timer.name!r}: reply {reply!r} to "
            f"{config.command!r} is not a temperature"
        )
    return {"temperature_celsius": value + config.offset_celsius}
