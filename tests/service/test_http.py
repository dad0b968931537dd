"""The exporter over real sockets on 127.0.0.1: endpoints, health transitions, TLS, basic auth.

These run on the real clock (the server lives in threads, which virtual time cannot follow).
HTTP requests are made from worker threads so the loop keeps running, except where the point
is that the loop is blocked.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from service.health import DeviceHealth
from service.http import Exporter, ExporterError, parse_listen
from service.metrics import MetricsHub
from service.runner import serve
from service.settings import load_settings
from service.watchdog import Watchdog


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


def fetch(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    method: str = "GET",
) -> Response:
    request = urllib.request.Request(url, headers=dict(headers or {}), method=method)
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as reply:
            return Response(reply.status, dict(reply.headers), reply.read())
    except urllib.error.HTTPError as error:
        with error:
            return Response(error.code, dict(error.headers), error.read())


async def afetch(url: str, **kwargs: object) -> Response:
    return await asyncio.to_thread(fetch, url, **kwargs)  # type: ignore[arg-type]


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class Switch:
    """A health check the test flips: the exporter is the system under test here."""

    def __init__(self) -> None:
        self.ok = True

    def __call__(self) -> tuple[bool, dict[str, object]]:
        return self.ok, {"status": "ok" if self.ok else "unhealthy"}


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[Exporter, MetricsHub, Switch]]:
    registry = CollectorRegistry()
    hub = MetricsHub(registry)
    switch = Switch()
    exporter = Exporter("127.0.0.1:0", registry, switch)
    await exporter.start()
    try:
        yield exporter, hub, switch
    finally:
        await exporter.stop()


@pytest.mark.asyncio
async def test_start_binds_port_zero_and_serves_metrics(
    served: tuple[Exporter, MetricsHub, Switch],
) -> None:
    exporter, hub, _ = served
    host, port = exporter.address
    assert host == "127.0.0.1" and port > 0
    assert exporter.url == f"http://127.0.0.1:{port}"
    health = DeviceHealth("boiler", "modbus")
    health.record_success({"supply_temperature_celsius": 41.5}, now=0.0)
    hub.add_device(health)
    hub.observer("boiler", "watchdog", 1.0)

    reply = await afetch(exporter.url + "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = reply.body.decode()
    assert 'gatebeat_device_up{device="boiler",driver="modbus"} 1.0' in text
    assert 'gatebeat_reading_supply_temperature_celsius{device="boiler"} 41.5' in text
    assert 'gatebeat_ticks_total{device="boiler",timer="watchdog"} 0.0' in text

    health.record_failure(TimeoutError("no reply"), now=1.0)
    text = (await afetch(exporter.url + "/metrics")).body.decode()
    assert "gatebeat_reading_supply_temperature_celsius{" not in text

    hub.remove_device("boiler")
    text = (await afetch(exporter.url + "/metrics")).body.decode()
    assert 'device="boiler"' not in text


@pytest.mark.asyncio
async def test_openmetrics_when_asked_and_gzip(served: tuple[Exporter, MetricsHub, Switch]) -> None:
    exporter, _, _ = served
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    reply = await afetch(exporter.url + "/metrics", headers={"Accept": accept})
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert reply.body.endswith(b"# EOF\n")
    reply = await afetch(exporter.url + "/metrics", headers={"Accept-Encoding": "gzip"})
    assert reply.headers["Content-Encoding"] == "gzip"
    assert b"gatebeat_build_info" in gzip.decompress(reply.body)


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [
        ("gzip;q=0", False),
        ("gzip; q=0.0, deflate", False),
        ("deflate, gzip;q=0, *", False),
        ("*;q=0", False),
        ("identity", False),
        ("br, GZIP;q=0.5", True),
        ("*", True),
    ],
)
@pytest.mark.asyncio
async def test_gzip_only_when_the_client_accepts_it(
    served: tuple[Exporter, MetricsHub, Switch], accept_encoding: str, gzipped: bool
) -> None:
    exporter, _, _ = served
    reply = await afetch(exporter.url + "/metrics", headers={"Accept-Encoding": accept_encoding})
    assert reply.status == 200
    assert ("Content-Encoding" in reply.headers) is gzipped
    body = gzip.decompress(reply.body) if gzipped else reply.body
    assert b"gatebeat_build_info" in body


@pytest.mark.asyncio
async def test_landing_page_head_and_not_found(served: tuple[Exporter, MetricsHub, Switch]) -> None:
    exporter, _, _ = served
    reply = await afetch(exporter.url + "/")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'<a href="/metrics">' in reply.body and b'<a href="/healthz">' in reply.body
    head = await afetch(exporter.url + "/metrics", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert (await afetch(exporter.url + "/nope")).status == 404


@pytest.mark.asyncio
async def test_healthz_follows_the_health_check(
    served: tuple[Exporter, MetricsHub, Switch],
) -> None:
    exporter, _, switch = served
    reply = await afetch(exporter.url + "/healthz")
    assert (reply.status, json.loads(reply.body)) == (200, {"status": "ok"})
    assert reply.headers["Content-Type"] == "application/json"
    switch.ok = False
    reply = await afetch(exporter.url + "/healthz")
    assert (reply.status, json.loads(reply.body)) == (503, {"status": "unhealthy"})
    switch.ok = True
    assert (await afetch(exporter.url + "/healthz")).status == 200


@pytest.mark.asyncio
async def test_a_failing_health_check_is_a_503_not_a_crash() -> None:
    def broken() -> tuple[bool, dict[str, object]]:
        raise RuntimeError("watchdog state unreadable")

    exporter = Exporter("127.0.0.1:0", CollectorRegistry(), broken)
    await exporter.start()
    try:
        reply = await afetch(exporter.url + "/healthz")
        assert reply.status == 503
        assert "watchdog state unreadable" in json.loads(reply.body)["problems"][0]
    finally:
        await exporter.stop()


@pytest.mark.asyncio
@pytest.mark.realtime
async def test_healthz_turns_503_while_the_loop_is_blocked_and_200_after() -> None:
    """The exporter's thread answers while the loop is blocked, and reports it."""
    registry = CollectorRegistry()
    hub = MetricsHub(registry)
    watchdog = Watchdog(interval=0.05, max_lag=0.2, on_lag=hub.observe_loop_lag)
    exporter = Exporter("127.0.0.1:0", registry, watchdog.check)
    await exporter.start()
    watchdog.start()
    try:
        deadline = time.monotonic() + 5
        while (await afetch(exporter.url + "/healthz")).status != 200:
            assert time.monotonic() < deadline, "never healthy"
            await asyncio.sleep(0.05)

        during: list[Response] = []
        asked = threading.Event()

        def probe() -> None:
            time.sleep(0.5)  # well inside the 1.0 s block below
            during.append(fetch(exporter.url + "/healthz"))
            during.append(fetch(exporter.url + "/metrics"))
            asked.set()

        thread = threading.Thread(target=probe)
        thread.start()
        time.sleep(1.0)  # block the event loop on purpose
        thread.join(timeout=5)
        assert asked.is_set()
        assert during[0].status == 503
        reason = json.loads(during[0].body)
        assert reason["loop_lag_seconds"] > 0.2
        assert reason["problems"][0].startswith("loop lag ")
        assert during[1].status == 200, "scrapes are served while the loop is blocked"

        deadline = time.monotonic() + 5
        while (reply := await afetch(exporter.url + "/healthz")).status != 200:
            assert time.monotonic() < deadline, reply.body
            await asyncio.sleep(0.05)
        lagged = registry.get_sample_value("gatebeat_loop_lag_seconds_bucket", {"le": "0.5"})
        total = registry.get_sample_value("gatebeat_loop_lag_seconds_count")
        assert lagged is not None and total is not None and lagged < total
    finally:
        watchdog.stop()
        await exporter.stop()


@pytest.mark.asyncio
async def test_basic_auth_plain_and_sha256() -> None:
    digest = hashlib.sha256(b"s3cret").hexdigest()
    for secret in ("s3cret", f"sha256:{digest}"):
        exporter = Exporter("127.0.0.1:0", CollectorRegistry(), basic_auth=("prom", secret))
        await exporter.start()
        try:
            for path in ("/metrics", "/", "/healthz"):
                reply = await afetch(exporter.url + path)
                assert reply.status == 401, path
                assert reply.headers["WWW-Authenticate"].startswith('Basic realm="gatebeat"')
            for user, password in (("prom", "wrong"), ("other", "s3cret"), ("prom", "")):
                reply = await afetch(exporter.url + "/metrics", headers=basic(user, password))
                assert reply.status == 401, (user, password)
            bad = {"Authorization": "Basic !!notbase64"}
            assert (await afetch(exporter.url + "/metrics", headers=bad)).status == 401
            reply = await afetch(exporter.url + "/metrics", headers=basic("prom", "s3cret"))
            assert reply.status == 200
            assert b"gatebeat_" not in reply.body, "empty registry"
        finally:
            await exporter.stop()


@pytest.mark.asyncio
async def test_healthz_can_stay_open_for_container_health_checks() -> None:
    exporter = Exporter(
        "127.0.0.1:0", CollectorRegistry(), basic_auth=("prom", "pw"), auth_healthz=False
    )
    await exporter.start()
    try:
        assert (await afetch(exporter.url + "/healthz")).status == 200
        assert (await afetch(exporter.url + "/metrics")).status == 401
    finally:
        await exporter.stop()


SERVED_CONFIG = """
[metrics]
listen = "127.0.0.1:0"
basic_auth_user = "prom"
basic_auth_password = "pw"
{auth_healthz}

[[devices]]
name = "boiler"
driver = "modbus"
transport = {{ kind = "modbus-tcp", host = "127.0.0.1", port = 9, timeout = 0.1, retries = 0 }}
  [[devices.polls]]
  name = "temps"
  interval = 3600
  registers = [{{ field = "supply_temperature_celsius", table = "holding", address = 0 }}]
"""


@pytest.mark.parametrize(("line", "healthz"), [("auth_healthz = false", 200), ("", 401)])
@pytest.mark.asyncio
async def test_auth_healthz_from_the_config_reaches_the_running_exporter(
    tmp_path: Path, line: str, healthz: int
) -> None:
    config = tmp_path / "gatebeat.toml"
    config.write_text(SERVED_CONFIG.format(auth_healthz=line))
    settings = load_settings(str(config), env={})
    assert settings.metrics.auth_healthz is (not line)
    stop = asyncio.Event()
    ready: asyncio.Future[Exporter] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(settings, stop=stop, on_ready=ready.set_result, handle_signals=False)
    )
    try:
        async with asyncio.timeout(10):
            exporter = await ready
        assert (await afetch(exporter.url + "/healthz")).status == healthz
        assert (await afetch(exporter.url + "/metrics")).status == 401
        reply = await afetch(exporter.url + "/healthz", headers=basic("prom", "pw"))
        assert reply.status == 200
    finally:
        stop.set()
        async with asyncio.timeout(10):
            assert await task == 0


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    assert shutil.which("openssl"), "the openssl CLI is needed (.ci/setup installs it)"
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.mark.asyncio
async def test_tls_with_a_self_signed_certificate(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    registry = CollectorRegistry()
    MetricsHub(registry)
    exporter = Exporter(
        "127.0.0.1:0", registry, tls_cert=cert, tls_key=key, basic_auth=("prom", "pw")
    )
    await exporter.start()
    try:
        assert exporter.url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(cert))
        reply = await afetch(exporter.url + "/metrics", context=context)
        assert reply.status == 401
        reply = await afetch(
            exporter.url + "/metrics", context=context, headers=basic("prom", "pw")
        )
        assert reply.status == 200 and b"gatebeat_build_info" in reply.body
        plain = exporter.url.replace("https://", "http://") + "/metrics"
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            await afetch(plain)
        # a client that never handshakes does not block others
        with socket.create_connection(exporter.address, timeout=5):
            reply = await afetch(
                exporter.url + "/healthz", context=context, headers=basic("prom", "pw")
            )
            assert reply.status == 200
    finally:
        await exporter.stop()


@pytest.mark.asyncio
async def test_bad_certificate_is_reported_at_start(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    exporter = Exporter("127.0.0.1:0", CollectorRegistry(), tls_cert=missing)
    with pytest.raises(ExporterError, match=r"cannot load tls_cert=.*missing\.pem"):
        await exporter.start()


@pytest.mark.asyncio
async def test_port_in_use_names_the_address_and_stop_releases_it() -> None:
    first = Exporter("127.0.0.1:0", CollectorRegistry())
    await first.start()
    port = first.address[1]
    second = Exporter(f"127.0.0.1:{port}", CollectorRegistry())
    with pytest.raises(ExporterError, match=rf"'127.0.0.1:{port}': cannot bind"):
        await second.start()
    with pytest.raises(RuntimeError, match="already started"):
        await first.start()
    await first.stop()
    await first.stop()  # idempotent
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        await afetch(f"http://127.0.0.1:{port}/metrics")
    await second.start()  # the port is free again
    await second.stop()


def test_listen_addresses_and_settings_are_validated() -> None:
    assert parse_listen("127.0.0.1:9810") == ("127.0.0.1", 9810)
    assert parse_listen("[::1]:9810") == ("::1", 9810)
    assert parse_listen(":9810") == ("", 9810)
    for bad in ("9810", "127.0.0.1", "host:http", "127.0.0.1:70000"):
        with pytest.raises(ValueError, match=r"metrics listen address"):
            parse_listen(bad)
    with pytest.raises(ValueError, match="tls_key given without tls_cert"):
        Exporter(tls_key="key.pem")
    with pytest.raises(ValueError, match="is not 'sha256:' followed by 64 hex digits") as bad:
        Exporter(basic_auth=("prom", "sha256:abc"))
    assert "abc" not in str(bad.value), "the secret is never shown"
    with pytest.raises(ValueError, match="basic_auth: user '' is empty"):
        Exporter(basic_auth=("", "pw"))
    with pytest.raises(ValueError, match="basic_auth: password '' is empty"):
        Exporter(basic_auth=("prom", ""))
    with pytest.raises(ValueError, match="contains ':'"):
        Exporter(basic_auth=("pr:om", "pw"))
    with pytest.raises(RuntimeError, match="not started"):
        _ = Exporter().address


@pytest.mark.asyncio
async def test_promtool_accepts_what_the_exporter_serves(
    served: tuple[Exporter, MetricsHub, Switch],
) -> None:
    assert shutil.which("promtool"), "promtool is needed (.ci/setup installs Debian 'prometheus')"
    exporter, hub, _ = served
    health = DeviceHealth("boiler", "modbus")
    health.record_success({"supply_temperature_celsius": 41.5, "pump_running": True}, now=0.0)
    hub.add_device(health)
    hub.observer("boiler", "watchdog", 1.0)
    hub.observe_bus("rs485-1", "boiler", 0.002)
    hub.observe_loop_lag(0.001)
    body = (await afetch(exporter.url + "/metrics")).body
    result = await asyncio.to_thread(
        subprocess.run,
        ["promtool", "check", "metrics"],
        input=body,
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
