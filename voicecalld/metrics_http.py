"""The metrics listener (``[metrics] listen``): ``GET /metrics`` in the
Prometheus text format, on an HTTP server of its own.

It is never the public webhook server: what the metrics say (call volume,
failures, latencies) is for the operator, and the webhook server is what
the internet reaches. For the same reason it binds only to a loopback
address unless ``metrics.allowRemote`` says otherwise (``check_listen``,
also run when the configuration loads).

A small standard-library server (one thread per scrape, each bounded by a
timeout): scrapes are rare, so it needs nothing of the webhook server's
machinery.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import metrics

log = logging.getLogger(__name__)

TIMEOUT = 10.0  # seconds a scrape connection may take


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> (host, port); ValueError if malformed."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port like 127.0.0.1:9334, got {value!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"expected [address]:port for IPv6, got {value!r}")
        host = host[1:-1]
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_listen(value: str, allow_remote: bool) -> str | None:
    """What is wrong with ``metrics.listen`` (a sentence), or None."""
    try:
        host, _ = parse_listen(value)
    except ValueError as exc:
        return str(exc)
    if not allow_remote and not is_loopback(host):
        return (f"{host} is not a loopback address; the metrics would be readable from the network. "
                "Bind 127.0.0.1 (and scrape through a proxy), or set metrics.allowRemote = true")
    return None


class RemoteRefused(ValueError):
    pass


class _Handler(BaseHTTPRequestHandler):
    timeout = TIMEOUT
    server_version = "voicecalld-metrics"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/metrics":
            self._send(404, b"not found; metrics are at /metrics\n", "text/plain; charset=utf-8", body)
            return
        self._send(200, metrics.render(), metrics.CONTENT_TYPE, body)

    def _send(self, status: int, payload: bytes, content_type: str, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        log.debug("metrics: %s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)


class MetricsServer:
    """Serves ``/metrics`` on ``listen`` from a thread of its own."""

    def __init__(self, listen: str, allow_remote: bool = False) -> None:
        problem = check_listen(listen, allow_remote)
        if problem is not None:
            raise RemoteRefused(f"metrics.listen: {problem}")
        host, port = parse_listen(listen)
        self._server = _Server(host, port)  # OSError if the address is taken
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="metrics-server", daemon=True)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(2.0)
