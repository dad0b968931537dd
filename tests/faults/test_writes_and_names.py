"""Hardening (issue 6 §4): writes reach only declared addresses; unsafe names are refused.

Every public write path is driven against a real pymodbus server: ``ModbusSession.write``,
``ModbusSession.write_value``, the generic ``modbus`` driver's heartbeat through ``serve()``,
and ``read_only = true`` through ``serve()``. The simulator's own register table and its log of
exchanges are the witnesses: nothing undeclared is ever put on the line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from service.bus import Bus
from service.http import Exporter
from service.runner import serve
from service.settings import ConfigError, load_settings
from service.simulators.modbus import ModbusSimulator, UnitProfile
from service.transports.errors import WriteRefused
from service.transports.modbus import ModbusSession
from service.transports.modbus_settings import ModbusTcpSettings
from service.values import RegisterSpec
from tests.e2e.helpers import free_port, scrape
from tests.faults.support import await_until, family, value

_WRITE_FUNCTIONS = {5, 6, 15, 16}


def _writes(simulator: ModbusSimulator) -> list[tuple[int, int, int]]:
    return [
        (e.function_code, e.address, e.count)
        for e in simulator.exchanges
        if e.function_code in _WRITE_FUNCTIONS
    ]


def _spec(table: str, address: int, type_: str) -> RegisterSpec:
    return RegisterSpec.model_validate(
        {"field": "x", "table": table, "address": address, "type": type_}
    )


def _snapshot(simulator: ModbusSimulator) -> dict[str, list[int]]:
    return {t: simulator.registers(t, 0, 1024) for t in ("coil", "discrete", "holding", "input")}


def _session(port: int, *, read_only: bool = False) -> ModbusSession:
    return ModbusSession(
        ModbusTcpSettings(host="127.0.0.1", port=port, timeout=1.0),
        device="dev",
        unit_id=1,
        bus=Bus("test"),
        read_only=read_only,
        writable=[("holding", 100), ("coil", 7)],
    )


@pytest.mark.asyncio
async def test_session_writes_only_declared_addresses() -> None:
    async with ModbusSimulator(UnitProfile(unit_id=1)) as simulator:
        port = await simulator.start_tcp()
        session = _session(port)
        try:
            before = _snapshot(simulator)
            refused: list[Callable[[], object]] = [
                lambda: session.write("holding", 101, 1),  # neighbour of a declared one
                lambda: session.write("holding", 99, [1, 2]),  # block covering 99, 100
                lambda: session.write("holding", 100, [1, 2]),  # block spilling to 101
                lambda: session.write("coil", 100, True),  # declared as holding, not coil
                lambda: session.write("input", 100, 1),  # a read-only table
                lambda: session.write("discrete", 7, True),
                lambda: session.write_value(_spec("holding", 100, "uint32"), 1),  # 100..101
                lambda: session.write_value(_spec("holding", 99, "uint16"), 1),
                lambda: session.write_value(_spec("input", 100, "uint16"), 1),
            ]
            for attempt in refused:
                with pytest.raises(WriteRefused):
                    await attempt()  # type: ignore[misc]
            assert _writes(simulator) == [], "a refused write never reaches the line"
            assert _snapshot(simulator) == before

            await session.write("holding", 100, 4242)
            await session.write_value(_spec("coil", 7, "bool"), True)
            after = _snapshot(simulator)
            assert after["holding"][100] == 4242
            assert simulator.registers("coil", 7)[0] == 1
            before["holding"][100] = after["holding"][100]
            before["coil"] = after["coil"]
            assert simulator.registers("coil", 0, 1024) == [int(a == 7) for a in range(1024)]
            assert after == before, "only the two declared addresses changed"
            assert _writes(simulator) == [(6, 100, 1), (5, 7, 1)]
            with pytest.raises(ValueError):
                session.allow_write("input", 0)  # input registers cannot be declared writable
        finally:
            await session.close()


@pytest.mark.asyncio
async def test_read_only_session_refuses_even_declared_addresses() -> None:
    async with ModbusSimulator(UnitProfile(unit_id=1)) as simulator:
        port = await simulator.start_tcp()
        session = _session(port, read_only=True)
        try:
            with pytest.raises(WriteRefused):
                await session.write("holding", 100, 1)
            with pytest.raises(WriteRefused):
                await session.write_value(_spec("coil", 7, "bool"), True)
            assert await session.read_raw("holding", 100, 1) == [0]  # reads still work
            assert _writes(simulator) == []
        finally:
            await session.close()


CONFIG = """
[metrics]
listen = "127.0.0.1:{metrics_port}"

[[devices]]
name = "plc"
driver = "modbus"
unit_id = 1
read_only = {read_only}
transport = {{ kind = "modbus-tcp", host = "127.0.0.1", port = {port}, timeout = 0.5 }}

  [[devices.polls]]
  name = "status"
  interval = 0.05
  registers = [{{ field = "status", table = "holding", address = 10, type = "uint16" }}]

  [[devices.heartbeats]]
  name = "watchdog"
  interval = 0.05
  write = {{ table = "holding", address = 100, value = "counter" }}
"""


async def _serve_until(
    tmp_path: Path, *, read_only: bool, done: Callable[[ModbusSimulator, dict], bool]
) -> tuple[ModbusSimulator, dict, dict[str, list[int]]]:
    simulator = ModbusSimulator(UnitProfile(unit_id=1))
    port = await simulator.start_tcp()
    simulator.set_registers("holding", 10, [7])
    before = _snapshot(simulator)
    metrics_port = free_port()
    config = tmp_path / "gatebeat.toml"
    config.write_text(
        CONFIG.format(
            metrics_port=metrics_port, port=port, read_only="true" if read_only else "false"
        )
    )
    settings = load_settings(str(config), env={})
    stop = asyncio.Event()
    ready = asyncio.Event()

    def on_ready(_exporter: Exporter) -> None:
        ready.set()

    task = asyncio.create_task(serve(settings, stop=stop, on_ready=on_ready, handle_signals=False))
    try:
        async with asyncio.timeout(10):
            await ready.wait()

        def probe() -> dict | None:
            metrics = scrape(metrics_port)
            return metrics if metrics is not None and done(simulator, metrics) else None

        metrics = await await_until(probe, timeout=10, what="enough heartbeats")
    finally:
        stop.set()
        async with asyncio.timeout(10):
            assert await task == 0
        await simulator.close()
    return simulator, metrics, before


@pytest.mark.asyncio
async def test_modbus_driver_heartbeat_writes_only_its_configured_address(tmp_path: Path) -> None:
    simulator, metrics, before = await _serve_until(
        tmp_path,
        read_only=False,
        done=lambda sim, m: sim.registers("holding", 100)[0] >= 5,
    )
    writes = _writes(simulator)
    assert writes and set(writes) == {(6, 100, 1)}, writes
    after = _snapshot(simulator)
    assert after["holding"][100] >= 5
    after["holding"][100] = before["holding"][100]
    assert after == before, "nothing but holding 100 changed"
    assert value(metrics, "gatebeat_reading_status", device="plc") == 7.0


@pytest.mark.asyncio
async def test_read_only_device_refuses_heartbeat_write_counts_it_and_keeps_reading(
    tmp_path: Path,
) -> None:
    def refused_a_few(sim: ModbusSimulator, metrics: dict) -> bool:
        refused = value(
            metrics,
            "gatebeat_tick_errors_total",
            device="plc",
            timer="watchdog",
            error="WriteRefused",
        )
        return refused is not None and refused >= 3

    simulator, metrics, before = await _serve_until(tmp_path, read_only=True, done=refused_a_few)
    assert _writes(simulator) == [], "a read-only device gets no write on the line"
    assert _snapshot(simulator) == before
    errors = family(metrics, "gatebeat_tick_errors_total", device="plc")
    assert {dict(labels)["error"] for labels in errors} == {"WriteRefused"}
    assert value(metrics, "gatebeat_reading_status", device="plc") == 7.0, "reads go on"


# -- names -------------------------------------------------------------------------------

_UNSAFE = [
    "",
    "has space",
    'quo"te',
    "back\\slash",
    "new\nline",
    "trailing-newline\n",  # a regex anchored with $ lets this one through
    "brace{x}",
    "comma,x",
    "eq=x",
    "slash/x",
    "ünïcode",
    "tab\tx",
    "emoji-\U0001f525",
]


def _config(device: str, timer: str) -> str:
    def quoted(text: str) -> str:
        return (
            '"'
            + text.replace("\\", "\\\\")
            .replace('"', '\\"')
            .replace("\n", "\\n")
            .replace("\t", "\\t")
            + '"'
        )

    return f"""
[[devices]]
name = {quoted(device)}
driver = "modbus"
transport = {{ kind = "modbus-tcp", host = "127.0.0.1", port = 5020 }}

  [[devices.heartbeats]]
  name = {quoted(timer)}
  interval = 1.0
  write = {{ table = "holding", address = 100, value = "counter" }}
"""


@pytest.mark.parametrize("name", _UNSAFE, ids=repr)
@pytest.mark.parametrize("where", ["device", "timer"])
def test_unsafe_label_values_are_refused(tmp_path: Path, name: str, where: str) -> None:
    path = tmp_path / "gatebeat.toml"
    device, timer = (name, "watchdog") if where == "device" else ("boiler", name)
    path.write_text(_config(device, timer))
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path), env={})
    problem = "\n".join(caught.value.problems)
    assert ".name: " in problem and "not a valid name" in problem, problem


@pytest.mark.parametrize("where", ["device", "timer"])
def test_unbounded_names_are_refused(tmp_path: Path, where: str) -> None:
    long_name = "a" * 10_000  # a label value this long is a cardinality/size problem
    path = tmp_path / "gatebeat.toml"
    device, timer = (long_name, "watchdog") if where == "device" else ("boiler", long_name)
    path.write_text(_config(device, timer))
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path), env={})
    assert any(".name: " in p for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize("where", ["device", "timer"])
def test_a_refused_long_name_gives_a_short_problem_line(tmp_path: Path, where: str) -> None:
    """An invalid name is located by index (settings_errors' own rule) and not echoed whole."""
    long_name = "a" * 10_000
    path = tmp_path / "gatebeat.toml"
    device, timer = (long_name, "watchdog") if where == "device" else ("boiler", long_name)
    path.write_text(_config(device, timer))
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path), env={})
    expected = "devices[0].name: " if where == "device" else "devices[boiler].heartbeats[0].name: "
    assert [p[: len(expected)] for p in caught.value.problems] == [expected]
    assert max(len(p) for p in caught.value.problems) < 300


def test_safe_names_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "gatebeat.toml"
    path.write_text(_config("meter-1.a:b_c", "heart_beat-2"))
    settings = load_settings(str(path), env={})
    assert [d.name for d in settings.resolved_devices] == ["meter-1.a:b_c"]
