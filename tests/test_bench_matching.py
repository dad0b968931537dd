"""The engine benchmark's tick matching (``bench/_engine_impls.match_ticks``): the numbers in
the README's performance section depend on it pairing each tick with the grid point it served."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "_engine_impls.py"
_spec = importlib.util.spec_from_file_location("_engine_impls", _PATH)
assert _spec is not None and _spec.loader is not None
impls = importlib.util.module_from_spec(_spec)
sys.modules["_engine_impls"] = impls
_spec.loader.exec_module(impls)

INTERVAL = 0.01


def on_time(*points: int) -> list[float]:
    return [k * INTERVAL + 0.0005 for k in points]


def test_a_fixed_timer_that_skipped_points_in_a_stall_is_matched_after_them() -> None:
    # Tick 10 starts 27 ms late; FIXED skips points 11 and 12; tick 13 is on time again.
    ticks = [*on_time(*range(10)), 10 * INTERVAL + 0.027, *on_time(*range(13, 20))]
    lateness, skipped = impls.match_ticks(ticks, 0.0, INTERVAL, 0, 19, 1.0, True)
    assert skipped == 2
    assert len(lateness) == 18  # 18 delivered + 2 skipped = 20 due
    assert lateness[10] == pytest.approx(0.027)
    assert lateness[11:] == pytest.approx([0.0005] * 7)  # not 20 ms late: matched to 13..19


def test_without_skips_every_point_gets_the_next_tick_even_in_a_burst() -> None:
    # A catch-up engine runs ticks 10, 11, 12 back to back after the stall.
    burst = [10 * INTERVAL + 0.027, 10 * INTERVAL + 0.0271, 10 * INTERVAL + 0.0272]
    ticks = [*on_time(*range(10)), *burst, *on_time(*range(13, 20))]
    lateness, skipped = impls.match_ticks(ticks, 0.0, INTERVAL, 0, 19, 1.0, False)
    assert skipped == 0 and len(lateness) == 20
    assert lateness[11] == pytest.approx(0.0171)
    assert lateness[13:] == pytest.approx([0.0005] * 7)


def test_only_points_inside_the_window_count() -> None:
    ticks = [*on_time(*range(10)), 10 * INTERVAL + 0.027, *on_time(*range(13, 20))]
    lateness, skipped = impls.match_ticks(ticks, 0.0, INTERVAL, 12, 15, 1.0, True)
    assert skipped == 1  # point 12 (11 is before the window)
    assert lateness == pytest.approx([0.0005] * 3)  # points 13, 14, 15
    lateness, _ = impls.match_ticks(ticks, 0.0, INTERVAL, 0, 19, 16 * INTERVAL, True)
    assert len(lateness) == 14  # ticks after t_stop are not delivered: 0..10, 13..15
