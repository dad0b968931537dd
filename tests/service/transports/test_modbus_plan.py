"""Request grouping, backoff arithmetic and the error boundary (no I/O)."""

from __future__ import annotations

import pytest
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import ExceptionResponse
from pymodbus.pdu.bit_message import ReadCoilsResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

from service.transports.backoff import Backoff
from service.transports.errors import (
    DeviceTimeout,
    DeviceUnavailable,
    FrameError,
    ModbusExceptionResponse,
    TransportError,
    check_response,
    modbus_errors,
)
from service.transports.modbus_plan import plan_reads
from service.values import RegisterSpec


def reg(address: int, type_: str = "uint16", table: str = "holding", **kw: object) -> RegisterSpec:
    return RegisterSpec.model_validate(
        {"field": f"{table}{address}", "table": table, "address": address, "type": type_, **kw}
    )


def blocks(specs: list[RegisterSpec], **kw: object) -> list[tuple[str, int, int]]:
    return [(r.table, r.address, r.count) for r in plan_reads(specs, **kw)]  # type: ignore[arg-type]


def test_contiguous_registers_are_one_request() -> None:
    specs = [reg(0, "float32"), reg(2, "float32"), reg(4, "uint16"), reg(5, "int64")]
    assert blocks(specs) == [("holding", 0, 9)]


def test_holes_split_unless_max_fill_allows() -> None:
    specs = [reg(0), reg(3), reg(10)]
    assert blocks(specs) == [("holding", 0, 1), ("holding", 3, 1), ("holding", 10, 1)]
    assert blocks(specs, max_fill=2) == [("holding", 0, 4), ("holding", 10, 1)]
    assert blocks(specs, max_fill=6) == [("holding", 0, 11)]


def test_tables_never_mix_and_come_in_order() -> None:
    specs = [
        reg(0, table="input"),
        reg(0),
        reg(1, "bool", table="coil"),
        reg(0, "bool", table="discrete"),
    ]
    assert blocks(specs) == [("coil", 1, 1), ("discrete", 0, 1), ("holding", 0, 1), ("input", 0, 1)]


def test_protocol_limits() -> None:
    registers = [reg(a) for a in range(300)]
    assert blocks(registers) == [("holding", 0, 125), ("holding", 125, 125), ("holding", 250, 50)]
    coils = [reg(a, "bool", table="coil") for a in range(4500)]
    assert blocks(coils) == [("coil", 0, 2000), ("coil", 2000, 2000), ("coil", 4000, 500)]
    # a value never straddles two requests
    assert blocks([reg(a * 2, "float32") for a in range(63)]) == [
        ("holding", 0, 124),
        ("holding", 124, 2),
    ]


def test_overlaps_and_duplicates_share_a_request() -> None:
    specs = [reg(0, "uint32"), reg(1, "uint16"), reg(0, "int16", scale=2)]
    plan = plan_reads(specs)
    assert [(r.address, r.count, len(r.specs)) for r in plan] == [(0, 2, 3)]


def test_one_request_per_field() -> None:
    specs = [reg(0, "float32"), reg(2)]
    assert blocks(specs, one_request_per_field=True) == [("holding", 0, 2), ("holding", 2, 1)]


def test_negative_fill_refused() -> None:
    with pytest.raises(ValueError, match="max_fill must be >= 0"):
        plan_reads([reg(0)], max_fill=-1)


def test_backoff_doubles_up_to_the_cap_with_bounded_jitter() -> None:
    backoff = Backoff(first=0.1, cap=1.0, jitter=0.0)
    waits = [backoff.failed(now=0.0) for _ in range(6)]
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff.backing_off(0.99) and not backoff.backing_off(1.0)
    backoff.succeeded()
    assert backoff.failures == 0 and not backoff.backing_off(0.0)
    assert Backoff(first=1, cap=8, jitter=0.5, rng=lambda: 0.999999).failed(10.0) == pytest.approx(
        0.5, abs=1e-5
    )
    assert Backoff(first=1, cap=8, jitter=0.5, rng=lambda: 0.0).failed(10.0) == 1.0
    assert Backoff(first=1, cap=10).delay(10_000) == 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"first": 0}, "first delay must be > 0"), ({"first": 2, "cap": 1}, "cap must be >= first"),
     ({"jitter": 1.5}, "jitter must be within 0..1")],
)  # fmt: skip
def test_backoff_validates(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)


@pytest.mark.parametrize(
    ("raised", "expected", "text"),
    [
        (ConnectionException("gone"), DeviceUnavailable, "not connected"),
        (ModbusIOException("No response received after 1 retries"), DeviceTimeout, "no reply"),
        (
            ModbusIOException("ERROR: request uses device id=1 but received 2."),
            FrameError,
            "unexpected reply",
        ),
        (TimeoutError(), DeviceTimeout, "no reply in time"),
        (ConnectionRefusedError(111, "refused"), DeviceUnavailable, "refused"),
    ],
)
def test_boundary_translates_and_chains(
    raised: Exception, expected: type[Exception], text: str
) -> None:
    with (
        pytest.raises(expected) as info,
        modbus_errors("boiler", "read_holding_registers", address=7, count=2),
    ):
        raise raised
    assert isinstance(info.value, TransportError) and info.value.device == "boiler"
    assert "device 'boiler': read_holding_registers at address 7 (count 2)" in str(info.value)
    assert text in str(info.value)
    assert info.value.__cause__ is raised


def test_boundary_leaves_our_errors_alone() -> None:
    original = DeviceTimeout("mine", device="d")
    with pytest.raises(DeviceTimeout) as info, modbus_errors("d", "write_coil"):
        raise original
    assert info.value is original


def test_exception_responses_are_raised() -> None:
    response = ExceptionResponse(0x03, 2)
    with pytest.raises(ModbusExceptionResponse) as info:
        check_response(response, device="m", function="read_holding_registers", address=40)
    error = info.value
    assert (error.device, error.function, error.address, error.code) == (
        "m",
        "read_holding_registers",
        40,
        2,
    )
    assert (
        str(error) == "device 'm': read_holding_registers at address 40: "
        "exception code 2 (illegal data address)"
    )
    with pytest.raises(FrameError, match="no reply PDU"):
        check_response(None, device="m", function="write_coil", address=1)


def test_a_reply_must_match_the_requests_function_unit_and_length() -> None:
    def check(response: object, *, unit: int = 1, count: int = 2) -> object:
        return check_response(
            response, device="m", function="read_holding_registers", address=40, count=count,
            unit=unit,
        )  # fmt: skip

    ok = ReadHoldingRegistersResponse(registers=[1, 2], dev_id=1)
    assert check(ok) is ok
    where = "device 'm': read_holding_registers at address 40 (count 2): "
    with pytest.raises(FrameError) as caught:
        check(ReadInputRegistersResponse(registers=[1, 2], dev_id=1))
    assert str(caught.value) == (
        where + "reply has function code 4, the request had 3 "
        "(a late reply to an earlier request, or noise)"
    )
    with pytest.raises(FrameError, match="reply has function code 4, the request had 3"):
        check(ExceptionResponse(0x04, 2))
    with pytest.raises(FrameError) as caught:
        check(ReadHoldingRegistersResponse(registers=[1, 2], dev_id=7))
    assert str(caught.value) == where + "reply comes from unit id 7, the request went to unit 1"
    broadcast = ReadHoldingRegistersResponse(registers=[1, 2], dev_id=7)
    assert check(broadcast, unit=0) is broadcast
    with pytest.raises(FrameError, match=r"\(count 3\): asked for 3 registers, got 2"):
        check(ok, count=3)
    with pytest.raises(FrameError, match="asked for 9 bits \\(2 bytes\\), got 1 bytes"):
        check_response(
            ReadCoilsResponse(bits=[True] * 8), device="m", function="read_coils", address=0,
            count=9,
        )  # fmt: skip
