"""``voicecallctl mcp``: a Model Context Protocol server on stdin/stdout
that exposes the ``voice_call`` tool and forwards each call to the daemon
over its control socket.

MCP's stdio transport is newline-delimited JSON-RPC 2.0: one message per
line on stdin and stdout, logs on stderr only. The server answers
``initialize`` (negotiating the protocol version), ``ping``, ``tools/list``
and ``tools/call``; notifications are never answered, and unknown methods
get -32601. Tool failures, including an unreachable daemon, are tool
results with ``isError: true`` that a model can read, not protocol errors.

Calls run on threads of their own, so a ``continue_call`` waiting for the
callee does not hold up a ``ping`` or a ``get_status``; a client's
``notifications/cancelled`` drops the reply (and the socket connection,
so the wait ends). Standard library only, like the rest of voicecallctl.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import IO, Any

from . import __version__, tool
from .control.client import Client, RpcError, Unreachable
from .errors import INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR

#: The MCP revisions this server speaks, newest first. A client asking for
#: one of these gets it.
PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
#: What a client asking for any other version is offered (the lifecycle's
#: version negotiation: the server answers a version it supports and the
#: client decides whether to go on), and what applies before initialize.
#: Not the newest revision above: that one must be asked for by name.
FALLBACK_VERSION = "2025-06-18"
#: structuredContent exists from this version on.
STRUCTURED_SINCE = "2025-06-18"
#: Only 2025-03-26 had JSON-RPC batches; later versions removed them.
BATCH_VERSIONS = ("2025-03-26",)

MAX_CONCURRENT_CALLS = 16
#: continue_call waits for the callee (the daemon's transcriptTimeoutMs ends
#: that wait); other actions answer within the daemon's carrier timeouts.
CONTINUE_TIMEOUT = 3600.0
DEFAULT_TIMEOUT = 120.0

INSTRUCTIONS = (
    "voice_call places and runs real phone calls through the voicecalld daemon. Start with initiate_call "
    "(mode conversation to talk, notify to deliver one message), then continue_call to say something and "
    "get the callee's spoken reply, speak_to_user to talk without waiting, end_call to hang up, and "
    "get_status for the record and transcript; send_dtmf presses keys (extensions, phone menus) and "
    "transfer_call hands the call to a number the operator allowed. Phone numbers are E.164, like +15550001234."
)


def tool_definition() -> dict[str, Any]:
    definition = tool.schema("mcp")
    definition["title"] = "Phone call"
    definition["annotations"] = {"title": "Phone call", "readOnlyHint": False, "destructiveHint": False,
                                 "idempotentHint": False, "openWorldHint": True}
    return definition


class Server:
    def __init__(self, socket_path: str, timeout: float | None = None, *,
                 stdin: IO[bytes] | None = None, stdout: IO[bytes] | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._in = stdin if stdin is not None else sys.stdin.buffer
        self._out = stdout if stdout is not None else sys.stdout.buffer
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT_CALLS)
        self._in_flight: dict[Any, Client | None] = {}
        self._cancelled: set[Any] = set()
        self._threads: list[threading.Thread] = []
        self.version = FALLBACK_VERSION

    # -- transport --

    def _send(self, message: dict[str, Any] | list[dict[str, Any]]) -> None:
        # MCP's stdio framing forbids newlines inside a message; json.dumps
        # escapes them in strings and adds none of its own without indent.
        data = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        with self._write_lock:
            try:
                self._out.write(data)
                self._out.flush()
            except (OSError, ValueError):
                pass  # the client went away; the read loop ends on EOF

    def run(self) -> int:
        for raw in self._in:
            line = raw.strip()
            if not line:
                continue
            try:
                message = json.loads(line)
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                self._send(_error(None, PARSE_ERROR, f"Parse error: {exc}"))
                continue
            if isinstance(message, list):
                self._batch(message)
            else:
                reply = self.handle(message, background=True)
                if reply is not None:
                    self._send(reply)
        # stdin closed: the session is over, but calls already running still
        # answer (a piped client reads them; a client that wants us gone
        # sends SIGTERM, as the MCP shutdown procedure says).
        for thread in list(self._threads):
            thread.join()
        return 0

    def _start(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _batch(self, messages: list[Any]) -> None:
        if self.version not in BATCH_VERSIONS or not messages:
            self._send(_error(None, INVALID_REQUEST, "Invalid Request: batches are not supported in "
                                                     f"protocol version {self.version}"))
            return

        def run() -> None:
            replies = [r for m in messages if (r := self.handle(m, background=False)) is not None]
            if replies:
                self._send(replies)

        self._start(run, "mcp-batch")

    # -- dispatch --

    def handle(self, message: Any, background: bool) -> dict[str, Any] | None:
        """The reply to one message, or None (notifications, responses,
        and tools/call run in the background, which replies itself)."""
        if not isinstance(message, dict):
            return _error(None, INVALID_REQUEST, "Invalid Request: expected a JSON-RPC object")
        rid = message.get("id")
        method = message.get("method")
        if method is None and ("result" in message or "error" in message):
            return None  # a response to a request we never send
        if message.get("jsonrpc") != "2.0" or not isinstance(method, str):
            return _error(rid, INVALID_REQUEST, 'Invalid Request: needs "jsonrpc": "2.0" and a method')
        params = message.get("params")
        if params is None:
            params = {}
        if "id" not in message:
            self._notification(method, params)
            return None
        if not isinstance(params, dict):
            return _error(rid, INVALID_PARAMS, "Invalid params: params must be an object")
        if method == "initialize":
            return _result(rid, self._initialize(params))
        if method == "ping":
            return _result(rid, {})
        if method == "tools/list":
            return _result(rid, {"tools": [tool_definition()]})
        if method == "tools/call":
            return self._tools_call(rid, params, background)
        return _error(rid, METHOD_NOT_FOUND, f"Method not found: {method}")

    def _notification(self, method: str, params: Any) -> None:
        if method == "notifications/cancelled" and isinstance(params, dict):
            rid = params.get("requestId")
            with self._lock:
                if rid not in self._in_flight:
                    return
                self._cancelled.add(rid)
                client = self._in_flight.get(rid)
            if client is not None:
                client.close()  # ends the wait; the reply is dropped
        # notifications/initialized and anything else: nothing to do.

    def _initialize(self, params: dict[str, Any]) -> dict[str, Any]:
        asked = params.get("protocolVersion")
        self.version = asked if asked in PROTOCOL_VERSIONS else FALLBACK_VERSION
        return {
            "protocolVersion": self.version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "voicecalld", "title": "voicecalld phone calls", "version": __version__},
            "instructions": INSTRUCTIONS,
        }

    # -- tools/call --

    def _tools_call(self, rid: Any, params: dict[str, Any], background: bool) -> dict[str, Any] | None:
        name = params.get("name")
        if name != tool.NAME:
            return _error(rid, INVALID_PARAMS, f"Unknown tool: {name!r}; this server has {tool.NAME!r}")
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            return _result(rid, self._tool_result({"error": "arguments must be an object"}))
        if not background:
            return _result(rid, self._tool_result(self._forward(rid, arguments)))
        if not self._slots.acquire(blocking=False):
            return _result(rid, self._tool_result(
                {"error": f"{MAX_CONCURRENT_CALLS} voice_call calls are already running; wait for one to finish"}))
        with self._lock:
            self._in_flight[rid] = None

        def run() -> None:
            try:
                result = self._forward(rid, arguments)
                with self._lock:
                    cancelled = rid in self._cancelled
                if not cancelled:  # a cancelled request gets no response
                    self._send(_result(rid, self._tool_result(result)))
            finally:
                with self._lock:
                    self._in_flight.pop(rid, None)
                    self._cancelled.discard(rid)
                self._slots.release()

        self._start(run, "mcp-call")
        return None

    def _forward(self, rid: Any, arguments: dict[str, Any]) -> dict[str, Any]:
        """Run the tool in the daemon; every failure becomes an {error} result."""
        timeout = self.timeout
        if timeout is None:
            timeout = CONTINUE_TIMEOUT if arguments.get("action") == "continue_call" else DEFAULT_TIMEOUT
        try:
            client = Client(self.socket_path, timeout=timeout)
        except Unreachable as exc:
            return {"error": str(exc)}
        with self._lock:
            if rid in self._cancelled:
                client.close()
                return {"error": "cancelled"}
            if rid in self._in_flight:
                self._in_flight[rid] = client
        try:
            with client:
                result = client.call("tool.call", {"name": tool.NAME, "arguments": arguments})
        except RpcError as exc:
            return {"error": exc.message}
        except Unreachable as exc:
            return {"error": str(exc)}
        except ValueError as exc:  # a reply that is not JSON
            return {"error": f"voicecalld sent a malformed reply: {exc}"}
        return result if isinstance(result, dict) else {"error": "voicecalld sent a result that is not an object"}

    def _tool_result(self, result: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "content": [{"type": "text", "text": json.dumps(result, ensure_ascii=False)}],
            "isError": "error" in result,
        }
        if self.version >= STRUCTURED_SINCE:  # ISO dates compare as strings
            out["structuredContent"] = result
        return out


def _result(rid: Any, value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "result": value}


def _error(rid: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}


def serve(socket_path: str, timeout: float | None = None) -> int:
    """Run until stdin closes (the client's way of ending the session)."""
    try:
        return Server(socket_path, timeout).run()
    except KeyboardInterrupt:
        return 130
