"""The README's examples work as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = (Path(__file__).parent.parent / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def test_the_readme_config_passes_check_config(tmp_path: Path) -> None:
    config = next(b for b in blocks("toml") if 'name = "boiler"' in b)
    path = tmp_path / "gatebeat.toml"
    path.write_text(config)
    result = subprocess.run(
        [sys.executable, "-m", "service", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 device" in result.stdout


@pytest.mark.realtime
def test_the_readme_engine_example_runs() -> None:
    example = next(b for b in blocks("python") if b.startswith("import asyncio"))
    result = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("beat\n") == 4
    assert "ticks=4" in result.stdout and "skipped=0" in result.stdout


def test_the_readme_driver_example_is_a_valid_driver(tmp_path: Path) -> None:
    driver = next(b for b in blocks("python") if "async def poll" in b)
    (tmp_path / "readme_meter.py").write_text(driver)
    result = subprocess.run(
        [sys.executable, "-m", "service", "drivers", "--driver-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^readme_meter .*callbacks: poll, heartbeat", result.stdout, re.M), (
        result.stdout
    )
