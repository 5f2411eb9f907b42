"""Faults on the media path cost at most the stream they hit: a peer that
stops reading never stalls the loop that reads every stream, and a failure
of the loop itself is survived, logged and reported to /healthz until the
loop runs again. Real sockets, real threads, a real werkzeug server."""

from __future__ import annotations

import base64
import logging
import os
import socket
import threading
from collections.abc import Iterator

import pytest
import simple_websocket
from werkzeug.serving import WSGIRequestHandler, make_server

from voicecalld.media.loop import Doorbell, LoopReader, ReadLoop
from voicecalld.media.outbox import OUTBOX_LIMIT
from voicecalld.testing._wait import wait_until

SMALL_BUFFER = 4096


def ping_flood(n: int) -> bytes:
    """``n`` masked ping frames with the largest payload a ping may carry,
    each answered with a pong of about the same size."""
    mask = b"\x11\x22\x33\x44"
    payload = bytes(i % 251 for i in range(125))
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return (b"\x89" + bytes([0x80 | len(payload)]) + mask + masked) * n


def open_stalled_websocket(port: int, path: str = "/", headers: dict[str, str] | None = None) -> socket.socket:
    """A WebSocket client that will never read: small buffers set before it
    connects (so the window it offers stays small), and no reader thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"{extra}\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(1)  # one byte at a time: nothing after the headers is read
        assert chunk, f"connection closed during the handshake: {response!r}"
        response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def flood_until_stalled_or_cut(sock: socket.socket, limit: int = 32 * OUTBOX_LIMIT) -> str:
    """Send pings, never reading the pongs, until the server stops taking
    them (it stopped reading: "stalled"), cuts the connection ("cut"), or
    ``limit`` bytes went out ("sent"). The limit leaves room for the
    buffers on the way, which on loopback can hold megabytes."""
    chunk = ping_flood(256)
    sock.settimeout(5.0)
    sent = 0
    try:
        while sent < limit:
            sock.sendall(chunk)
            sent += len(chunk)
    except TimeoutError:
        return "stalled"
    except OSError:
        return "cut"
    return "sent"


class LoopEchoApp:
    """WebSocket echo on a ReadLoop, replying on the loop thread."""

    def __init__(self, loop: ReadLoop) -> None:
        self.loop = loop
        self.finished: list[threading.Event] = []

    def __call__(self, environ, start_response):  # noqa: ANN001, ANN204 - WSGI
        ws = simple_websocket.Server.accept(environ, thread_class=LoopReader, event_class=Doorbell)
        finished = threading.Event()
        self.finished.append(finished)
        over = self.loop.add_websocket(ws)
        ended = threading.Event()

        def on_message() -> None:
            while True:
                try:
                    message = ws.receive(timeout=0)
                except simple_websocket.ConnectionClosed:
                    ended.set()
                    return
                if message is None:
                    return
                try:
                    ws.send(message)
                except (simple_websocket.ConnectionClosed, OSError):
                    pass

        ws.event.handler = on_message
        ws.event.handler()  # anything that came before the handler
        try:
            ended.wait(30)
            self.loop.finish_websocket(ws, over)
        finally:
            finished.set()
        raise ConnectionError("websocket finished")


class TimeoutHandler(WSGIRequestHandler):
    timeout = 30  # as the daemon's: the connection's socket has a timeout


@pytest.fixture
def echo_server() -> Iterator[tuple[int, LoopEchoApp, ReadLoop]]:
    loop = ReadLoop("fault-loop")
    app = LoopEchoApp(loop)
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=TimeoutHandler)
    # Accepted sockets inherit a small send buffer: the loop's replies fill
    # it after a few kilobytes, so a peer that stops reading is felt at once.
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port, app, loop
    server.shutdown()
    thread.join(5)


def test_a_peer_that_stops_reading_does_not_stall_the_other_streams(
        echo_server: tuple[int, LoopEchoApp, ReadLoop], caplog: pytest.LogCaptureFixture) -> None:
    port, app, loop = echo_server
    healthy = simple_websocket.Client.connect(f"ws://127.0.0.1:{port}/")
    stalled = open_stalled_websocket(port)
    try:
        healthy.send("before")
        assert healthy.receive(timeout=5) == "before"
        # The stalled peer makes the loop answer tens of thousands of pings
        # and reads none of the pongs.
        outcome = flood_until_stalled_or_cut(stalled)
        # The loop still reads and answers the other connection.
        healthy.send("during")
        assert healthy.receive(timeout=5) == "during", "the loop stalled behind a peer that stopped reading"
        assert outcome == "cut"  # the loop never stopped reading it; the unread pongs cost it its connection
        assert "left 524288 bytes unread; cutting it off" in caplog.text
        wait_until(lambda: app.finished and app.finished[-1].is_set(), 5, "the stalled connection to end")
    finally:
        stalled.close()
        healthy.close()


def test_replies_a_full_socket_cannot_take_wait_in_order_and_go_out_later(
        echo_server: tuple[int, LoopEchoApp, ReadLoop]) -> None:
    """What the socket cannot take waits in the outbox, in order, and goes
    out once the peer reads again."""
    port, app, loop = echo_server
    sock = open_stalled_websocket(port)
    try:
        message = "x" * 1000
        frame = b"\x81\xfe" + len(message).to_bytes(2, "big") + b"\0\0\0\0" + message.encode()  # zero mask
        sock.sendall(frame * 200)  # 200 echoes: far more than the buffers hold
        received = b""
        sock.settimeout(5)
        while len(received) < 200 * (4 + len(message)):
            chunk = sock.recv(65536)
            assert chunk
            received += chunk
        assert received == (b"\x81\x7e" + len(message).to_bytes(2, "big") + message.encode()) * 200
    finally:
        sock.close()


# -- the loop itself failing -------------------------------------------------------------------------


class LoopBroke(BaseException):
    """Not an Exception: nothing in the reader path catches it, as with a
    failure of the loop's own code."""


def test_a_failed_loop_drops_only_the_stream_it_was_reading_and_restarts(
        caplog: pytest.LogCaptureFixture) -> None:
    loop = ReadLoop("crash-loop", restart_delay=3600)  # restarts only when a stream needs it
    good, good_peer = socket.socketpair()
    bad, bad_peer = socket.socketpair()
    late, late_peer = socket.socketpair()
    got: list[bytes] = []
    dropped = threading.Event()

    def good_reader() -> bool:
        got.append(good.recv(4096))
        return True

    def bad_reader() -> bool:
        bad.recv(4096)
        raise LoopBroke("a bug in the loop")

    try:
        loop.add(good, good_reader)
        loop.add(bad, bad_reader, on_drop=dropped.set)
        good_peer.send(b"one")
        wait_until(lambda: got == [b"one"], 5, "the first read")
        assert loop.health is None
        with caplog.at_level(logging.INFO, logger="voicecalld.media.loop"):
            bad_peer.send(b"boom")
            assert dropped.wait(5)  # the stream it was reading is given up, and its owner told
            health = wait_until(lambda: loop.health, 5, "the loop to report the failure")
            assert "crash-loop failed (LoopBroke)" in health
            assert "crash-loop failed; dropping the connection it was reading" in caplog.text
            # A new stream does not wait for the restart delay.
            late_got: list[bytes] = []
            loop.add(late, lambda: bool(late_got.append(late.recv(4096))) or True)
            wait_until(lambda: loop.health is None, 5, "the loop to run again")
            good_peer.send(b"two")
            late_peer.send(b"three")
            wait_until(lambda: got == [b"one", b"two"] and late_got == [b"three"], 5, "reads after the restart")
        assert loop.failures == 1 and loop.sockets == 2
        assert "crash-loop restarted with 2 connection(s)" in caplog.text
    finally:
        for s in (good, late):
            loop.remove(s)
        for s in (good, good_peer, bad, bad_peer, late, late_peer):
            s.close()
    wait_until(lambda: not [t for t in threading.enumerate() if t.name == "crash-loop"], 5, "the loop to exit")


def test_a_reader_that_raises_is_dropped_and_its_owner_told() -> None:
    loop = ReadLoop("drop-loop")
    ours, theirs = socket.socketpair()
    dropped = threading.Event()

    def reader() -> bool:
        ours.recv(4096)
        raise RuntimeError("a bug in one stream")

    try:
        loop.add(ours, reader, on_drop=dropped.set)
        theirs.send(b"x")
        assert dropped.wait(5)
        wait_until(lambda: loop.sockets == 0, 5, "the socket to be forgotten")
        assert loop.health is None and loop.failures == 0
    finally:
        ours.close()
        theirs.close()


# -- the simulated Twilio side -------------------------------------------------------------------------


def test_a_media_client_counts_as_connected_only_once_it_has_started(
        echo_server: tuple[int, LoopEchoApp, ReadLoop], monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests wait for ``connected`` and then play audio from their own
    thread; media before ``start`` (and before ``started_at``) is an error,
    so ``connected`` must not be true while ``connect`` is still at it."""
    from voicecalld.testing.media_client import MediaStreamClient

    port, _, _ = echo_server
    client = MediaStreamClient(f"ws://127.0.0.1:{port}/")
    sending_start = threading.Event()
    go_on = threading.Event()
    real_send = MediaStreamClient._send

    def send(self: MediaStreamClient, message: dict, numbered: bool = True) -> None:
        if message.get("event") == "start":
            sending_start.set()
            assert go_on.wait(5)
        real_send(self, message, numbered)

    monkeypatch.setattr(MediaStreamClient, "_send", send)
    connecting = threading.Thread(target=client.connect)
    connecting.start()
    try:
        assert sending_start.wait(5)
        assert not client.connected  # the socket is open, but the stream has not started
        go_on.set()
        connecting.join(5)
        assert client.connected and client.started_at is not None
        assert client.play(bytes(160)) == 1
    finally:
        go_on.set()
        connecting.join(5)
        client.close()
