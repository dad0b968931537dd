"""Timing budgets: worst-case bus rounds against the intervals of their timers."""

from __future__ import annotations

import pytest

from service.budget import BudgetError, BusLoad, DeviceLoad, TimerLoad, check_budget


def line(*devices: DeviceLoad, gap: float = 0.0) -> BusLoad:
    return BusLoad(name="rs485", gap=gap, devices=devices)


def test_a_comfortable_bus_has_no_findings() -> None:
    dev = DeviceLoad("meter", timeout=0.1, retries=1, timers=(TimerLoad("fast", 1.0, 2),))
    assert check_budget([line(dev, gap=0.005)]) == []


def test_worst_case_round_counts_timeouts_retries_and_gaps() -> None:
    meter = DeviceLoad(
        "meter", timeout=1.0, retries=2, request_gap=0.05,
        timers=(TimerLoad("fast", 5.0, 2), TimerLoad("watchdog", 30.0, 1)),
    )  # fmt: skip
    plc = DeviceLoad("plc", timeout=0.5, retries=0, timers=(TimerLoad("beat", 1.0, 1),))
    findings = check_budget([line(meter, plc, gap=0.03)])
    # meter: 3 requests x (1.0 x 3 + 0.05) = 9.15; plc: 1 x (0.5 + 0.03) = 0.53
    assert [(f.device, f.timer) for f in findings] == [("meter", "fast"), ("plc", "beat")]
    assert findings[0].needed_seconds == pytest.approx(9.68)
    assert findings[0].own_seconds == pytest.approx(6.1)
    assert findings[1].own_seconds == pytest.approx(0.53)
    assert (
        "bus 'rs485': devices[plc].beat: interval 1 s is shorter than the worst case 9.680 s"
        in str(findings[1])
    )


def test_buses_are_independent_and_strict_raises() -> None:
    slow = DeviceLoad("slow", timeout=2.0, retries=1, timers=(TimerLoad("p", 1.0, 1),))
    quick = DeviceLoad("quick", timeout=0.1, retries=0, timers=(TimerLoad("p", 1.0, 1),))
    buses = [BusLoad("a", 0.0, (slow,)), BusLoad("b", 0.0, (quick,))]
    assert [f.bus for f in check_budget(buses)] == ["a"]
    with pytest.raises(
        BudgetError, match=r"timing budget exceeded:\n  bus 'a': devices\[slow\]\.p"
    ) as info:
        check_budget(buses, strict=True)
    assert len(info.value.findings) == 1
