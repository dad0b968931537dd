"""Request grouping: the registers of one poll, read in as few Modbus requests as allowed.

Specs of one table are sorted by address and merged into one read while the merged block stays
within the protocol's limit (125 registers, 2000 bits per read) and the unused registers between
two specs do not exceed ``max_fill`` (some devices answer "illegal data address" when a read
covers a hole, hence the default of 0). ``one_request_per_field`` turns grouping off for devices
that only answer reads of exactly one value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.values import RegisterSpec, Table

__all__ = [
    "MAX_BITS_PER_READ",
    "MAX_REGISTERS_PER_READ",
    "READ_FUNCTION",
    "ReadRequest",
    "plan_reads",
]

MAX_REGISTERS_PER_READ = 125
"""Modbus limit for function codes 3 and 4 (read holding / input registers)."""
MAX_BITS_PER_READ = 2000
"""Modbus limit for function codes 1 and 2 (read coils / discrete inputs)."""

READ_FUNCTION: dict[str, str] = {
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
    "holding": "read_holding_registers",
    "input": "read_input_registers",
}
"""The pymodbus client method that reads each table."""

_TABLE_ORDER: dict[str, int] = {"coil": 0, "discrete": 1, "holding": 2, "input": 3}


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read request and the specs it serves.

    Attributes:
        table: the table read.
        address: the first address.
        count: registers (or bits) read.
        specs: the specs whose values lie inside ``address .. address + count - 1``.
    """

    table: Table
    address: int
    count: int
    specs: tuple[RegisterSpec, ...]

    @property
    def function(self) -> str:
        """The pymodbus client method name of this read."""
        return READ_FUNCTION[self.table]

    def slice(
        self, raw: Sequence[int] | Sequence[bool], spec: RegisterSpec
    ) -> list[int] | list[bool]:
        """The part of this request's reply (``raw``) that holds ``spec``'s value."""
        start = spec.address - self.address
        return list(raw[start : start + spec.count])


def plan_reads(
    specs: Sequence[RegisterSpec], *, max_fill: int = 0, one_request_per_field: bool = False
) -> list[ReadRequest]:
    """Group ``specs`` into read requests, in table then address order.

    Args:
        specs: the registers of one poll.
        max_fill: unused registers (or bits) allowed between two specs read together (>= 0).
        one_request_per_field: read every spec on its own.

    Raises:
        ValueError: ``max_fill`` is negative.
    """
    if max_fill < 0:
        raise ValueError(f"max_fill must be >= 0 registers, got {max_fill!r}")
    ordered = sorted(specs, key=lambda s: (_TABLE_ORDER[s.table], s.address, s.count))
    if one_request_per_field:
        return [ReadRequest(s.table, s.address, s.count, (s,)) for s in ordered]
    requests: list[ReadRequest] = []
    group: list[RegisterSpec] = []
    start = end = 0  # the open group's block: start .. end - 1
    for spec in ordered:
        limit = MAX_BITS_PER_READ if spec.is_bits else MAX_REGISTERS_PER_READ
        spec_end = spec.address + spec.count
        if (
            group
            and spec.table == group[0].table
            and spec.address - end <= max_fill
            and max(end, spec_end) - start <= limit
        ):
            group.append(spec)
            end = max(end, spec_end)
            continue
        if group:
            requests.append(ReadRequest(group[0].table, start, end - start, tuple(group)))
        group, start, end = [spec], spec.address, spec_end
    if group:
        requests.append(ReadRequest(group[0].table, start, end - start, tuple(group)))
    return requests
