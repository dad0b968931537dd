"""Register specs and the conversion between Modbus registers (or bits) and values.

A :class:`RegisterSpec` names one reading: which table, which address, how many registers and
how to decode them. Numeric types go through pymodbus's own ``convert_from_registers`` /
``convert_to_registers`` (word order included); byte order is handled here by swapping the two
bytes of every register, which is all "little" byte order means on a 16-bit register.

``scale`` and ``offset`` map raw to engineering units: ``value = raw * scale + offset``.
"""

from __future__ import annotations

import math
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pymodbus.client import AsyncModbusTcpClient

from service.driver import Value
from service.health import FIELD_NAME

__all__ = [
    "BIT_TABLES",
    "DataType",
    "Order",
    "RegisterSpec",
    "Table",
    "ValueDecodeError",
    "decode",
    "encode",
    "field_name_problem",
]

Table = Literal["coil", "discrete", "holding", "input"]
DataType = Literal[
    "bool",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "string",
]
Order = Literal["big", "little"]

BIT_TABLES: frozenset[str] = frozenset({"coil", "discrete"})
"""Tables of single bits; only ``bool`` is allowed there."""

_CONVERT = AsyncModbusTcpClient  # the converters are classmethods of every client class
_PYMODBUS_TYPE = {
    "int16": _CONVERT.DATATYPE.INT16,
    "uint16": _CONVERT.DATATYPE.UINT16,
    "int32": _CONVERT.DATATYPE.INT32,
    "uint32": _CONVERT.DATATYPE.UINT32,
    "int64": _CONVERT.DATATYPE.INT64,
    "uint64": _CONVERT.DATATYPE.UINT64,
    "float32": _CONVERT.DATATYPE.FLOAT32,
    "float64": _CONVERT.DATATYPE.FLOAT64,
    "string": _CONVERT.DATATYPE.STRING,
}
_WIDTH = {"bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4,
          "float32": 2, "float64": 4}  # fmt: skip
_INT_RANGE = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


def field_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a reading field, or ``None`` when it can.

    The rule is the runtime's (:data:`service.health.FIELD_NAME`): the field becomes part of the
    metric name ``gatebeat_reading_<field>``, so a config can be refused before the first tick
    would fail with ``InvalidFieldName``.
    """
    if FIELD_NAME.fullmatch(name) is not None:
        return None
    return (
        f"{name!r} is not a valid reading field name: it becomes the metric name "
        f"gatebeat_reading_<field> (allowed: letters, digits and '_', not starting with a digit)"
    )


class ValueDecodeError(ValueError):
    """Registers or a value could not be converted for a spec; the message names the field."""


class RegisterSpec(BaseModel):
    """One reading (or written value): where it lives and how its registers are decoded.

    Attributes:
        field: the reading's name (the metric is ``gatebeat_reading_<field>``).
        table: ``coil``, ``discrete``, ``holding`` or ``input``.
        address: 0-based address in the table (0..65535).
        type: the data type; coils and discrete inputs only hold ``bool``.
        length: registers of a ``string`` (2 characters each); required for strings only.
        word_order: order of the registers of a multi-register value.
        byte_order: order of the two bytes inside each register.
        scale: multiplier from raw to engineering units.
        offset: added after scaling.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = Field(
        description="Reading name (letters, digits and _); the metric is gatebeat_reading_<field>."
    )
    table: Table = Field(description="Register table: coil, discrete, holding or input.")
    address: int = Field(ge=0, le=65535, description="0-based address in the table.")
    type: DataType = Field(default="uint16", description="Data type of the value.")
    length: int | None = Field(
        default=None, ge=1, le=125, description="Registers of a string (2 characters each)."
    )
    word_order: Order = Field(
        default="big", description="Order of registers in a multi-register value."
    )
    byte_order: Order = Field(default="big", description="Order of the two bytes in each register.")
    scale: float = Field(default=1.0, description="Multiplier from raw to engineering units.")
    offset: float = Field(default=0.0, description="Added after scaling.")

    @field_validator("field")
    @classmethod
    def _metric_name(cls, value: str) -> str:
        problem = field_name_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.table in BIT_TABLES and self.type != "bool":
            raise ValueError(
                f"type: {self.type!r} is not allowed in table {self.table!r} "
                f"(coils and discrete inputs hold single bits: use 'bool')"
            )
        if self.type == "string" and self.length is None:
            raise ValueError("length: a 'string' needs its length in registers")
        if self.type != "string" and self.length is not None:
            raise ValueError(f"length: only a 'string' takes a length, not {self.type!r}")
        if not math.isfinite(self.scale) or self.scale == 0:
            raise ValueError(f"scale: must be finite and non-zero, got {self.scale!r}")
        if not math.isfinite(self.offset):
            raise ValueError(f"offset: must be finite, got {self.offset!r}")
        if self.address + self.count - 1 > 65535:
            raise ValueError(f"address: {self.address} + {self.count} registers runs past 65535")
        return self

    @property
    def count(self) -> int:
        """Registers (or bits, in coil/discrete tables) this value occupies."""
        if self.type == "string":
            assert self.length is not None
            return self.length
        return _WIDTH[self.type]

    @property
    def is_bits(self) -> bool:
        """True when the value lives in a bit table (coil or discrete)."""
        return self.table in BIT_TABLES

    @property
    def scaled(self) -> bool:
        """True when scale or offset changes the raw value."""
        return self.scale != 1.0 or self.offset != 0.0


def _swap_bytes(registers: list[int]) -> list[int]:
    return [((r & 0xFF) << 8) | (r >> 8) for r in registers]


def decode(spec: RegisterSpec, raw: list[int] | list[bool]) -> Value:
    """Decode the registers (or bits) read for ``spec`` into its value.

    Args:
        spec: the register spec.
        raw: exactly ``spec.count`` registers (ints 0..65535) or bits.

    Raises:
        ValueDecodeError: wrong number of registers, or bytes that are no valid string.
    """
    if len(raw) != spec.count:
        raise ValueDecodeError(
            f"{spec.field}: expected {spec.count} register(s) at {spec.table} {spec.address}, "
            f"got {len(raw)}"
        )
    if spec.type == "bool":
        return bool(raw[0])
    registers = [int(r) for r in raw]
    if spec.byte_order == "little":
        registers = _swap_bytes(registers)
    try:
        result = _CONVERT.convert_from_registers(
            registers, _PYMODBUS_TYPE[spec.type], word_order=spec.word_order
        )
    except UnicodeDecodeError as exc:
        raise ValueDecodeError(
            f"{spec.field}: registers at {spec.table} {spec.address} are not UTF-8 text ({exc})"
        ) from exc
    assert isinstance(result, int | float | str)
    if isinstance(result, str) or not spec.scaled:
        return result
    return result * spec.scale + spec.offset


def encode(spec: RegisterSpec, value: Value) -> list[int]:
    """Encode ``value`` (in engineering units) into the registers (or bits, 0/1) of ``spec``.

    Args:
        spec: the register spec.
        value: a bool, number or string, as :func:`decode` would return it.

    Raises:
        ValueDecodeError: the value has the wrong kind, or is out of the type's range.
    """
    if spec.type == "bool":
        if not isinstance(value, bool | int) or (isinstance(value, int) and value not in (0, 1)):
            raise ValueDecodeError(f"{spec.field}: a bool needs True/False (or 0/1), got {value!r}")
        return [int(value)]
    if spec.type == "string":
        if not isinstance(value, str):
            raise ValueDecodeError(f"{spec.field}: a string needs str, got {value!r}")
        registers = _CONVERT.convert_to_registers(value, _PYMODBUS_TYPE["string"], word_order="big")
        if len(registers) > spec.count:
            raise ValueDecodeError(
                f"{spec.field}: {value!r} needs {len(registers)} registers, length is {spec.count}"
            )
        registers += [0] * (spec.count - len(registers))
        if spec.word_order == "little":
            registers.reverse()
    else:
        registers = _encode_number(spec, value)
    if spec.byte_order == "little":
        registers = _swap_bytes(registers)
    return registers


def _encode_number(spec: RegisterSpec, value: Value) -> list[int]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueDecodeError(f"{spec.field}: a {spec.type} needs a number, got {value!r}")
    raw: int | float = (value - spec.offset) / spec.scale if spec.scaled else value
    if spec.type in _INT_RANGE:
        if not math.isfinite(raw):
            raise ValueDecodeError(f"{spec.field}: {value!r} is not a finite number")
        raw = round(raw)
        low, high = _INT_RANGE[spec.type]
        if not low <= raw <= high:
            raise ValueDecodeError(
                f"{spec.field}: {value!r} is out of range for {spec.type} ({low}..{high})"
            )
    else:
        raw = float(raw)
        if spec.type == "float32" and math.isfinite(raw) and abs(raw) > 3.4028234663852886e38:
            raise ValueDecodeError(f"{spec.field}: {value!r} is out of range for float32")
    return _CONVERT.convert_to_registers(raw, _PYMODBUS_TYPE[spec.type], word_order=spec.word_order)
