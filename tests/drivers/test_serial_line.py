"""The generic ``serial_line`` driver: config validation, reply parsing, and polls on a pty."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from pydantic import ValidationError

from drivers import serial_line
from drivers.serial_line import Poll, ReplyMismatch, parse_reply
from service.bus import Bus
from service.driver import Device, Tick, TimerSpec
from service.http import Exporter
from service.runner import serve
from service.settings import load_settings
from service.simulators.serial import SerialSimulator
from service.transports.errors import DeviceTimeout
from service.transports.serial import SerialLineSession, SerialSettings
from tests.e2e.helpers import free_port
from tests.faults.support import Samples, await_until, scrape_where, value

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


SERVED = r"""
[metrics]
listen = "127.0.0.1:{metrics_port}"

[[devices]]
name = "th"
driver = "serial_line"
transport = {{ kind = "serial", port = "{port}", timeout = 0.3 }}

  [[devices.polls]]
  name = "env"
  interval = 0.05
  command = "READ?\r\n"
  reply = '^(?P<temperature_celsius>-?\d+(?:\.\d+)?)(?:,(?P<humidity_percent>\d+))?$'
"""


@pytest.mark.asyncio
async def test_a_group_the_reply_leaves_out_is_no_longer_exported(tmp_path: Path) -> None:
    """A group that did not take part in the match is left out of the readings, so its old
    value must leave ``/metrics`` too (it is not fresh), while the device stays up."""
    reply = ["21.5,40"]

    def reading(metrics: Samples, field: str) -> float | None:
        return value(metrics, f"gatebeat_reading_{field}", device="th")

    async with SerialSimulator(lambda _command: reply[0]) as sim:
        metrics_port = free_port()
        config = tmp_path / "gatebeat.toml"
        config.write_text(SERVED.format(metrics_port=metrics_port, port=sim.path))
        stop = asyncio.Event()
        ready = asyncio.Event()

        def on_ready(_exporter: Exporter) -> None:
            ready.set()

        task = asyncio.create_task(
            serve(load_settings(str(config), env={}), stop=stop, on_ready=on_ready,
                  handle_signals=False)
        )  # fmt: skip
        try:
            async with asyncio.timeout(10):
                await ready.wait()
            await await_until(
                scrape_where(
                    metrics_port,
                    lambda m: (
                        reading(m, "temperature_celsius") == 21.5
                        and reading(m, "humidity_percent") == 40.0
                    ),
                ),
                timeout=10,
                what="both readings exported",
            )
            reply[0] = "22.0"  # the humidity sensor stops reporting
            later = await await_until(
                scrape_where(metrics_port, lambda m: reading(m, "temperature_celsius") == 22.0),
                timeout=10,
                what="the new temperature exported",
            )
            assert reading(later, "humidity_percent") is None
            assert value(later, "gatebeat_device_up", device="th", driver="serial_line") == 1.0
            reply[0] = "22.5,41"  # and comes back
            await await_until(
                scrape_where(metrics_port, lambda m: reading(m, "humidity_percent") == 41.0),
                timeout=10,
                what="humidity exported again",
            )
        finally:
            stop.set()
            async with asyncio.timeout(10):
                assert await task == 0
