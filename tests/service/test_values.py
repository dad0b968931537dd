"""Register specs: validation, and encode/decode round trips for every type and order."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from service.health import InvalidFieldName, validate_field_name
from service.values import RegisterSpec, ValueDecodeError, decode, encode

ORDERS = st.sampled_from(["big", "little"])
INT_BOUNDS = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


def spec(**kw: object) -> RegisterSpec:
    return RegisterSpec.model_validate({"field": "x", "table": "holding", "address": 0, **kw})


@given(name=st.text(max_size=12) | st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,10}", fullmatch=True))
def test_a_field_name_is_accepted_exactly_when_the_runtime_would_export_it(name: str) -> None:
    try:
        validate_field_name(name, device="boiler")
        runtime_ok = True
    except InvalidFieldName:
        runtime_ok = False
    try:
        spec(field=name)
        config_ok = True
    except ValidationError as exc:
        assert exc.errors()[0]["loc"] == ("field",)
        assert repr(name) in str(exc)
        config_ok = False
    assert config_ok == runtime_ok


@given(type_=st.sampled_from(sorted(INT_BOUNDS)), data=st.data(), word=ORDERS, byte=ORDERS)
def test_integers_round_trip(type_: str, data: st.DataObject, word: str, byte: str) -> None:
    low, high = INT_BOUNDS[type_]
    value = data.draw(st.integers(low, high))
    s = spec(type=type_, word_order=word, byte_order=byte)
    registers = encode(s, value)
    assert len(registers) == s.count
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert decode(s, registers) == value


@given(value=st.floats(width=32, allow_nan=False), word=ORDERS, byte=ORDERS)
def test_float32_round_trips(value: float, word: str, byte: str) -> None:
    s = spec(type="float32", word_order=word, byte_order=byte)
    assert decode(s, encode(s, value)) == value


@given(value=st.floats(allow_nan=False), word=ORDERS, byte=ORDERS)
def test_float64_round_trips(value: float, word: str, byte: str) -> None:
    s = spec(type="float64", word_order=word, byte_order=byte)
    assert decode(s, encode(s, value)) == value


def test_nan_survives() -> None:
    s = spec(type="float32")
    result = decode(s, encode(s, math.nan))
    assert isinstance(result, float) and math.isnan(result)


@given(
    text=st.text(st.characters(min_codepoint=1, max_codepoint=0x7FF), max_size=8),
    word=ORDERS,
    byte=ORDERS,
)
def test_strings_round_trip(text: str, word: str, byte: str) -> None:
    s = spec(type="string", length=8, word_order=word, byte_order=byte)
    if len(text.encode()) > 16:
        with pytest.raises(ValueDecodeError, match="x: "):
            encode(s, text)
        return
    registers = encode(s, text)
    assert len(registers) == 8
    assert decode(s, registers) == text


@given(value=st.booleans(), table=st.sampled_from(["coil", "discrete", "holding", "input"]))
def test_bools_round_trip(value: bool, table: str) -> None:
    s = spec(type="bool", table=table)
    assert decode(s, encode(s, value)) is value


@given(raw=st.integers(-(2**15), 2**15 - 1))
def test_scale_and_offset(raw: int) -> None:
    s = spec(type="int16", scale=0.1, offset=-40.0)
    value = decode(s, encode(spec(type="int16"), raw))
    assert value == pytest.approx(raw * 0.1 - 40.0)
    assert encode(s, value) == encode(spec(type="int16"), raw)


def test_known_layouts() -> None:
    assert encode(spec(type="uint32"), 0x12345678) == [0x1234, 0x5678]
    assert encode(spec(type="uint32", word_order="little"), 0x12345678) == [0x5678, 0x1234]
    assert encode(spec(type="uint32", byte_order="little"), 0x12345678) == [0x3412, 0x7856]
    assert encode(spec(type="float32"), 1.0) == [0x3F80, 0x0000]
    assert decode(spec(type="string", length=2), [0x4142, 0x4300]) == "ABC"
    assert decode(spec(type="int16"), [0xFFFF]) == -1


def test_unscaled_integers_stay_integers() -> None:
    assert isinstance(decode(spec(type="uint16"), [7]), int)
    assert isinstance(decode(spec(type="uint16", scale=2), [7]), float)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"table": "coil", "type": "int16"}, "type: 'int16' is not allowed in table 'coil'"),
        ({"table": "discrete", "type": "float32"}, "type: 'float32' is not allowed"),
        ({"type": "string"}, "length: a 'string' needs its length"),
        ({"type": "int16", "length": 2}, "length: only a 'string' takes a length"),
        ({"address": 65536}, "address"),
        ({"address": -1}, "address"),
        ({"address": 65535, "type": "float32"}, "address: 65535 \\+ 2 registers runs past"),
        ({"type": "int128"}, "type"),
        ({"word_order": "middle"}, "word_order"),
        ({"scale": 0}, "scale: must be finite and non-zero"),
        ({"table": "register"}, "table"),
    ],
)
def test_invalid_specs_name_the_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(**fields)


def test_counts() -> None:
    assert [spec(type=t).count for t in ("bool", "uint16", "int32", "float64")] == [1, 1, 2, 4]
    assert spec(type="string", length=5).count == 5


@pytest.mark.parametrize(
    ("type_", "value", "message"),
    [
        ("int16", 40000, "x: 40000 is out of range for int16"),
        ("uint16", -1, "out of range for uint16"),
        ("uint16", "7", "needs a number"),
        ("uint16", True, "needs a number"),
        ("float32", 1e39, "out of range for float32"),
        ("int32", math.inf, "not a finite number"),
    ],
)
def test_encode_refuses_bad_values(type_: str, value: object, message: str) -> None:
    with pytest.raises(ValueDecodeError, match=message):
        encode(spec(type=type_), value)  # type: ignore[arg-type]


def test_decode_checks_the_register_count_and_text() -> None:
    with pytest.raises(ValueDecodeError, match="x: expected 2 register"):
        decode(spec(type="float32"), [1])
    with pytest.raises(ValueDecodeError, match="not UTF-8"):
        decode(spec(type="string", length=1), [0xFFFE])
