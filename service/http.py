"""The HTTP exporter: ``/metrics``, ``/healthz`` and a landing page, served from a thread.

Scrapes must never delay a heartbeat, so the server runs in its own threads (a
``ThreadingHTTPServer``: one acceptor thread, one short-lived thread per connection). What it
reads is thread-safe: prometheus-client metrics lock internally, device state is read through
immutable snapshots, and the health callable (``Watchdog.check``) only reads.

Optional TLS (``ssl``; the handshake runs in the connection's thread, so a slow client cannot
block others) and HTTP basic auth. The basic-auth secret is either the plain password or
``"sha256:" + hex(sha256(password))``, so configs need not hold the password itself; it is
compared in constant time. Without credentials every path answers 401 (``/healthz`` may be left
open with ``auth_healthz=False`` for a container health check).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import hashlib
import hmac
import html
import io
import ipaddress
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from service.scrape_gate import ScrapeGate

__all__ = [
    "Exporter",
    "ExporterError",
    "HealthCheck",
    "accepts_gzip",
    "check_basic_auth_secret",
    "check_basic_auth_user",
    "parse_listen",
    "redact_secret",
]

logger = logging.getLogger("gatebeat.http")

HealthCheck = Callable[[], tuple[bool, Mapping[str, object]]]
"""Returns ``(ok, reason)``; called on the exporter's thread for every ``/healthz``."""

_SHA256_PREFIX = "sha256:"
_CONNECTION_TIMEOUT = 10.0  # seconds a client may take for the TLS handshake or a request


class ExporterError(OSError):
    """The exporter cannot listen (bad address, port in use, unreadable certificate)."""


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[::1]:9810"`` for IPv6, ``":9810"`` for all interfaces).

    Raises:
        ValueError: the message names the value.
    """
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"metrics listen address {listen!r}: expected HOST:PORT")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"metrics listen address {listen!r}: port {port} out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


class Exporter:
    """Serve Prometheus metrics and health over HTTP(S) from a background thread.

    Args:
        listen: ``"HOST:PORT"``; port 0 picks a free port (see :attr:`address`).
        registry: the registry whose metrics ``/metrics`` serves.
        health: the health check behind ``/healthz`` (200 when ok, else 503).
        tls_cert: PEM certificate (chain) file; enables HTTPS.
        tls_key: PEM private key file (omit if it is in ``tls_cert``).
        basic_auth: ``(user, secret)``; secret is the password or ``"sha256:<hex digest>"``.
        auth_healthz: also require credentials for ``/healthz``.
        render_gate: renders ``/metrics`` only in gaps between ticks (the runner passes one
            for its event loop's engine; see :mod:`service.scrape_gate`).
    """

    def __init__(
        self,
        listen: str = "127.0.0.1:9810",
        registry: CollectorRegistry | None = None,
        health: HealthCheck | None = None,
        *,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        basic_auth: tuple[str, str] | None = None,
        auth_healthz: bool = True,
        render_gate: ScrapeGate | None = None,
    ) -> None:
        self._host, self._port = parse_listen(listen)
        self._listen = listen
        self.registry = registry if registry is not None else CollectorRegistry()
        self._health = health if health is not None else _always_ok
        if tls_key is not None and tls_cert is None:
            raise ValueError(f"metrics listen {listen!r}: tls_key given without tls_cert")
        self._tls_cert = tls_cert
        self._tls_key = tls_key
        if basic_auth is not None:
            user, secret = basic_auth
            try:
                check_basic_auth_user(user)
                check_basic_auth_secret(secret)
            except ValueError as exc:
                raise ValueError(f"metrics listen {listen!r}: basic_auth: {exc}") from None
        self._basic_auth = basic_auth
        self._auth_healthz = auth_healthz
        self._render_gate = render_gate
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``; only after :meth:`start`."""
        if self._server is None:
            raise RuntimeError(f"exporter {self._listen!r} is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """Base URL of the running exporter (``http://127.0.0.1:9810``)."""
        host, port = self.address
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self._tls_cert is not None else "http"
        return f"{scheme}://{host}:{port}"

    async def start(self) -> None:
        """Bind and start serving; returns once the socket listens.

        Raises:
            ExporterError: the address cannot be bound or the certificate cannot be loaded.
            RuntimeError: already started.
        """
        if self._server is not None:
            raise RuntimeError(f"exporter {self._listen!r} is already started")
        context = self._tls_context() if self._tls_cert is not None else None
        server = await asyncio.to_thread(self._bind, context)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"gatebeat-exporter-{server.server_address[1]}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        logger.info("exporter listening url=%s", self.url)

    async def stop(self) -> None:
        """Stop serving and close the socket. Idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        if thread is not None:
            await asyncio.to_thread(thread.join, 5.0)

    # -- internals -------------------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(
                str(self._tls_cert), None if self._tls_key is None else str(self._tls_key)
            )
        except (OSError, ssl.SSLError) as exc:
            raise ExporterError(
                f"metrics listen {self._listen!r}: cannot load tls_cert={self._tls_cert!s} "
                f"tls_key={self._tls_key!s}: {exc}"
            ) from exc
        return context

    def _bind(self, context: ssl.SSLContext | None) -> _Server:
        family = socket.AF_INET
        try:
            if self._host and ipaddress.ip_address(self._host).version == 6:
                family = socket.AF_INET6
        except ValueError:
            pass  # a host name: resolved by bind() as IPv4
        try:
            return _Server((self._host, self._port), self, context, family)
        except OSError as exc:
            raise ExporterError(
                exc.errno, f"metrics listen {self._listen!r}: cannot bind: {exc.strerror or exc}"
            ) from exc

    def _authorized(self, header: str | None) -> bool:
        if self._basic_auth is None:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        want_user, secret = self._basic_auth
        user_ok = hmac.compare_digest(user.encode(), want_user.encode())
        if secret.startswith(_SHA256_PREFIX):
            digest = hashlib.sha256(password.encode()).hexdigest()
            password_ok = hmac.compare_digest(digest, secret[len(_SHA256_PREFIX) :].lower())
        else:
            password_ok = hmac.compare_digest(password.encode(), secret.encode())
        return user_ok and password_ok


def redact_secret(secret: str) -> str:
    """Show a basic-auth secret in a message without giving it away.

    Only what is not secret is shown: that it is empty, or the ``sha256:`` prefix, and the
    length. ``"sha256:abc"`` becomes ``'sha256:...' (3 characters after the prefix)``.
    """
    if not secret:
        return "'' (empty)"
    if secret.startswith(_SHA256_PREFIX):
        rest = len(secret) - len(_SHA256_PREFIX)
        return f"{_SHA256_PREFIX + '...'!r} ({rest} characters after the prefix)"
    return f"'...' ({len(secret)} characters)"


def check_basic_auth_user(user: str) -> None:
    """Refuse a basic-auth user name that no client could send.

    Raises:
        ValueError: the name is empty (auth would look configured but be off) or contains
            ``:`` (the separator of user and password in the ``Authorization`` header).
    """
    if not user:
        raise ValueError("user '' is empty; a user and a password are both needed")
    if ":" in user:
        raise ValueError(
            f"user {user!r} contains ':', which separates user and password in basic auth"
        )


def check_basic_auth_secret(secret: str) -> None:
    """Refuse a basic-auth secret that no password could match.

    The secret is the password itself, or ``"sha256:"`` and the 64 hex digits of the
    password's SHA-256. Messages show the secret only through :func:`redact_secret`.

    Raises:
        ValueError: the secret is empty, or starts with ``sha256:`` without 64 hex digits.
    """
    if not secret:
        raise ValueError("password '' is empty; a user and a password are both needed")
    if secret.startswith(_SHA256_PREFIX):
        digest = secret[len(_SHA256_PREFIX) :]
        if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
            raise ValueError(
                f"password {redact_secret(secret)} is not 'sha256:' followed by 64 hex digits "
                "(printf %s PASSWORD | sha256sum)"
            )


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header allows a gzip body (RFC 9110 section 12.5.3).

    ``gzip`` (or ``x-gzip``) with a quality above zero allows it; ``gzip;q=0`` refuses it;
    without either, ``*`` with a quality above zero allows it. A malformed quality counts as 0.
    """
    qualities: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        if coding:
            qualities[coding.lower()] = quality
    for coding in ("gzip", "x-gzip", "*"):
        if coding in qualities:
            return qualities[coding] > 0
    return False


def _always_ok() -> tuple[bool, Mapping[str, object]]:
    return True, {"status": "ok"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        exporter: Exporter,
        context: ssl.SSLContext | None,
        family: socket.AddressFamily,
    ) -> None:
        self.address_family = family
        self.exporter = exporter
        self.tls = context
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # Skip HTTPServer.server_bind's getfqdn(): a reverse DNS lookup can hang for seconds.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()[:2]
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        gate = self.exporter._render_gate
        if gate is not None:
            gate.wait_for_gap()  # starting the connection's thread takes the GIL too
        super().process_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(_CONNECTION_TIMEOUT)
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        try:  # the handshake runs here, in the connection's own thread
            secured = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            logger.debug("exporter tls handshake failed client=%s error=%s", client_address, exc)
            return
        try:
            super().finish_request(secured, client_address)
        finally:
            secured.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("exporter request failed client=%s", client_address, exc_info=True)


_LANDING = """<!doctype html>
<html><head><meta charset="utf-8"><title>gatebeat</title></head>
<body><h1>gatebeat</h1>
<p>Heartbeats and polls for Modbus and serial devices.</p>
<ul>
<li><a href="/metrics">/metrics</a> &mdash; Prometheus metrics</li>
<li><a href="/healthz">/healthz</a> &mdash; health (200 healthy, 503 unhealthy)</li>
</ul>
<p>Version {version}</p>
</body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "gatebeat"
    timeout = _CONNECTION_TIMEOUT

    def handle_one_request(self) -> None:
        gate = self.server.exporter._render_gate
        rfile = self.rfile
        if gate is None or not isinstance(rfile, io.BufferedReader):
            super().handle_one_request()
            return
        try:  # wait for the request without holding the GIL, then for a gap between ticks
            arrived = rfile.peek(1)
        except OSError:
            arrived = b""  # a timeout or reset: the request's own read reports it
        if not arrived:
            super().handle_one_request()
            return
        with gate.between_ticks():
            super().handle_one_request()

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _dispatch(self, *, head: bool) -> None:
        exporter = self.server.exporter
        path = self.path.split("?", 1)[0]
        if (path != "/healthz" or exporter._auth_healthz) and not exporter._authorized(
            self.headers.get("Authorization")
        ):
            self._send(
                401,
                "text/plain; charset=utf-8",
                b"401 Unauthorized\n",
                head=head,
                extra={"WWW-Authenticate": 'Basic realm="gatebeat", charset="UTF-8"'},
            )
            return
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            body = encoder(exporter.registry)
            extra: dict[str, str] = {}
            if accepts_gzip(self.headers.get("Accept-Encoding", "")):
                body = gzip.compress(body)
                extra["Content-Encoding"] = "gzip"
            self._send(200, content_type, body, head=head, extra=extra)
        elif path == "/healthz":
            try:
                ok, reason = exporter._health()
            except Exception as exc:
                logger.exception("health check failed")
                ok, reason = False, {"status": "unhealthy", "problems": [repr(exc)]}
            body = json.dumps(dict(reason), sort_keys=True, default=str).encode() + b"\n"
            self._send(200 if ok else 503, "application/json", body, head=head)
        elif path in ("/", "/index.html"):
            from service import __version__

            page = _LANDING.format(version=html.escape(__version__)).encode()
            self._send(200, "text/html; charset=utf-8", page, head=head)
        else:
            self._send(404, "text/plain; charset=utf-8", b"404 Not Found\n", head=head)

    def _send(
        self,
        status: int,
        content_type: str,
        body: bytes,
        *,
        head: bool,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("exporter client=%s %s", self.address_string(), format % args)
