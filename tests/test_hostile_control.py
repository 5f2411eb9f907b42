"""Hostile clients on the control socket: connection floods, slowloris,
clients that never read, and seeded random garbage. The daemon must keep
answering and lose nothing."""

from __future__ import annotations

import json
import random
import socket
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def connect(path: str) -> socket.socket:
    """Connect like a well-behaved client: a full listen backlog (EAGAIN on
    a Unix socket) means "busy, retry shortly"."""
    deadline = time.monotonic() + 10
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def test_connection_flood_is_bounded_and_refused_cleanly(start_daemon) -> None:
    d = start_daemon({"control": {"maxConnections": 50}})
    idle = [connect(d.socket_path) for _ in range(50)]
    refused_messages = []
    extra = []
    for _ in range(2000):
        s = connect(d.socket_path)
        extra.append(s)
    for s in extra:
        data = s.recv(4096)
        refused_messages.append(json.loads(data))
        assert s.recv(4096) == b""  # and then closed
    assert all(m["error"]["code"] == -32007 for m in refused_messages)
    for s in idle[:10]:
        s.close()
    # Freed slots are reusable and the daemon is healthy.
    d.wait(lambda: _status_ok(d.socket_path), what="a free connection slot")
    for s in idle[10:] + extra:
        s.close()
    assert d.log().count("refusing more") == 1  # one warning for the flood, not 2000
    d.wait(lambda: "accepting connections again (2000 refused meanwhile)" in d.log(), what="recovery log")


def _status_ok(path: str) -> bool:
    try:
        s = connect(path)
        s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"daemon.status"}\n')
        reply = json.loads(s.recv(65536))
        s.close()
        return "result" in reply
    except (OSError, ValueError):
        return False


def test_slowloris_line_is_cut_off(start_daemon) -> None:
    d = start_daemon({"control": {"lineTimeoutSec": 0.5}})
    s = connect(d.socket_path)
    s.sendall(b'{"jsonrpc":"2.0","id":1,')  # ...and never finishes
    start = time.monotonic()
    reply = json.loads(s.recv(4096))
    assert reply["error"]["code"] == -32600 and "incomplete line" in reply["error"]["message"]
    assert s.recv(4096) == b""
    assert time.monotonic() - start < 5
    idle = connect(d.socket_path)  # an idle connection (no partial line) is not cut off
    time.sleep(1.0)
    idle.sendall(b'{"jsonrpc":"2.0","id":2,"method":"daemon.status"}\n')
    assert "result" in json.loads(idle.recv(65536))
    idle.close()


def test_subscriber_that_never_reads_is_dropped_without_hurting_others(start_daemon) -> None:
    d = start_daemon({"maxConcurrentCalls": 5, "control": {"lineTimeoutSec": 1},
                      "mock": {"msPerChar": 0.01, "answerDelayMs": 10}})
    lazy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lazy.connect(d.socket_path)
    lazy.sendall(b'{"jsonrpc":"2.0","id":1,"method":"events.subscribe"}\n')
    start = time.monotonic()
    for _ in range(40):  # each event carries the record: ~3 KB, far more than the lazy client buffers
        call_id = d.rpc("voicecall.initiate", {"message": "x" * 2500})["callId"]
        d.wait_state(call_id, "completed")
    assert time.monotonic() - start < 30  # publishing never waited on the lazy reader
    assert d.rpc("daemon.status")["activeCalls"] == 0
    # The daemon gave up on the lazy client: draining its socket ends in EOF.
    lazy.settimeout(10)
    while lazy.recv(1 << 20):
        pass
    lazy.close()


GARBAGE = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
                 lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                 max_leaves=20).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2]),
        "id": st.one_of(st.integers(), st.text(max_size=5), st.none(), st.booleans()),
        "method": st.sampled_from(["voicecall.initiate", "voicecall.status", "voicecall.end", "voicecall.speak",
                                   "voicecall.history", "tool.call", "mock.say", "mock.inbound", "bogus", ""]),
        "params": st.one_of(st.dictionaries(
            st.sampled_from(["callId", "message", "to", "mode", "limit", "name", "arguments", "text", "from"]),
            st.one_of(st.text(max_size=30), st.integers(), st.none(), st.lists(st.integers(), max_size=2),
                      st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2)),
            max_size=4), st.lists(st.integers(), max_size=2), st.none()),
    }).map(lambda v: json.dumps(v).encode()),
)


def test_fuzzed_control_lines_never_break_the_daemon(start_daemon) -> None:
    d = start_daemon({"maxConcurrentCalls": 1000, "mock": {"answerDelayMs": 60000}})
    s = connect(d.socket_path)
    buf = b""

    @settings(max_examples=300, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(GARBAGE)
    def check(line: bytes) -> None:
        nonlocal buf
        line = line.replace(b"\n", b" ")
        s.sendall(line + b"\n" + b'{"jsonrpc":"2.0","id":"probe","method":"daemon.status"}\n')
        # Whatever the garbage did, the probe behind it is answered on the same connection.
        while True:
            while b"\n" not in buf:
                chunk = s.recv(65536)
                assert chunk, "the daemon closed the connection"
                buf += chunk
            raw, _, buf = buf.partition(b"\n")
            reply = json.loads(raw)
            assert reply.get("jsonrpc") == "2.0"
            if "error" in reply:
                assert isinstance(reply["error"]["code"], int) and reply["error"]["message"]
                assert reply["error"]["code"] != -32603, reply  # an internal error would be a bug
            if reply.get("id") == "probe":
                break

    check()
    s.close()
    status = d.rpc("daemon.status")
    assert status["provider"] == "mock"
    assert "Traceback" not in d.log()


def test_random_bytes_from_many_connections(start_daemon) -> None:
    d = start_daemon()
    rng = random.Random(1234)
    for _ in range(40):
        s = connect(d.socket_path)
        s.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5000))) + b"\n")
        s.close()
    assert d.rpc("daemon.status")["provider"] == "mock"
