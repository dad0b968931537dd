"""A real Prometheus scrapes the real ``gatebeat demo``; the series are queryable."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from tests.e2e.helpers import free_port, gatebeat, get, scrape, stop, wait_until

PROMETHEUS = shutil.which("prometheus")


def query(prometheus_port: int, expression: str) -> list[dict]:
    url = f"http://127.0.0.1:{prometheus_port}/api/v1/query?" + urllib.parse.urlencode(
        {"query": expression}
    )
    status, body = get(url)
    assert status == 200, body
    payload = json.loads(body)
    assert payload["status"] == "success", payload
    return list(payload["data"]["result"])


@pytest.mark.e2e
def test_prometheus_scrapes_the_demo_and_every_device_is_up(tmp_path: Path) -> None:
    assert PROMETHEUS is not None, "the Debian package 'prometheus' is needed (.ci/setup)"
    metrics_port, prometheus_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: gatebeat\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    with gatebeat(
        "demo", "--listen", f"127.0.0.1:{metrics_port}", log=tmp_path / "demo.log"
    ) as demo:
        wait_until(lambda: scrape(metrics_port), timeout=30, what="demo metrics")
        with (tmp_path / "prometheus.log").open("wb") as log:
            prometheus = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_until(
                    lambda: _safe_query(prometheus_port, 'up{job="gatebeat"} == 1'),
                    timeout=60,
                    what="prometheus scraped gatebeat",
                )
                up = wait_until(
                    lambda: _count(_safe_query(prometheus_port, "gatebeat_device_up == 1"), 6),
                    timeout=60,
                    what="six devices up in prometheus",
                )
                assert {s["metric"]["device"] for s in up} == {
                    "boiler",
                    "meter",
                    "plc",
                    "meter-rtu",
                    "thermo",
                    "sensor",
                }
                rates = wait_until(
                    lambda: _count(
                        _safe_query(prometheus_port, "rate(gatebeat_ticks_total[5s]) > 0"), 9
                    ),
                    timeout=60,
                    what="tick rates for all nine timers",
                )
                assert len(rates) >= 9
                p99 = query(
                    prometheus_port,
                    "histogram_quantile(0.99, sum by (le) "
                    "(rate(gatebeat_tick_lateness_seconds_bucket[10s])))",
                )
                assert p99 and float(p99[0]["value"][1]) < 0.1
                readings = query(prometheus_port, '{__name__=~"gatebeat_reading_.+"}')
                assert len(readings) >= 10
            finally:
                prometheus.terminate()
                prometheus.wait(timeout=10)
        code, _ = stop(demo)
        assert code == 0


def _safe_query(port: int, expression: str) -> list[dict] | None:
    try:
        return query(port, expression)
    except (OSError, AssertionError):
        return None


def _count(result: list[dict] | None, at_least: int) -> list[dict] | None:
    return result if result is not None and len(result) >= at_least else None
