"""Prometheus config and alert rules: promtool check config, check rules, test rules."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.deploy._tools import DEPLOY, run, tool

PROM = DEPLOY / "prometheus"
REQUIRED_ALERTS = {
    "GatebeatDown",
    "DeviceDown",
    "HeartbeatLate",
    "TicksSkipped",
    "TickOverruns",
    "PollStale",
}


def test_promtool_check_config() -> None:
    out = run([tool("promtool"), "check", "config", str(PROM / "prometheus.yml")])
    assert "SUCCESS" in out


def test_promtool_check_rules() -> None:
    out = run([tool("promtool"), "check", "rules", str(PROM / "alerts.yml")])
    assert "SUCCESS" in out


def test_promtool_test_rules() -> None:
    out = run([tool("promtool"), "test", "rules", "alerts_test.yml"], cwd=PROM)
    assert "SUCCESS" in out


def test_promtool_test_rules_catches_a_wrong_expectation(tmp_path) -> None:
    """The unit tests are not vacuous: flipping one expectation must make promtool fail."""
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())
    tests["rule_files"] = [str(PROM / "alerts.yml")]
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            if check["exp_alerts"]:
                check["exp_alerts"] = []
    broken = tmp_path / "broken_test.yml"
    broken.write_text(yaml.safe_dump(tests))
    proc = subprocess.run(
        [tool("promtool"), "test", "rules", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0, proc.stdout + proc.stderr


def _rules() -> list[dict]:
    groups = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_alert_is_complete_and_unit_tested() -> None:
    rules = _rules()
    names = {rule["alert"] for rule in rules}
    assert names >= REQUIRED_ALERTS
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
    fired = {
        check["alertname"]
        for case in tests
        for check in case["alert_rule_test"]
        if check["exp_alerts"]
    }
    silent = {
        check["alertname"]
        for case in tests
        for check in case["alert_rule_test"]
        if not check["exp_alerts"]
    }
    for rule in rules:
        name = rule["alert"]
        assert rule.get("for"), f"{name}: no 'for:'"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"], name
        assert "Check" in rule["annotations"]["description"], f"{name}: say what to check"
        assert name in fired, f"{name}: no test shows it firing"
        assert name in silent, f"{name}: no test shows it silent"


def test_heartbeat_late_is_relative_to_the_interval() -> None:
    expr = next(r["expr"] for r in _rules() if r["alert"] == "HeartbeatLate")
    assert "gatebeat_tick_lateness_seconds_bucket" in expr
    assert "gatebeat_timer_interval_seconds" in expr
    assert re.search(r"histogram_quantile\(\s*0\.99", expr)
