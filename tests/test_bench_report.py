"""The engine benchmark's verdict arithmetic (``bench/engine.py``): which configurations
``--rows`` selects, how repeats pair up into CPU ratios, and that ``--report`` reads back what
``--json`` wrote. The README's target lines are computed by these."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

_BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(_BENCH))
_spec = importlib.util.spec_from_file_location("bench_engine", _BENCH / "engine.py")
assert _spec is not None and _spec.loader is not None
engine = importlib.util.module_from_spec(_spec)
sys.modules["bench_engine"] = engine  # dataclasses look the module up while it loads
_spec.loader.exec_module(engine)


def run(cpu: float) -> dict[str, Any]:
    return {"cpu_us": cpu}


def test_rows_selects_exactly_the_named_configurations() -> None:
    args = argparse.Namespace(
        sizes="1,100,10000", seconds=4.0, quick=False, rows="100@0.01:spread,10000@1:spread"
    )
    chosen = [(c.n, c.interval, c.mode) for c in engine.configs(args)]
    assert chosen == [(10000, 1.0, "spread"), (100, 0.01, "spread")]


@pytest.mark.parametrize("text", ["100", "100@0.01", "x@1:spread", "100@0.01:diagonal", "0@1:same"])
def test_a_malformed_row_names_itself(text: str) -> None:
    with pytest.raises(SystemExit, match=text):
        engine.parse_row(text)


def test_repeats_pair_by_position_and_skip_failed_runs() -> None:
    cfg = engine.Config(100, 0.01, "spread", 3.0)
    raw = {
        ("asyncio", cfg, "reference"): [run(4.0), run(2.0), {"error": "too slow"}, run(5.0)],
        ("asyncio", cfg, "gatebeat"): [run(6.0), run(3.0), run(9.0), run(5.0)],
    }
    ratios = engine.paired_cpu_ratios(raw, "asyncio", cfg, "gatebeat", "reference")
    assert ratios == [1.5, 1.5, 1.0]
    value, how = engine.cpu_ratio(ratios, 1.2)
    assert value == 1.5
    assert "paired median 1.50x over 3 repeats" in how and "ratio of medians 1.20x" in how


def test_one_run_is_judged_on_the_plain_ratio() -> None:
    assert engine.cpu_ratio([1.7], 1.7) == (1.7, "1.70x")


def test_report_reads_back_what_json_wrote(tmp_path: Path) -> None:
    cfg = engine.Config(1, 1.0, "same", 4.0)
    raw = {("uvloop", cfg, "gatebeat"): [run(1.0), {"error": "failed: x"}]}
    path = tmp_path / "runs.json"
    engine.save_runs(str(path), raw)
    assert engine.load_runs(str(path)) == raw


def _row(p99: float = 1.0, cpu: float = 2.0, **extra: Any) -> dict[str, Any]:
    base = {"p50": 0.5, "p99": p99, "max": p99, "drift": 0.5, "cpu_us": cpu, "mem": 100.0,
            "due": 10, "delivered": 10, "skipped": 0, "early": 0}  # fmt: skip
    return {**base, **extra}


def _verdicts(raw: dict[Any, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str]) -> str:
    results = {key: engine.merge(runs) for key, runs in raw.items()}
    engine.summarize(results, ["asyncio"], raw)
    return capsys.readouterr().out


def test_a_tick_the_engine_lost_without_counting_it_fails_t4(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = engine.Config(100, 1.0, "spread", 4.0)
    raw = {
        ("asyncio", cfg, "reference"): [_row()],
        ("asyncio", cfg, "gatebeat"): [_row(skipped=1, delivered=9, unexplained_skips=1)],
    }
    out = _verdicts(raw, capsys)
    assert "NOT MET T4 no drift, no missing ticks" in out
    assert "skips the engine did not count=1" in out


def test_a_key_row_that_failed_is_not_met_rather_than_left_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = engine.Config(10000, 1.0, "spread", 4.0)
    raw = {
        ("asyncio", cfg, "reference"): [_row()],
        ("asyncio", cfg, "gatebeat"): [_row(), {"error": "too slow (n/a)"}],
    }
    out = _verdicts(raw, capsys)
    assert "NOT MET every key row ran (every repeat)" in out
    assert "gatebeat asyncio 1s N=10000 spread: 1 failed run(s)" in out
