"""A simulated Modbus device (or a whole RS-485 line of them) on pymodbus's own server.

Used by driver tests and ``gatebeat demo``; listens on 127.0.0.1 only (Modbus TCP, or RTU
framing over TCP) or on a pseudo-terminal (Modbus RTU, no socat needed)::

    sim = ModbusSimulator(power_meter_profile())
    port = await sim.start_tcp()            # a free port on 127.0.0.1
    sim.set_value(spec, 230.1)              # registers settable while running
    sim.delay = 0.5                         # answer slowly
    sim.fail_with(6)                        # answer "server device busy"
    await sim.stop(); await sim.restart()   # reconnect tests (same port, same registers)

Every exchange is logged in :attr:`ModbusSimulator.exchanges` with loop-time stamps, so tests
can assert that requests never interleave and gaps are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import tty
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, Self

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from service.driver import Value
from service.values import RegisterSpec, Table, decode, encode

__all__ = [
    "Exchange",
    "ModbusSimulator",
    "PtyPair",
    "UnitProfile",
    "boiler_profile",
    "plc_watchdog_profile",
    "power_meter_profile",
]

_BLOCK = {"coil": "c", "discrete": "d", "holding": "h", "input": "i"}
_TABLE_OF_FUNCTION = {1: "coil", 2: "discrete", 3: "holding", 4: "input", 5: "coil", 6: "holding",
                      15: "coil", 16: "holding"}  # fmt: skip
_WRITE_FUNCTIONS = frozenset({5, 6, 15, 16, 22, 23})


@dataclass
class UnitProfile:
    """One simulated unit: its id, table sizes and initial values.

    Attributes:
        unit_id: the Modbus unit id it answers to.
        size: addresses per table (0 .. size - 1); reads beyond get exception code 2.
        values: initial values, written through :func:`~service.values.encode`.
    """

    unit_id: int = 1
    size: int = 1024
    values: list[tuple[RegisterSpec, Value]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request the simulator answered (loop times, seconds)."""

    unit_id: int
    function_code: int
    address: int
    count: int
    received: float
    answered: float


def _spec(field_name: str, table: Table, address: int, type_: str, **kw: Any) -> RegisterSpec:
    return RegisterSpec.model_validate(
        {"field": field_name, "table": table, "address": address, "type": type_, **kw}
    )


POWER_METER_SPECS = [
    _spec("voltage_volts", "input", 0, "float32"),
    _spec("current_amperes", "input", 2, "float32"),
    _spec("power_watts", "input", 4, "float32"),
    _spec("energy_joules", "input", 6, "float32", scale=3600.0),  # kept in Wh
]
"""Where the example power meter keeps its readings (float32, big-endian words)."""


def power_meter_profile(unit_id: int = 1) -> UnitProfile:
    """A power meter: voltage, current, power and energy as float32 input registers 0..7."""
    values = [230.0, 5.0, 1150.0, 123456.0 * 3600.0]  # 123,456 Wh in joules
    return UnitProfile(unit_id=unit_id, values=list(zip(POWER_METER_SPECS, values, strict=True)))


def plc_watchdog_profile(unit_id: int = 1) -> UnitProfile:
    """A PLC whose watchdog counter lives in holding register 100 (starts at 0)."""
    return UnitProfile(unit_id=unit_id, values=[(_spec("watchdog", "holding", 100, "uint16"), 0)])


def boiler_profile(unit_id: int = 1) -> UnitProfile:
    """The boiler of the sample config: temperature (holding 0, 0.1 °C), pump coil 3."""
    return UnitProfile(
        unit_id=unit_id,
        values=[
            (_spec("supply_temperature_celsius", "holding", 0, "int16", scale=0.1), 65.5),
            (_spec("pump_running", "coil", 3, "bool"), True),
        ],
    )


class PtyPair:
    """Two pseudo-terminals joined back to back in this process: a null-modem cable.

    Bytes written to one end's path come out of the other's. The pair relays on the running
    loop, so both ends must be used from it. ``a`` is for the simulator, ``b`` for the client.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._fds: list[int] = []
        masters, paths = [], []
        for _ in range(2):
            master, slave = pty.openpty()
            tty.setraw(slave)
            os.set_blocking(master, False)
            self._fds += [master, slave]  # keep the slave open: no EIO while nobody uses it
            masters.append(master)
            paths.append(os.ttyname(slave))
        self.a, self.b = paths
        self._masters = masters
        self._loop.add_reader(masters[0], self._relay, masters[0], masters[1])
        self._loop.add_reader(masters[1], self._relay, masters[1], masters[0])

    def _relay(self, src: int, dst: int) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            data = os.read(src, 4096)
            if data:
                os.write(dst, data)

    def close(self) -> None:
        """Stop relaying and close every descriptor. Idempotent."""
        for master in self._masters:
            self._loop.remove_reader(master)
        self._masters = []
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []


class ModbusSimulator:
    """Simulated units behind one endpoint (TCP port, RTU-over-TCP port, or pty).

    Args:
        units: one profile or several (several units = one RS-485 line or gateway).

    Attributes:
        delay: seconds every reply is held back (slow device).
        exchanges: every answered request, in order.
    """

    def __init__(self, units: UnitProfile | Sequence[UnitProfile] | None = None) -> None:
        if units is None:
            units = UnitProfile()
        self.units = [units] if isinstance(units, UnitProfile) else list(units)
        self.delay = 0.0
        self.exchanges: list[Exchange] = []
        self._failures: dict[int | None, tuple[int, frozenset[int] | None]] = {}
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._blocks: dict[int, dict[str, list[int]]] = {}
        self._pending: dict[tuple[int, int], tuple[int, int, int, float]] = {}
        self._endpoint: tuple[Literal["tcp", "serial"], Any] | None = None
        self._pty: PtyPair | None = None
        self.port = 0
        self.serial_path = ""

    # -- lifecycle ------------------------------------------------------------------------

    def _devices(self) -> list[SimDevice]:
        devices = []
        for unit in self.units:
            bits = [SimData(0, count=unit.size, values=False, datatype=DataType.BITS)]
            regs = [SimData(0, count=unit.size, values=0, datatype=DataType.REGISTERS)]
            devices.append(
                SimDevice(
                    id=unit.unit_id,
                    simdata=(list(bits), list(bits), list(regs), list(regs)),
                    action=partial(self._action, unit.unit_id),
                )
            )
        return devices

    def _bind_blocks(self, first_start: bool) -> None:
        assert self._server is not None
        core: Any = self._server.context
        for unit in self.units:
            runtime = core.devices[unit.unit_id]
            blocks = {key: runtime.block[key][2] for key in ("c", "d", "h", "i")}
            old = self._blocks.get(unit.unit_id)
            if old is not None:
                for key, registers in blocks.items():
                    registers[:] = old[key]
            self._blocks[unit.unit_id] = blocks
            if first_start:
                for spec, value in unit.values:
                    self.set_value(spec, value, unit=unit.unit_id)

    async def start_tcp(self, *, port: int = 0, framer: Literal["socket", "rtu"] = "socket") -> int:
        """Listen on 127.0.0.1 (``port`` 0 picks a free one); returns the bound port.

        ``framer="rtu"`` serves RTU frames over TCP (a serial device server).
        """
        first = self._server is None and not self._blocks
        frame = FramerType.RTU if framer == "rtu" else FramerType.SOCKET
        server = ModbusTcpServer(
            self._devices(), framer=frame, address=("127.0.0.1", port), trace_pdu=self._trace
        )
        await server.serve_forever(background=True)
        self._server = server
        transport: Any = server.transport
        self.port = int(transport.sockets[0].getsockname()[1])
        self._endpoint = ("tcp", (self.port, framer))
        self._bind_blocks(first)
        return self.port

    async def start_rtu(self, path: str | None = None) -> str:
        """Serve Modbus RTU on a serial port; with no ``path``, on a new :class:`PtyPair`.

        Returns the path a client should open (the pair's other end, or ``path``).
        """
        first = self._server is None and not self._blocks
        if path is None:
            if self._pty is None:
                self._pty = PtyPair()
            server_path, client_path = self._pty.a, self._pty.b
        else:
            server_path = client_path = path
        server = ModbusSerialServer(
            self._devices(), framer=FramerType.RTU, port=server_path, baudrate=115200,
            trace_pdu=self._trace,
        )  # fmt: skip
        await server.serve_forever(background=True)
        self._server = server
        self._endpoint = ("serial", path)
        self.serial_path = client_path
        self._bind_blocks(first)
        return client_path

    async def stop(self) -> None:
        """Stop answering (connections are closed); registers are kept for :meth:`restart`."""
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]  # untyped in pymodbus
            self._server = None

    async def restart(self) -> None:
        """Serve again on the same endpoint, with the registers as they were."""
        if self._endpoint is None:
            raise RuntimeError("the simulator was never started")
        await self.stop()
        kind, where = self._endpoint
        if kind == "tcp":
            await self.start_tcp(port=where[0], framer=where[1])
        else:
            await self.start_rtu(where)

    async def close(self) -> None:
        """Stop, and close the pseudo-terminals."""
        await self.stop()
        if self._pty is not None:
            self._pty.close()
            self._pty = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- registers ------------------------------------------------------------------------

    def _unit(self, unit: int | None) -> dict[str, list[int]]:
        return self._blocks[self.units[0].unit_id if unit is None else unit]

    def set_registers(
        self, table: Table, address: int, values: Sequence[int] | Sequence[bool], *,
        unit: int | None = None,
    ) -> None:  # fmt: skip
        """Set raw registers (or bits) from ``address`` on; the server must have started."""
        block = self._unit(unit)[_BLOCK[table]]
        for offset, value in enumerate(values):
            a = address + offset
            if table in ("coil", "discrete"):
                word, bit = divmod(a, 16)
                block[word] = block[word] | (1 << bit) if value else block[word] & ~(1 << bit)
            else:
                block[a] = int(value) & 0xFFFF

    def registers(
        self, table: Table, address: int, count: int = 1, *, unit: int | None = None
    ) -> list[int]:
        """Raw registers (or bits as 0/1) from ``address``."""
        block = self._unit(unit)[_BLOCK[table]]
        if table in ("coil", "discrete"):
            return [(block[a // 16] >> (a % 16)) & 1 for a in range(address, address + count)]
        return list(block[address : address + count])

    def set_value(self, spec: RegisterSpec, value: Value, *, unit: int | None = None) -> None:
        """Store ``value`` where ``spec`` reads it (encoded with its type, orders and scale)."""
        self.set_registers(spec.table, spec.address, encode(spec, value), unit=unit)

    def value(self, spec: RegisterSpec, *, unit: int | None = None) -> Value:
        """The value currently stored for ``spec``."""
        return decode(spec, self.registers(spec.table, spec.address, spec.count, unit=unit))

    # -- faults ---------------------------------------------------------------------------

    def fail_with(
        self, code: int, *, unit: int | None = None, functions: Sequence[int] | None = None
    ) -> None:
        """Answer requests with Modbus exception ``code`` (of ``unit``, or all; some functions)."""
        self._failures[unit] = (code, None if functions is None else frozenset(functions))

    def heal(self) -> None:
        """Stop answering with exception codes."""
        self._failures.clear()

    async def _action(
        self, unit: int, function_code: int, _start: int, _address: int, _count: int,
        _registers: list[int], _values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:  # fmt: skip
        # pymodbus checks a write twice (the write, then the read-back of what it wrote): hold
        # the request back once, on the write.
        if self.delay > 0 and (_values is not None or function_code not in _WRITE_FUNCTIONS):
            await asyncio.sleep(self.delay)
        for key in (unit, None):
            failure = self._failures.get(key)
            if failure is not None and (failure[1] is None or function_code in failure[1]):
                return ExcCodes(failure[0])
        return None

    def _trace(self, sending: bool, pdu: Any) -> Any:
        now = asyncio.get_running_loop().time()
        key = (pdu.dev_id, pdu.transaction_id)
        if not sending:
            count = pdu.count or len(pdu.bits) or len(pdu.registers)
            self._pending[key] = (pdu.function_code & 0x7F, pdu.address, count, now)
        elif (pending := self._pending.pop(key, None)) is not None:
            self.exchanges.append(Exchange(pdu.dev_id, *pending[:3], pending[3], now))
        return pdu
