"""Settings of the serial-line transport, and which bus a serial device is on."""

from __future__ import annotations

import codecs
from typing import Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from service.intervals import setting_seconds

__all__ = ["SerialSettings", "bus_name", "default_gap"]


class SerialSettings(BaseModel):
    """Settings of a line-oriented serial device (``transport = { kind = "serial", ... }``).

    Durations are seconds (numbers, or strings such as ``"250ms"``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["serial"] = "serial"
    port: str = Field(min_length=1, description="Serial port path, e.g. /dev/ttyUSB0.")
    baudrate: int = Field(default=9600, gt=0, description="Line speed in bits per second.")
    parity: Literal["N", "E", "O"] = Field(
        default="N", description="Parity: N (none), E (even), O (odd)."
    )
    stopbits: Literal[1, 2] = Field(default=1, description="Stop bits: 1 or 2.")
    bytesize: Literal[5, 6, 7, 8] = Field(default=8, description="Data bits per character.")
    terminator: str = Field(
        default="\r\n", description="End of a reply frame (ignored when frame_length is set)."
    )
    frame_length: int | None = Field(
        default=None,
        gt=0,
        description="Fixed reply length in bytes, for devices without a terminator.",
    )
    max_frame_length: int = Field(
        default=1024,
        gt=0,
        description="Longest acceptable reply frame in bytes; longer is a FrameError.",
    )
    encoding: str = Field(default="ascii", description="Text encoding of commands and replies.")
    timeout: float = Field(default=1.0, description="Seconds to wait for a complete reply.")
    resync_quiet: float = Field(
        default=0.05, description="Seconds of silence awaited after a timeout or framing error."
    )
    reconnect_delay: float = Field(
        default=0.1,
        description=(
            "Seconds before reopening a port that failed, or retrying a device that stopped "
            "answering; doubles each time."
        ),
    )
    reconnect_delay_max: float = Field(
        default=10.0, description="The longest wait between reopen or retry attempts, seconds."
    )
    reconnect_jitter: float = Field(
        default=0.2,
        ge=0.0,
        le=1.0,
        description="Fraction by which a reopen or retry wait may shrink.",
    )
    connect_pause: float = Field(default=0.0, description="Pause after opening the port, seconds.")
    request_gap: float = Field(
        default=0.0, description="Minimum pause between two exchanges of this device, seconds."
    )
    bus: str | None = Field(
        default=None, description="Bus name shared with other devices on one line."
    )
    gap: float | None = Field(
        default=None,
        description="Silence between frames on the bus, seconds; a shared bus keeps the largest.",
    )

    @field_validator("timeout", "reconnect_delay", "reconnect_delay_max", mode="before")
    @classmethod
    def _positive_seconds(cls, value: object, info: ValidationInfo) -> float:
        return setting_seconds(value, what=str(info.field_name))

    @field_validator("resync_quiet", "connect_pause", "request_gap", mode="before")
    @classmethod
    def _non_negative_seconds(cls, value: object, info: ValidationInfo) -> float:
        return setting_seconds(value, what=str(info.field_name), allow_zero=True)

    @field_validator("gap", mode="before")
    @classmethod
    def _optional_gap(cls, value: object) -> float | None:
        return None if value is None else setting_seconds(value, what="gap", allow_zero=True)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"encoding: unknown text encoding {value!r}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.frame_length is None and not self.terminator:
            raise ValueError("terminator: must not be empty unless frame_length is set")
        if self.frame_length is not None and self.frame_length > self.max_frame_length:
            raise ValueError(
                f"frame_length: {self.frame_length} exceeds max_frame_length "
                f"{self.max_frame_length}"
            )
        if self.reconnect_delay_max < self.reconnect_delay:
            raise ValueError(
                f"reconnect_delay_max: {self.reconnect_delay_max} s is below "
                f"reconnect_delay {self.reconnect_delay} s"
            )
        try:
            self.terminator.encode(self.encoding)
        except UnicodeEncodeError:
            raise ValueError(
                f"terminator: {self.terminator!r} cannot be encoded as {self.encoding}"
            ) from None
        return self


def bus_name(settings: SerialSettings) -> str:
    """The bus a device is on: its ``bus`` setting, else ``"serial:<port>"``."""
    return settings.bus if settings.bus is not None else f"serial:{settings.port}"


def default_gap(settings: SerialSettings) -> float:
    """Seconds of silence between frames on the device's bus: ``gap`` if set, else 0.

    Line protocols frame by terminator, not by silence, so no gap is needed unless a device
    asks for one.
    """
    return settings.gap if settings.gap is not None else 0.0
