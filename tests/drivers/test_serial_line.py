"""The generic ``serial_line`` driver: config validation, reply parsing, and polls on a pty."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from pydantic import ValidationError

from drivers import serial_line
from drivers.serial_line import Poll, ReplyMismatch, parse_reply
from service.bus import Bus
from service.driver import Device, Tick, TimerSpec
from service.simulators.serial import SerialSimulator
from service.transports.errors import DeviceTimeout
from service.transports.serial import SerialLineSession, SerialSettings

THERMO = r"^(?P<temperature_celsius>-?\d+(?:\.\d+)?)$"


def test_poll_validates_the_pattern_and_names_field_and_pattern() -> None:
    with pytest.raises(ValidationError) as caught:
        Poll(command="READ?\r\n", reply="^(?P<t>[0-9+$")
    text = str(caught.value)
    assert "reply" in text
    assert "'^(?P<t>[0-9+$'" in text
    assert "not a valid regular expression" in text

    with pytest.raises(ValidationError, match=r"(?s)reply.*has no named group"):
        Poll(command="READ?\r\n", reply=r"^\d+$")
    with pytest.raises(ValidationError, match="command"):
        Poll(command="", reply=THERMO)
    with pytest.raises(ValidationError, match="Extra inputs"):
        Poll(command="READ?\r\n", reply=THERMO, registers=[])


def test_toml_escapes_reach_the_command() -> None:
    import tomllib

    table = tomllib.loads("command = \"READ?\\r\\n\"\nreply = '^(?P<v>\\d+)$'\n")
    options = Poll.model_validate(table)
    assert options.command == "READ?\r\n"
    assert options.reply == r"^(?P<v>\d+)$"


def test_parse_reply_converts_numbers_and_keeps_text() -> None:
    options = Poll(
        command="S?\r\n",
        reply=r"^(?P<state>\w+),(?P<level_percent>[-+.\deE]+),(?P<flow>[^,]+)(?:,(?P<extra>\d+))?$",
    )
    readings = parse_reply(options, "RUN,-1.5e2,n/a", device="tank", poll_name="status")
    assert readings == {"state": "RUN", "level_percent": -150.0, "flow": "n/a"}
    assert isinstance(readings["level_percent"], float)
    assert parse_reply(options, "STOP,7,3,9", device="tank", poll_name="status") == {
        "state": "STOP",
        "level_percent": 7.0,
        "flow": 3.0,
        "extra": 9.0,
    }


def test_parse_reply_mismatch_names_device_poll_reply_and_pattern() -> None:
    options = Poll(command="READ?\r\n", reply=THERMO)
    with pytest.raises(ReplyMismatch) as caught:
        parse_reply(options, "ERR 42", device="thermo", poll_name="temperature")
    message = str(caught.value)
    for part in ("'thermo'", "'temperature'", "'ERR 42'", repr(THERMO)):
        assert part in message


@asynccontextmanager
async def thermo_device(sim: SerialSimulator) -> AsyncIterator[Device]:
    settings = SerialSettings(port=sim.path, timeout=0.3)
    session = SerialLineSession(settings, device="thermo", bus=Bus("serial:thermo"))
    try:
        yield Device(name="thermo", driver="serial_line", config=None, session=session)
    finally:
        await session.close()


def tick(device: Device, options: Poll, name: str = "temperature") -> Tick:
    return Tick(device, TimerSpec(name, "poll", 1.0, options), number=0, due=0.0)


def test_module_surface() -> None:
    assert serial_line.TRANSPORTS == ("serial",)
    assert serial_line.Poll is Poll


@pytest.mark.asyncio
async def test_poll_on_a_pty() -> None:
    options = Poll(command="READ?\r\n", reply=THERMO)
    async with SerialSimulator({"READ?": "-3.25"}) as sim, thermo_device(sim) as device:
        assert await serial_line.poll(tick(device, options)) == {"temperature_celsius": -3.25}
        sim.responder = {"READ?": "OVERRANGE"}
        with pytest.raises(ReplyMismatch, match=r"device 'thermo': poll 'temperature': reply "):
            await serial_line.poll(tick(device, options))
        sim.silent = True
        with pytest.raises(DeviceTimeout, match="device 'thermo'"):
            await serial_line.poll(tick(device, options))
        assert [r.command for r in sim.requests] == ["READ?"] * 3
