"""The ``example_serial_sensor`` driver against its simulator on a pseudo-terminal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from itertools import count

import pytest

from drivers import example_serial_sensor as sensor
from service.bus import Bus
from service.driver import Device, Tick, TimerSpec
from service.simulators.serial import SerialSimulator, serial_sensor_profile
from service.transports.serial import SerialLineSession, SerialSettings


def test_config_documents_every_field() -> None:
    config = sensor.Config()
    assert config.command == "READ?\r\n"
    assert config.offset_celsius == 0.0
    assert all(field.description for field in sensor.Config.model_fields.values())
    assert sensor.TRANSPORTS == ("serial",)
    assert sensor.DEFAULT_POLLS == [{"name": "temperature", "interval": 1.0}]


@asynccontextmanager
async def sensor_device(
    sim: SerialSimulator, config: sensor.Config | None
) -> AsyncIterator[Device]:
    settings = SerialSettings(port=sim.path, timeout=0.3)
    session = SerialLineSession(settings, device="lab", bus=Bus("serial:lab"))
    try:
        yield Device(name="lab", driver="example_serial_sensor", config=config, session=session)
    finally:
        await session.close()


def tick(device: Device) -> Tick:
    return Tick(device, TimerSpec("temperature", "poll", 1.0, None), number=0, due=0.0)


@pytest.mark.asyncio
async def test_reads_the_simulated_temperature() -> None:
    values = count(20)
    profile = serial_sensor_profile(temperature_celsius=lambda: next(values) + 0.25)
    async with SerialSimulator(profile) as sim, sensor_device(sim, sensor.Config()) as device:
        assert await sensor.poll(tick(device)) == {"temperature_celsius": 20.25}
        assert await sensor.poll(tick(device)) == {"temperature_celsius": 21.25}
        assert [r.command for r in sim.requests] == ["READ?", "READ?"]


@pytest.mark.asyncio
async def test_offset_and_missing_config() -> None:
    async with SerialSimulator(serial_sensor_profile()) as sim:
        async with sensor_device(sim, sensor.Config(offset_celsius=-0.5)) as device:
            assert await sensor.poll(tick(device)) == {"temperature_celsius": 21.0}
        async with sensor_device(sim, None) as device:
            assert await sensor.poll(tick(device)) == {"temperature_celsius": 21.5}


@pytest.mark.asyncio
async def test_non_numeric_reply_is_an_error() -> None:
    async with (
        SerialSimulator(serial_sensor_profile()) as sim,
        sensor_device(sim, sensor.Config(command="BOGUS\r\n")) as device,
    ):
        with pytest.raises(sensor.SensorReplyError, match=r"device 'lab'.*reply 'ERR'"):
            await sensor.poll(tick(device))
