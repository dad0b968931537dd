"""Golden config cases: ``gatebeat check-config`` on each ``tests/cases/<name>/gatebeat.toml``.

Each case folder holds the config, the exact expected stdout (``expected``: every problem, one
per line) and optionally ``env`` (``NAME=value`` lines set for the run). Every case must be
refused with exit code 2 and no traceback. Regenerate an expected file only after reading it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import service

CASES = Path(__file__).parent.parent / "cases"
ROOT = Path(service.__file__).resolve().parent.parent
"""The checkout under test: the cases run in their own folder, where ``python -m service``
would otherwise import whichever gatebeat is installed."""
NAMES = sorted(p.name for p in CASES.iterdir() if (p / "gatebeat.toml").is_file())


def _env(case: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEBEAT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    extra = case / "env"
    if extra.is_file():
        for line in extra.read_text().splitlines():
            if line.strip():
                key, _, value = line.partition("=")
                env[key] = value
    return env


@pytest.fixture(scope="module")
def results() -> dict[str, subprocess.CompletedProcess[str]]:
    """Run every case at once (each is a fresh interpreter; together they take seconds)."""
    running = {
        name: subprocess.Popen(
            [sys.executable, "-m", "service", "check-config", "--config", "gatebeat.toml"],
            cwd=CASES / name,
            env=_env(CASES / name),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in NAMES
    }
    done: dict[str, subprocess.CompletedProcess[str]] = {}
    for name, process in running.items():
        out, err = process.communicate(timeout=60)
        done[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return done


def test_there_are_at_least_twelve_cases() -> None:
    assert len(NAMES) >= 12


@pytest.mark.parametrize("name", NAMES)
def test_case(name: str, results: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = results[name]
    assert "Traceback" not in result.stderr
    assert result.stdout == (CASES / name / "expected").read_text()
    assert result.returncode == 2
    assert "problem(s)" in result.stderr
