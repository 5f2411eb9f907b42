"""The media read loop: one thread reading many sockets, and the adapters
that put simple-websocket connections on it (real sockets, real threads)."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator

import pytest
import simple_websocket
from werkzeug.serving import make_server
from wsproto.events import Message, Ping

from voicecalld.media.loop import RECEIVE_BYTES, Doorbell, LoopReader, ReadLoop
from voicecalld.testing._wait import wait_until


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "test-loop"]


@pytest.fixture
def loop() -> Iterator[ReadLoop]:
    rl = ReadLoop("test-loop")
    yield rl
    wait_until(lambda: not loop_threads(), timeout=5, what="the loop thread to exit")


def reader_for(sock: socket.socket, got: list[bytes], done: threading.Event | None = None):
    def read() -> bool:
        data = sock.recv(4096)
        if not data:
            if done is not None:
                done.set()
            return False
        got.append(data)
        return True

    return read


def test_one_thread_reads_many_sockets_in_order(loop: ReadLoop) -> None:
    pairs = [socket.socketpair() for _ in range(20)]
    got: list[list[bytes]] = [[] for _ in pairs]
    for (ours, _), sink in zip(pairs, got, strict=True):
        loop.add(ours, reader_for(ours, sink))
    for round_ in range(5):
        for i, (_, theirs) in enumerate(pairs):
            theirs.send(f"{i}:{round_};".encode())
    wait_until(lambda: all(b"".join(g).count(b";") == 5 for g in got), timeout=5, what="every message")
    for i, sink in enumerate(got):
        assert b"".join(sink) == b"".join(f"{i}:{r};".encode() for r in range(5))
    assert len(loop_threads()) == 1
    assert loop.sockets == 20
    for ours, theirs in pairs:
        loop.remove(ours)
        ours.close()
        theirs.close()
    assert loop.sockets == 0


def test_remove_means_the_reader_is_never_called_again(loop: ReadLoop) -> None:
    ours, theirs = socket.socketpair()
    probe, probe_peer = socket.socketpair()
    calls: list[bytes] = []
    probed: list[bytes] = []
    loop.add(ours, reader_for(ours, calls))
    loop.add(probe, reader_for(probe, probed))
    theirs.send(b"a")
    wait_until(lambda: calls, timeout=5, what="the first read")
    loop.remove(ours)
    theirs.send(b"b")
    # Readable before the probe: had it still been watched, the loop would
    # have read it no later than the probe.
    probe_peer.send(b"p")
    wait_until(lambda: probed, timeout=5, what="the probe's read")
    assert calls == [b"a"]
    loop.remove(probe)
    for s in (ours, theirs, probe, probe_peer):
        s.close()


@pytest.mark.parametrize("how", ["reader returns False", "reader raises"])
def test_a_finished_or_failing_reader_is_dropped_and_the_others_go_on(loop: ReadLoop, how: str) -> None:
    bad, bad_peer = socket.socketpair()
    good, good_peer = socket.socketpair()
    got: list[bytes] = []

    def bad_reader() -> bool:
        bad.recv(4096)
        if how == "reader raises":
            raise RuntimeError("a bug in one stream")
        return False

    loop.add(bad, bad_reader)
    loop.add(good, reader_for(good, got))
    bad_peer.send(b"x")
    wait_until(lambda: loop.sockets == 1, timeout=5, what="the bad socket to be dropped")
    good_peer.send(b"still here")
    wait_until(lambda: got == [b"still here"], timeout=5, what="the good socket to be read")
    loop.remove(bad)  # already gone: a no-op
    loop.remove(good)
    for s in (bad, bad_peer, good, good_peer):
        s.close()


def test_the_thread_exits_when_idle_and_restarts_on_demand(loop: ReadLoop) -> None:
    for _ in range(3):
        ours, theirs = socket.socketpair()
        got: list[bytes] = []
        loop.add(ours, reader_for(ours, got))
        theirs.send(b"hi")
        wait_until(lambda got=got: got == [b"hi"], timeout=5, what="a read")
        loop.remove(ours)
        wait_until(lambda: not loop_threads(), timeout=5, what="the idle loop thread to exit")
        ours.close()
        theirs.close()


def test_a_reader_may_remove_its_own_socket(loop: ReadLoop) -> None:
    ours, theirs = socket.socketpair()
    removed = threading.Event()

    def read() -> bool:
        ours.recv(4096)
        loop.remove(ours)  # must not wait for itself
        removed.set()
        return True

    loop.add(ours, read)
    theirs.send(b"x")
    assert removed.wait(5)
    wait_until(lambda: loop.sockets == 0, timeout=5, what="the removal")
    ours.close()
    theirs.close()


# -- simple-websocket on the loop ---------------------------------------------------------


class EchoApp:
    """A WebSocket endpoint on werkzeug: ``event_class=Doorbell`` with an
    attached handler, read by the loop; echoes every message."""

    def __init__(self, loop: ReadLoop) -> None:
        self.loop = loop
        self.handler_threads: set[str] = set()
        self.finished = threading.Event()

    def __call__(self, environ, start_response):  # noqa: ANN001, ANN204 - WSGI
        ws = simple_websocket.Server.accept(environ, thread_class=LoopReader, event_class=Doorbell)
        over = self.loop.add_websocket(ws)
        ended = threading.Event()

        def on_message() -> None:
            self.handler_threads.add(threading.current_thread().name)
            while True:
                try:
                    message = ws.receive(timeout=0)
                except simple_websocket.ConnectionClosed:
                    ended.set()
                    return
                if message is None:
                    return
                ws.send(message)

        ws.event.handler = on_message
        try:
            ended.wait(10)
            self.loop.finish_websocket(ws, over)
        finally:
            self.finished.set()
        raise ConnectionError("websocket finished")


@pytest.fixture
def echo(loop: ReadLoop) -> Iterator[tuple[str, EchoApp]]:
    app = EchoApp(loop)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"ws://127.0.0.1:{server.server_port}/", app
    server.shutdown()
    thread.join(5)


def test_websocket_messages_are_handled_on_the_loop_thread(echo: tuple[str, EchoApp]) -> None:
    url, app = echo
    client = simple_websocket.Client.connect(url)
    try:
        for i in range(50):
            client.send(f"message {i}")
        replies = [client.receive(timeout=5) for _ in range(50)]
        assert replies == [f"message {i}" for i in range(50)]
        big = "x" * 200_000  # many reads for one message
        client.send(big)
        assert client.receive(timeout=5) == big
    finally:
        client.close()
    assert app.finished.wait(5)
    assert app.handler_threads == {"test-loop"}


def test_mixed_frames_over_the_loop(echo: tuple[str, EchoApp]) -> None:
    """A client that mixes pings, binary and fragmented messages in with
    text gets each echoed in order and its pings answered."""
    echo_url, _ = echo
    client = simple_websocket.Client.connect(echo_url)
    client.pong_received = False  # set by the client's reader when the server's pong comes
    try:
        for i in range(20):
            client.send(f"text {i}")
            if i % 5 == 0:
                client.sock.send(client.ws.send(Ping(b"are you there")))
                client.send(b"binary %d" % i)
                client.sock.send(client.ws.send(Message(data=f"frag {i} ", message_finished=False)) +
                                 client.ws.send(Message(data="end", message_finished=True)))
        replies = [client.receive(timeout=5) for _ in range(20 + 2 * 4)]
        expected: list[str | bytes] = []
        for i in range(20):
            expected.append(f"text {i}")
            if i % 5 == 0:
                expected += [b"binary %d" % i, f"frag {i} end"]
        assert replies == expected
        assert client.pong_received  # the pings were answered (before the replies after them)
    finally:
        client.close()


def test_a_peer_that_vanishes_ends_the_connection(echo: tuple[str, EchoApp]) -> None:
    url, app = echo
    client = simple_websocket.Client.connect(url)
    client.send("hello")
    assert client.receive(timeout=5) == "hello"
    client.sock.shutdown(socket.SHUT_RDWR)  # no closing handshake
    assert app.finished.wait(5)
    client.sock.close()


def test_bytes_left_after_the_closing_handshake_are_not_read_as_an_http_request(
        echo: tuple[str, EchoApp], caplog: pytest.LogCaptureFixture) -> None:
    """werkzeug keeps an upgraded connection alive and reads it for a next
    request once the WebSocket is over: whatever the peer sent after its
    close frame, unread, must not come back as a "400 Bad request syntax"
    error in the daemon's log."""
    url, app = echo
    port = int(url.rsplit(":", 1)[1].strip("/"))
    # A raw client: simple-websocket's would close its socket on the close
    # reply, and the test reads the connection to its end.
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101")
    mask = b"\x01\x02\x03\x04"

    def frame(opcode: int, payload: bytes) -> bytes:
        masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked

    sock.sendall(frame(0x1, b"hello"))
    assert sock.recv(7) == b"\x81\x05hello"
    # More than one read of the loop takes, so some stays in the socket; no
    # line break, so whatever is left is one bad request line (a 400 or 414).
    trailing = b"x" * (2 * RECEIVE_BYTES)
    with caplog.at_level("INFO", logger="werkzeug"):
        sock.sendall(frame(0x8, (1000).to_bytes(2, "big")) + trailing)
        assert app.finished.wait(5)
        # werkzeug closes the connection once it is done with it: after
        # answering the leftovers as a request, had it read them.
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    errors = [r.getMessage() for r in caplog.records
              if r.name == "werkzeug" and re.search(r"code 4\d\d", r.getMessage())]
    assert errors == [] and b"HTTP/1" not in answer
    sock.close()


def test_doorbell_without_a_handler_is_a_plain_event() -> None:
    bell = Doorbell()
    assert not bell.is_set()
    bell.set()
    assert bell.is_set()
    rang: list[int] = []
    bell.clear()
    bell.handler = lambda: rang.append(1)
    bell.set()
    assert rang == [1] and not bell.is_set()



def accepted_pair(loop: ReadLoop) -> tuple[simple_websocket.Server, threading.Event, socket.socket]:
    """A server WebSocket on the loop over a socket pair; the raw client end."""
    server_sock, client_sock = socket.socketpair()
    environ = {"werkzeug.socket": server_sock, "HTTP_HOST": "x", "HTTP_UPGRADE": "websocket",
               "HTTP_CONNECTION": "Upgrade", "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==",
               "HTTP_SEC_WEBSOCKET_VERSION": "13"}
    ws = simple_websocket.Server.accept(environ, thread_class=LoopReader)
    return ws, loop.add_websocket(ws), client_sock


def test_frames_after_our_close_do_not_reopen_the_connection(loop: ReadLoop) -> None:
    ws, over, client = accepted_pair(loop)
    try:
        ws.close()  # ours: wsproto now waits for the peer's close
        mask = b"\x01\x02\x03\x04"
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(b"late"))
        client.sendall(bytes([0x82, 0x80 | 4]) + mask + data)  # a binary message, parsed by wsproto
        wait_until(lambda: ws.input_buffer, 5, "the late message to be read")
        assert not ws.connected
    finally:
        loop.finish_websocket(ws, over, close_wait=0.1)
        client.close()


def test_a_close_already_under_way_is_finished_quietly(loop: ReadLoop) -> None:
    """Tearing down a connection whose close is under way (a reader racing
    the close left it marked connected) sends no second close, which
    wsproto would refuse with LocalProtocolError."""
    ws, over, client = accepted_pair(loop)
    try:
        ws.close()
        ws.connected = True
        loop.finish_websocket(ws, over, close_wait=0.1)  # must not raise
    finally:
        client.close()
