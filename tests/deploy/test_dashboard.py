"""The Grafana dashboard (deploy/grafana/dashboards/gatebeat.json) and its provisioning.

The live test starts a real exporter (`gatebeat demo`: simulated devices, no hardware) and a real
Prometheus (temporary storage, 127.0.0.1, 1 s scrapes, the project's alert rules loaded), then
runs every dashboard query with the variables substituted the way Grafana does: each must be
valid PromQL and return series. It also checks that every alert rule evaluates without error on
real data (vector matching problems only show there).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy._tools import DEPLOY, REPO, free_port, tool

GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "gatebeat.json"
RATE_INTERVAL = "30s"  # what Grafana makes of $__rate_interval at a 1 s scrape interval
# Queries allowed to be empty while nothing fails (still checked for validity).
LATENESS = "sum by (device, timer, le) (rate(gatebeat_tick_lateness_seconds_bucket"
EMPTY_ALLOWED = {"gatebeat_device_errors_total": "exported after a device's first failure"}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels() -> list[dict[str, Any]]:
    out = []
    for panel in _dashboard()["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def _queries() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels() for t in p["targets"]]


def substitute(expr: str, *, device: str = ".*", instance: str = ".*") -> str:
    """Grafana's substitution of the dashboard's variables (regex values for multi-selects)."""
    for name, value in (
        ("__rate_interval", RATE_INTERVAL),
        ("device", device),
        ("instance", instance),
    ):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


# ------------------------------------------------------------------------------ static


def test_provisioning_files() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/gatebeat.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{path}:ro" in mounts


def test_dashboard_structure() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "gatebeat"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    device = variables["device"]
    assert device["type"] == "query"
    assert device["multi"] and device["includeAll"] and device["allValue"] == ".*"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _panels():
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]


def test_dashboard_covers_the_contract() -> None:
    exprs = "\n".join(expr for _, expr in _queries())
    for needle in (
        f"histogram_quantile(0.5, {LATENESS}",
        f"histogram_quantile(0.99, {LATENESS}",
        "gatebeat_tick_overruns_total",
        "gatebeat_ticks_skipped_total",
        "gatebeat_device_up",
        "gatebeat_device_last_success_timestamp_seconds",
        "gatebeat_bus_wait_seconds_bucket",
        '__name__=~"gatebeat_reading_.*"',
    ):
        assert needle in exprs, needle
    for title, expr in _queries():
        if "device" in expr and "bus_wait" not in expr and "loop_lag" not in expr:
            assert 'device=~"$device"' in expr, f"{title}: not filtered by $device"


# ------------------------------------------------------------------------------ live


def _get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


class Stack:
    def __init__(self, prometheus: str, exporter: str, logs: dict[str, Path]) -> None:
        self.prometheus = prometheus
        self.exporter = exporter
        self.logs = logs

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.prometheus}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        status, body = _get(url)
        try:
            reply = json.loads(body)
        except ValueError:
            pytest.fail(f"{url}: HTTP {status}: {body[:500]}")
        if reply.get("status") != "success":
            pytest.fail(f"{url}: {reply.get('errorType')}: {reply.get('error')}")
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def tail(self) -> str:
        return "\n".join(
            f"--- {name} ---\n" + path.read_text(errors="replace")[-3000:]
            for name, path in self.logs.items()
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin = tool("prometheus")
    tmp = tmp_path_factory.mktemp("dashboard")
    exporter_port, prometheus_port = free_port(), free_port()
    exporter = f"http://127.0.0.1:{exporter_port}"
    prometheus = f"http://127.0.0.1:{prometheus_port}"
    logs = {"gatebeat demo": tmp / "demo.log", "prometheus": tmp / "prometheus.log"}
    (tmp / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
                "scrape_configs": [
                    {
                        "job_name": "gatebeat",
                        "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}],
                    }
                ],
            }
        )
    )
    demo = [sys.executable, "-m", "service", "demo", "--listen", f"127.0.0.1:{exporter_port}"]
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("GATEBEAT_CONFIG", None)
    try:
        with logs["gatebeat demo"].open("wb") as out:
            procs.append(
                subprocess.Popen(
                    demo,
                    cwd=REPO,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        with logs["prometheus"].open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [
                        prometheus_bin,
                        f"--config.file={tmp / 'prometheus.yml'}",
                        f"--web.listen-address=127.0.0.1:{prometheus_port}",
                        f"--storage.tsdb.path={tmp / 'tsdb'}",
                    ],
                    cwd=tmp,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        result = Stack(prometheus, exporter, logs)

        deadline = time.monotonic() + 30
        while True:
            for proc in procs:
                if proc.poll() is not None:
                    pytest.fail(f"{proc.args[0]} exited {proc.returncode}\n{result.tail()}")
            status, body = _get(f"{exporter}/metrics")
            if status == 200 and "gatebeat_ticks_total" in body:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"gatebeat demo served no metrics within 30 s\n{result.tail()}")
            time.sleep(0.2)

        # The first scrape comes 5-6 s after Prometheus starts, even at a 1 s interval.
        deadline = time.monotonic() + 30
        while True:
            if _get(f"{prometheus}/-/ready")[0] == 200 and any(
                s["value"][1] == "1" for s in result.query('up{job="gatebeat"}')
            ):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"Prometheus saw no successful scrape within 30 s\n{result.tail()}")
            time.sleep(0.5)
        yield result
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _devices(stack: Stack) -> list[str]:
    variable = next(v for v in _dashboard()["templating"]["list"] if v["name"] == "device")
    selector = variable["query"]["query"]
    assert selector.startswith("label_values(") and selector.endswith(", device)")
    series = substitute(selector[len("label_values(") : -len(", device)")])
    return sorted(stack.api("label/device/values", **{"match[]": series}))


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_every_query_is_valid_and_returns_series(stack: Stack) -> None:
    devices = _devices(stack)
    assert devices, "the device variable has no values"
    instances = stack.api("label/instance/values", **{"match[]": "gatebeat_build_info"})
    assert instances, "the instance variable has no values"

    # Validity first (fails at once on bad PromQL), for "All" and for each single device.
    queries = _queries()
    for _title, expr in queries:
        for device in [".*", *devices]:
            stack.query(substitute(expr, device=device))

    # Series: rate() needs two scrapes in the window, so allow some seconds.
    deadline = time.monotonic() + 40
    missing: list[str] = []
    while True:
        missing = []
        for title, expr in queries:
            if any(name in expr for name in EMPTY_ALLOWED):
                continue
            if not stack.query(substitute(expr)):
                missing.append(f"{title}: {substitute(expr)}")
        per_device = [
            (title, expr)
            for title, expr in queries
            if title in {"Device up", "Lateness p50", "Lateness p99", "Ticks per second"}
        ]
        for device in devices:
            for title, expr in per_device:
                if not stack.query(substitute(expr, device=device)):
                    missing.append(f"{title} [{device}]: {substitute(expr, device=device)}")
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not missing, "queries without series:\n" + "\n".join(missing) + "\n" + stack.tail()


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_alert_rules_evaluate_on_real_data(stack: Stack) -> None:
    deadline = time.monotonic() + 20
    while True:
        rules = [r for g in stack.api("rules")["groups"] for r in g["rules"]]
        assert rules, "no rules loaded"
        if all(r.get("lastEvaluation", "").startswith("20") for r in rules):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"rules not evaluated within 20 s: {rules}")
        time.sleep(1)
    bad = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
    assert not bad, "\n".join(bad)
