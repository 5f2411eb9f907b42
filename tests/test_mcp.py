"""``voicecallctl mcp``: a test client speaks newline-delimited JSON-RPC to
the real MCP server process over its stdin/stdout, and the server talks to
the real daemon over the control socket."""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import socket
import subprocess
import threading
from typing import Any

import pytest
from daemon import ctl_command

from voicecalld import mcp, tool


class McpClient:
    def __init__(self, socket_path: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([*ctl_command(), "--socket", socket_path, "mcp"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.messages: queue.Queue[Any] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.messages.put(json.loads(line))  # every stdout line must be one JSON message

    def send(self, message: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def recv(self, timeout: float = 10.0) -> Any:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message from the MCP server within {timeout} s") from None

    def request(self, rid: Any, method: str, params: dict[str, Any] | None = None) -> Any:
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, **({"params": params} if params else {})})
        reply = self.recv()
        assert reply["id"] == rid, reply
        return reply

    def call(self, rid: Any, arguments: dict[str, Any]) -> dict[str, Any]:
        reply = self.request(rid, "tools/call", {"name": "voice_call", "arguments": arguments})
        return reply["result"]

    def close(self) -> int:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self._reader.join(5)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code


def structured(result: dict[str, Any]) -> dict[str, Any]:
    """The tool's result object, checked to be the same in both forms."""
    (content,) = result["content"]
    assert content["type"] == "text"
    value = json.loads(content["text"])
    assert result["structuredContent"] == value and result["isError"] == ("error" in value)
    return value


def test_mcp_session_against_the_daemon(start_daemon) -> None:
    d = start_daemon({"maxConcurrentCalls": 2})
    client = McpClient(d.socket_path, env=d.env)
    try:
        init = client.request(0, "initialize", {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}})
        assert init["result"]["protocolVersion"] == "2025-06-18"
        assert init["result"]["capabilities"] == {"tools": {"listChanged": False}}
        assert init["result"]["serverInfo"]["name"] == "voicecalld"
        client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})  # never answered
        assert client.request(1, "ping") == {"jsonrpc": "2.0", "id": 1, "result": {}}

        (listed,) = client.request(2, "tools/list")["result"]["tools"]
        assert listed["name"] == "voice_call"
        assert listed["inputSchema"] == tool.schema("mcp")["inputSchema"]

        started = structured(client.call(3, {"action": "initiate_call", "message": "Hi, it's the bot.",
                                             "to": "+15550004444", "mode": "conversation"}))
        assert started["initiated"] is True
        call_id = started["callId"]
        status = structured(client.call(4, {"action": "get_status", "callId": call_id}))
        assert status["found"] is True and status["call"]["to"] == "+15550004444"
        d.wait_state(call_id, "listening")

        # A continue waits for the callee; other requests are answered meanwhile.
        client.send({"jsonrpc": "2.0", "id": "c", "method": "tools/call",
                     "params": {"name": "voice_call", "arguments": {
                         "action": "continue_call", "callId": call_id, "message": "How are you?"}}})
        d.wait_state(call_id, "listening")
        d.wait(lambda: len(d.rpc("voicecall.status", {"callId": call_id})["transcript"]) == 2, what="the question")
        assert client.request(5, "ping")["result"] == {}
        assert structured(client.call(6, {"action": "get_status", "callId": "nope"})) == {"found": False}
        d.rpc("mock.say", {"callId": call_id, "text": "Very well."})
        reply = client.recv()
        assert reply["id"] == "c" and structured(reply["result"]) == {"success": True, "transcript": "Very well."}

        # A cancelled continue gets no response; the session goes on.
        client.send({"jsonrpc": "2.0", "id": "x", "method": "tools/call", "params": {
            "name": "voice_call", "arguments": {"action": "continue_call", "callId": call_id, "message": "More?"}}})
        d.wait(lambda: len(d.rpc("voicecall.status", {"callId": call_id})["transcript"]) == 4, what="the question")
        client.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "x"}})
        assert client.request(7, "ping")["result"] == {}

        failed = client.call(8, {"action": "end_call"})
        assert failed["isError"] is True and "needs callId" in structured(failed)["error"]
        assert structured(client.call(9, {"action": "end_call", "callId": call_id})) == {"success": True}
        d.wait_state(call_id, "hangup-bot")
        ended = client.call(10, {"action": "speak_to_user", "callId": call_id, "message": "hello?"})
        assert ended["isError"] is True and "has ended" in structured(ended)["error"]

        # Protocol errors are JSON-RPC errors, not tool results.
        unknown = client.request(11, "tools/call", {"name": "weather", "arguments": {}})
        assert unknown["error"]["code"] == -32602 and "weather" in unknown["error"]["message"]
        assert client.request(12, "resources/list")["error"]["code"] == -32601
        client.send_raw(b"{not json\n")
        assert client.recv()["error"]["code"] == -32700
        assert client.messages.empty()
    finally:
        assert client.close() == 0  # stdin closed: the server exits


@pytest.mark.parametrize(("asked", "agreed", "structured_content"), [
    ("2025-06-18", "2025-06-18", True),
    ("2025-03-26", "2025-03-26", False),
    ("2024-11-05", "2024-11-05", False),
    ("2025-11-25", "2025-11-25", True),
    ("1999-01-01", "2025-06-18", True),
])
def test_version_negotiation_and_an_unreachable_daemon(tmp_path, asked: str, agreed: str,
                                                        structured_content: bool) -> None:
    sock = str(tmp_path / "nobody.sock")
    client = McpClient(sock)
    try:
        init = client.request(1, "initialize", {"protocolVersion": asked, "capabilities": {},
                                                "clientInfo": {"name": "t", "version": "0"}})
        assert init["result"]["protocolVersion"] == agreed
        result = client.call(2, {"action": "get_status", "callId": "x"})
        # No daemon: a tool error the model can read, not a crash or a protocol error.
        assert result["isError"] is True
        assert sock in json.loads(result["content"][0]["text"])["error"]
        assert ("structuredContent" in result) is structured_content
        if agreed == "2025-03-26":  # the one version with JSON-RPC batches
            client.send([{"jsonrpc": "2.0", "id": 3, "method": "ping"},
                         {"jsonrpc": "2.0", "method": "notifications/initialized"},
                         {"jsonrpc": "2.0", "id": 4, "method": "tools/list"}])
            batch = client.recv()
            assert [r["id"] for r in batch] == [3, 4] and batch[1]["result"]["tools"][0]["name"] == "voice_call"
        else:
            client.send([{"jsonrpc": "2.0", "id": 3, "method": "ping"}])
            assert client.recv()["error"]["code"] == -32600
    finally:
        assert client.close() == 0


class SilentDaemon:
    """A control socket that accepts and reads requests but never answers,
    as the daemon does while a continue waits for the callee."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.received: queue.Queue[bytes] = queue.Queue()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        while data := conn.recv(65536):
            self.received.put(data)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.shutdown(socket.SHUT_RDWR)  # ends any wait a broken cancellation left behind
            conn.close()


def test_a_cancelled_call_ends_its_wait_though_the_daemon_never_answers(tmp_path) -> None:
    daemon = SilentDaemon(str(tmp_path / "silent.sock"))
    read_end, write_end = os.pipe()
    stdin, out = os.fdopen(read_end, "rb"), io.BytesIO()
    server = mcp.Server(str(tmp_path / "silent.sock"), stdin=stdin, stdout=out)
    runner = threading.Thread(target=server.run, daemon=True)
    runner.start()
    try:
        call = {"jsonrpc": "2.0", "id": "x", "method": "tools/call", "params": {"name": "voice_call", "arguments": {
            "action": "continue_call", "callId": "c", "message": "Still there?"}}}
        os.write(write_end, json.dumps(call).encode() + b"\n")
        assert b'"tool.call"' in daemon.received.get(timeout=10)  # the request reached the daemon
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "x"}}
        os.write(write_end, json.dumps(cancel).encode() + b"\n")
        os.close(write_end)  # end of the session: run() returns once the cancelled call has ended
        runner.join(10)
        assert not runner.is_alive(), "the cancelled call still waits for the daemon"
        assert out.getvalue() == b""  # a cancelled request gets no response
    finally:
        daemon.close()
        with contextlib.suppress(OSError):
            os.close(write_end)  # already closed unless the test failed before
        runner.join(10)
        stdin.close()
