"""The public webhook server under a flood: idle sockets, slowloris senders
and slow bodies must neither cost a thread each nor lock carriers out, and
media streams keep their own room and live past the read deadline.

The daemon tests run the real voicecalld against FakeTwilio on 127.0.0.1;
the server tests run the real WebhookServer in this process with a small
WSGI app (a WebSocket echo at the stream path), talking over real sockets.
"""

from __future__ import annotations

import json
import resource
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import simple_websocket
from werkzeug.wrappers import Request, Response

from voicecalld.httpserver import WebhookServer
from voicecalld.testing._wait import wait_until
from voicecalld.testing.fake_twilio import FakeTwilio
from voicecalld.testing.ports import free_port

FROM, TO = "+15550001111", "+15550002222"
FLOOD = 2000


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("Threads:"))


def healthz(port: int) -> tuple[int, Any]:
    r = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    return r.status_code, r.json()


def closed_by_server(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """What the server sent before closing ``sock`` (b"" for a silent close);
    fails if it is still open after ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data


class Slowloris:
    """Sends a request head one byte every 0.3 s and never finishes it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(b"POST /voice/webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        self.sent = 0
        self.answer = b""
        self.closed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            try:
                self.sock.sendall(b"a")
                self.sent += 1
                self.sock.settimeout(0.0)
                try:
                    data = self.sock.recv(4096)
                except BlockingIOError:
                    continue
                finally:
                    self.sock.settimeout(10)
                self.answer += data
                if not data:
                    break
            except OSError:
                break
        self.closed.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def twilio_config(fake: FakeTwilio, port: int, **serve: Any) -> dict[str, Any]:
    return {"provider": "twilio", "fromNumber": FROM, "toNumber": TO, "publicUrl": f"http://127.0.0.1:{port}",
            "serve": {"port": port, **serve},
            "twilio": {"accountSid": fake.account_sid, "authToken": fake.auth_token, "apiBaseUrl": fake.base_url},
            "outbound": {"notifyHangupDelaySec": 0.05}}


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio(time_scale=0.05, ms_per_char=1, owned_numbers=[FROM]) as f:
        yield f


def test_a_flood_of_idle_and_slow_sockets_costs_no_threads_and_carriers_get_through(start_daemon, fake) -> None:
    raise_nofile(FLOOD + 600)
    port = free_port()
    d = start_daemon(twilio_config(fake, port, maxConnections=256, readTimeoutSec=60))
    before = threads_of(d.proc.pid)
    flood: list[socket.socket] = []
    slow: Slowloris | None = None
    try:
        for _ in range(FLOOD):
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        slow = Slowloris(port)
        # Connections are accepted in order, so once a later one is answered
        # the daemon has taken in the whole flood.
        assert healthz(port) == (200, {"status": "ok"})
        wait_until(lambda: slow.sent >= 3, 10, "the slowloris sender to get going")
        assert threads_of(d.proc.pid) < before + 50, "a thread per idle connection"
        # A whole call's worth of signed Twilio webhooks, flood or not.
        call_id = d.rpc("voicecall.initiate", {"message": "The flood did not stop me", "mode": "notify"})["callId"]
        assert d.wait_state(call_id, "completed", timeout=30)["endReason"] == "completed"
        stats = d.rpc("daemon.status")["webhook"]["connections"]
        assert stats["waiting"] >= 250 and stats["evicted"] >= FLOOD - 256, stats  # the flood is still there
        assert not slow.closed.is_set()
    finally:
        if slow is not None:
            slow.close()
        for s in flood:
            s.close()


def test_idle_and_slow_connections_are_closed_after_the_read_timeout(start_daemon) -> None:
    d = start_daemon({"serve": {"port": 0, "readTimeoutSec": 1}})
    port = d.webhook_port
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    slow = Slowloris(port)
    body = socket.create_connection(("127.0.0.1", port), timeout=10)
    body.sendall(b"POST /voice/webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly part of it")
    try:
        assert closed_by_server(idle) == b""  # it sent nothing, so it gets nothing
        assert slow.closed.wait(10), "the slowloris connection is still open"
        assert slow.answer.startswith(b"HTTP/1.1 408 ")
        assert closed_by_server(body).startswith(b"HTTP/1.1 408 ")
        assert healthz(port) == (200, {"status": "ok"})
    finally:
        for s in (idle, body):
            s.close()
        slow.close()


def test_a_slow_chunked_body_is_cut_off_by_the_deadline_without_an_error_in_the_log(start_daemon) -> None:
    d = start_daemon({"serve": {"port": 0, "readTimeoutSec": 1}})
    with socket.create_connection(("127.0.0.1", d.webhook_port), timeout=10) as s:
        s.sendall(b"POST /voice/webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
        assert closed_by_server(s).startswith(b"HTTP/1.1 400 ")  # werkzeug: the client went away
    assert " ERROR " not in d.log()


def test_requests_past_the_cap_get_a_clean_503_and_the_slots_come_back(start_daemon) -> None:
    d = start_daemon({"serve": {"port": 0, "maxConnections": 2, "readTimeoutSec": 30}})
    port = d.webhook_port
    holders = []
    for _ in range(2):  # bodies that never come: each keeps a request "being answered"
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"POST /voice/webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        holders.append(s)
    try:
        d.wait(lambda: d.rpc("daemon.status")["webhook"]["connections"]["answering"] == 2, what="2 busy requests")
        status, body = healthz(port)
        assert status == 503 and "too many connections" in body["error"]
    finally:
        for s in holders:
            s.close()
    d.wait(lambda: healthz(port)[0] == 200, what="the slots to be released")


def test_the_oldest_idle_connection_makes_room_for_a_new_one(start_daemon) -> None:
    d = start_daemon({"serve": {"port": 0, "maxConnections": 8, "readTimeoutSec": 60}})
    port = d.webhook_port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
    try:
        assert healthz(port) == (200, {"status": "ok"})
        assert closed_by_server(idle[0]) == b""  # the first was closed to make room
        stats = d.rpc("daemon.status")["webhook"]["connections"]
        assert stats["waiting"] <= 8 and stats["evicted"] >= 12, stats
    finally:
        for s in idle:
            s.close()


# --- the server on its own: media streams ----------------------------------------------------------------


class EchoApp:
    """200 for plain requests; a WebSocket echo at /stream (a stand-in for the media hub)."""

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.path == "/stream":
            ws = simple_websocket.Server.accept(environ)
            try:
                while True:
                    message = ws.receive(timeout=30)
                    if message is None:
                        break
                    ws.send(message)
            except simple_websocket.ConnectionClosed:
                pass
            raise ConnectionError("websocket over")  # the socket is the WebSocket's: no HTTP answer
        return Response(json.dumps({"path": request.path}), mimetype="application/json")(environ, start_response)


@pytest.fixture
def server() -> Iterator[WebhookServer]:
    srv = WebhookServer("127.0.0.1", 0, EchoApp(), max_connections=1, read_timeout=0.5, stream_path="/stream",
                        stream_slots=2)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    thread.join(5)


def test_streams_outlive_the_read_timeout_and_do_not_use_up_the_connection_cap(server) -> None:
    port = server.port
    streams = [simple_websocket.Client.connect(f"ws://127.0.0.1:{port}/stream") for _ in range(2)]
    try:
        for ws in streams:
            ws.send("hello")
            assert ws.receive(timeout=10) == "hello"
        wait_until(lambda: server.stats()["streams"] == 2, 10, "two streams")
        # A connection opened after the streams is closed for idling: the
        # read deadline has passed for the streams too.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
            assert closed_by_server(idle) == b""
        for ws in streams:
            ws.send("still here")
            assert ws.receive(timeout=10) == "still here"
        # With maxConnections = 1 and two streams open, a plain request still fits.
        r = requests.get(f"http://127.0.0.1:{port}/x", timeout=10)
        assert r.status_code == 200 and r.json() == {"path": "/x"}
    finally:
        for ws in streams:
            ws.close()
    wait_until(lambda: server.stats()["streams"] == 0, 10, "the streams to be released")


def test_a_stream_upgrade_past_the_stream_slots_is_answered_as_a_plain_request(server) -> None:
    port = server.port
    streams = [simple_websocket.Client.connect(f"ws://127.0.0.1:{port}/stream") for _ in range(2)]
    try:
        wait_until(lambda: server.stats()["streams"] == 2, 10, "two streams")
        third = simple_websocket.Client.connect(f"ws://127.0.0.1:{port}/stream")
        third.send("x")
        assert third.receive(timeout=10) == "x"  # it took the one general slot
        assert server.stats()["streams"] == 2 and server.stats()["answering"] == 1
        third.close()
    finally:
        for ws in streams:
            ws.close()


def test_a_request_arriving_in_pieces_with_its_body_is_answered(server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        for piece in (b"GET /pie", b"ces HTTP/1.1\r\nHost: x\r", b"\nContent-Length: 3\r\n\r\n", b"abc"):
            s.sendall(piece)
            time.sleep(0.02)  # separate segments, not a timing assertion
        answer = closed_by_server(s)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"path": "/pieces"}')
