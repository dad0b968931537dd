"""Settings models of the three Modbus transports (re-exported by ``service.transports.modbus``).

Every duration is seconds: a number, or a string with a unit (``"250ms"``, ``"5s"``).
Defaults suit a gateway: a 1 s timeout with one retry, reconnect after 0.1 s doubling to a 10 s
cap (pymodbus's own 300 s cap is far too long to notice a device coming back).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from service.intervals import setting_seconds

__all__ = [
    "ModbusRtuOverTcpSettings",
    "ModbusRtuSettings",
    "ModbusSettings",
    "ModbusTcpSettings",
    "Pause",
    "Seconds",
]


def _positive(value: Any) -> float:
    return setting_seconds(value, what="duration")


def _non_negative(value: Any) -> float:
    return setting_seconds(value, what="pause", allow_zero=True)


Seconds = Annotated[float, BeforeValidator(_positive)]
"""A positive duration in seconds (number or ``"250ms"``-style string)."""
Pause = Annotated[float, BeforeValidator(_non_negative)]
"""A duration in seconds that may be zero."""


class _ModbusCommon(BaseModel):
    """Settings shared by every Modbus transport."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: Seconds = Field(default=1.0, description="Seconds to wait for each reply.")
    retries: int = Field(
        default=1, ge=0, le=10, description="Retries after a request got no reply in time."
    )
    reconnect_delay: Seconds = Field(
        default=0.1, description="Seconds before the first reconnect attempt; doubles each time."
    )
    reconnect_delay_max: Seconds = Field(
        default=10.0, description="The longest wait between reconnect attempts, seconds."
    )
    reconnect_jitter: float = Field(
        default=0.2, ge=0.0, le=1.0, description="Fraction by which a reconnect wait may shrink."
    )
    connect_pause: Pause = Field(
        default=0.0, description="Seconds to stay quiet after connecting, for slow devices."
    )
    request_gap: Pause = Field(
        default=0.0, description="Least seconds between two requests to this device."
    )
    one_request_per_field: bool = Field(
        default=False, description="Read every register spec on its own (no grouping)."
    )
    max_fill: int = Field(
        default=0,
        ge=0,
        le=124,
        description="Unused registers a grouped read may span between two fields.",
    )
    bus: str | None = Field(
        default=None, description="Bus name; devices with the same bus take turns on it."
    )
    gap: Pause | None = Field(
        default=None,
        description=(
            "Seconds of silence between frames on the bus (default: RTU 3.5 chars, TCP 0); "
            "a shared bus keeps the largest gap of its devices."
        ),
    )


class ModbusTcpSettings(_ModbusCommon):
    """Modbus TCP (MBAP framing) to a device or gateway."""

    kind: Literal["modbus-tcp"] = "modbus-tcp"
    host: str = Field(description="Host name or IP address of the device or gateway.")
    port: int = Field(default=502, ge=1, le=65535, description="TCP port.")


class ModbusRtuOverTcpSettings(_ModbusCommon):
    """Modbus RTU frames tunnelled over a TCP connection (serial device servers)."""

    kind: Literal["modbus-rtu-over-tcp"] = "modbus-rtu-over-tcp"
    host: str = Field(description="Host name or IP address of the serial device server.")
    port: int = Field(default=502, ge=1, le=65535, description="TCP port.")


class ModbusRtuSettings(_ModbusCommon):
    """Modbus RTU on a local serial port (RS-485/RS-232)."""

    kind: Literal["modbus-rtu"] = "modbus-rtu"
    port: str = Field(description="Serial port, e.g. /dev/ttyUSB0.")
    baudrate: int = Field(default=9600, gt=0, description="Bits per second.")
    parity: Literal["N", "E", "O"] = Field(default="N", description="Parity: N, E or O.")
    stopbits: Literal[1, 2] = Field(default=1, description="Stop bits.")
    bytesize: Literal[7, 8] = Field(default=8, description="Data bits per character.")


ModbusSettings = ModbusTcpSettings | ModbusRtuOverTcpSettings | ModbusRtuSettings
