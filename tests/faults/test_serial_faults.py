"""Case 3: a megabyte of noise on a serial line, and a serial port that goes away and returns.

A real ``python -m service run`` process polls a ``serial_line`` device on a pseudo-terminal
(:class:`SerialSimulator` behind a stable symlink, as a USB adapter's udev name would be).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from service.simulators.serial import SerialSimulator, serial_sensor_profile
from tests.e2e.helpers import free_port, gatebeat, scrape, stop
from tests.faults.support import Samples, await_until, family, scrape_where, value

NOISE = 1024 * 1024

CONFIG = """
[metrics]
listen = "127.0.0.1:{metrics_port}"

[runtime]
shutdown_timeout = 3.0

[[devices]]
name = "thermo"
driver = "serial_line"
down_after_failures = 1

  [devices.transport]
  kind = "serial"
  port = "{port}"
  baudrate = 9600
  timeout = 0.3
  reconnect_delay = 0.05
  reconnect_delay_max = 0.2

  [[devices.polls]]
  name = "temperature"
  interval = 0.1
  command = "READ?\\r\\n"
  reply = '^(?P<temperature_celsius>-?\\d+(?:\\.\\d+)?)$'
"""


def _up(metrics: Samples) -> float | None:
    return value(metrics, "gatebeat_device_up", device="thermo", driver="serial_line")


def _reading(metrics: Samples) -> float | None:
    return value(metrics, "gatebeat_reading_temperature_celsius", device="thermo")


def _reads(temperature: float):
    return lambda m: _up(m) == 1.0 and _reading(m) == pytest.approx(temperature)


@pytest.mark.e2e
@pytest.mark.realtime
@pytest.mark.asyncio
async def test_noise_on_the_line_and_a_vanishing_port(tmp_path: Path) -> None:
    temperature = [21.5]
    sim = SerialSimulator(
        serial_sensor_profile(temperature_celsius=lambda: temperature[0]),
        link=tmp_path / "ttyGATEBEAT0",
    )
    await sim.start()
    metrics_port = free_port()
    config = tmp_path / "gatebeat.toml"
    config.write_text(CONFIG.format(metrics_port=metrics_port, port=sim.path))
    log = tmp_path / "gatebeat.log"
    figures: dict[str, float] = {}
    try:
        with gatebeat("run", "--config", str(config), log=log) as process:
            await await_until(
                scrape_where(metrics_port, _reads(21.5)), timeout=20, what="thermo reads 21.5"
            )

            # 1 MiB of random bytes (CR LF included, so plenty of bogus "lines") while polling.
            # Spread over ~1.3 s (64 bursts of 16 KiB, 20 ms apart) so a dozen polls meet it.
            noise = random.Random(6).randbytes(NOISE)
            chunk = NOISE // 64
            t0 = time.monotonic()
            for start in range(0, NOISE, chunk):
                sim.inject(noise[start : start + chunk])
                await asyncio.sleep(0.02)
            async with asyncio.timeout(60):
                await sim.wait_idle()
            figures["noise_drained_s"] = time.monotonic() - t0
            assert process.poll() is None, "gatebeat died of line noise"

            # After the noise, the device must read the *new* value: a reading left over from
            # before, or parsed out of the garbage, cannot pass.
            temperature[0] = 37.25
            t1 = time.monotonic()
            await await_until(
                scrape_where(metrics_port, _reads(37.25)), timeout=10, what="correct after noise"
            )
            figures["recovered_after_noise_s"] = time.monotonic() - t1
            stable = 0
            for _ in range(10):  # ten scrapes over about a second: it stays right
                metrics = await asyncio.to_thread(scrape, metrics_port)
                assert metrics is not None and _reads(37.25)(metrics), metrics
                stable += 1
                await asyncio.sleep(0.1)
            after = await asyncio.to_thread(scrape, metrics_port)
            assert after is not None
            errors = {
                dict(labels)["error"]: v
                for labels, v in family(
                    after, "gatebeat_tick_errors_total", device="thermo"
                ).items()
            }

            # The port disappears (symlink gone, pty closed) and comes back.
            await sim.stop()
            assert not Path(sim.path).exists()
            t2 = time.monotonic()
            gone = await await_until(
                scrape_where(metrics_port, lambda m: _up(m) == 0.0),
                timeout=10,
                what="thermo down when its port vanished",
            )
            figures["down_after_unplug_s"] = time.monotonic() - t2
            assert _reading(gone) is None
            temperature[0] = 19.0
            await sim.start()
            t3 = time.monotonic()
            await await_until(
                scrape_where(metrics_port, _reads(19.0)), timeout=10, what="thermo back"
            )
            figures["up_after_replug_s"] = time.monotonic() - t3
            assert process.poll() is None
            code, seconds = await asyncio.to_thread(stop, process)
    finally:
        await sim.stop()
    print(f"\n{figures} errors during noise: {errors}")
    assert code == 0 and seconds < 5.0
    assert stable == 10
    # Whether a burst lands inside an exchange (a FrameError) or between two (discarded as
    # stale input) depends on timing; either way no wrong value may come out, checked above.
    assert set(errors) <= {"FrameError", "DeviceTimeout", "ReplyMismatch"}, errors
    assert figures["recovered_after_noise_s"] < 2.0
    assert figures["down_after_unplug_s"] < 2.0
    assert figures["up_after_replug_s"] < 2.0
    text = log.read_text()
    assert "Traceback" not in text, text[-5000:]
