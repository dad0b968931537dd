"""Driver discovery and shape checks, with real modules written to a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.registry import DriverError, discover

GOOD = """
from pydantic import BaseModel, Field
TRANSPORTS = ["serial"]
class Config(BaseModel):
    gain: float = Field(1.0, description="multiplier")
async def poll(tick):
    return {}
"""


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.py"
    path.write_text(text)
    return path


def test_builtin_drivers_are_found() -> None:
    registry = discover()
    assert "modbus" in registry.names()
    driver = registry.get("modbus")
    assert driver.source.describe() == "builtin"
    assert "poll" in driver.callbacks
    assert "modbus-tcp" in driver.transports


def test_path_driver_is_loaded_and_private_modules_skipped(tmp_path: Path) -> None:
    _write(tmp_path, "mysensor", GOOD)
    _write(tmp_path, "_helper", "X = 1\n")
    registry = discover([tmp_path])
    assert "_helper" not in registry.names()
    driver = registry.get("mysensor")
    assert driver.source.kind == "path"
    assert driver.source.describe() == str((tmp_path / "mysensor.py").resolve())
    assert driver.config_model is not None
    assert driver.callbacks == ("poll",)


def test_same_name_twice_names_both_places(tmp_path: Path) -> None:
    _write(tmp_path, "modbus", GOOD)
    registry = discover([tmp_path])
    with pytest.raises(DriverError) as info:
        registry.get("modbus")
    assert "defined twice: builtin and" in str(info.value)
    assert str(tmp_path / "modbus.py") in str(info.value)


def test_unknown_driver_suggests_a_close_name() -> None:
    with pytest.raises(DriverError, match="did you mean 'modbus'"):
        discover().get("modbsu")


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="does not exist"):
        discover([tmp_path / "nope"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("import not_a_module_anywhere\n", "failed to import: ModuleNotFoundError"),
        ("TRANSPORTS = ['serial']\n", "defines neither poll() nor heartbeat()"),
        ("TRANSPORTS = ['serial']\ndef poll(tick):\n    return {}\n", "must be an 'async def'"),
        ("async def poll(tick):\n    return {}\n", "TRANSPORTS must be a non-empty list"),
        (
            "TRANSPORTS = ['modbus_tcp']\nasync def poll(tick):\n    return {}\n",
            "TRANSPORTS names unknown transport kinds ['modbus_tcp'] (known: modbus-rtu,",
        ),
        (
            "TRANSPORTS = ['serial']\nclass Config:\n    pass\n"
            "async def poll(tick):\n    return {}\n",
            "Config must be a pydantic BaseModel subclass",
        ),
        (
            "from pydantic import BaseModel\nTRANSPORTS = ['serial']\n"
            "class Config(BaseModel):\n    name: str = 'x'\nasync def poll(tick):\n    return {}\n",
            "Config redefines framework keys name",
        ),
        (
            "from pydantic import BaseModel\nTRANSPORTS = ['serial']\n"
            "class Poll(BaseModel):\n    interval: int = 1\nasync def poll(tick):\n    return {}\n",
            "Poll redefines framework keys interval",
        ),
        (
            "TRANSPORTS = ['serial']\nDEFAULT_POLLS = 'x'\nasync def poll(tick):\n    return {}\n",
            "DEFAULT_POLLS must be a list of dicts",
        ),
        (
            "TRANSPORTS = ['serial']\nTRIGGERS = [1]\nasync def poll(tick):\n    return {}\n",
            "TRIGGERS must be a list of (trigger, async callback) pairs",
        ),
    ],
)
def test_broken_drivers_name_the_module(tmp_path: Path, text: str, message: str) -> None:
    _write(tmp_path, "broken", text)
    registry = discover([tmp_path])
    with pytest.raises(DriverError) as info:
        registry.get("broken")
    assert message in str(info.value)
    assert "broken" in str(info.value)


def test_entry_point_drivers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "acme_drivers-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-drivers\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[gatebeat.drivers]\nacme = acme_gatebeat_driver\n")
    _write(tmp_path, "acme_gatebeat_driver", GOOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    driver = discover().get("acme")
    assert driver.source.kind == "entry point"
    assert driver.source.describe() == "entry point (acme-drivers: acme_gatebeat_driver)"
