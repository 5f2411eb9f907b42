"""A small synchronous client for the control socket, standard library only
(``voicecallctl`` and the MCP server import it; start-up time matters)."""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from typing import Any

from .. import jsonsafe
from ..errors import INTERNAL_ERROR
from . import protocol


class Unreachable(Exception):
    """The daemon cannot be reached (no socket, refused, or no answer)."""


class RpcError(Exception):
    """The daemon answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class Client:
    def __init__(self, path: str, timeout: float | None = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._buffer = protocol.LineBuffer(limit=64 * protocol.MAX_LINE)
        self._lines: list[bytes] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            reason = exc.strerror or str(exc)
            raise Unreachable(f"cannot connect to voicecalld at {path}: {reason} (is the daemon running? "
                              "see --socket and VOICECALLD_SOCKET)") from None

    def close(self) -> None:
        """Also ends a ``call`` waiting on another thread (the MCP server's
        cancellation): shutdown wakes its read at once, where close alone
        would leave it blocked until the daemon answered, and would free
        the descriptor for reuse under that read."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not connected, or already shut down
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_message(self) -> dict[str, Any]:
        while not self._lines:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                raise Unreachable(f"voicecalld at {self.path} did not answer within {self.timeout:g} s") from None
            except OSError as exc:
                raise Unreachable(f"lost the connection to voicecalld at {self.path}: {exc.strerror}") from None
            if not data:
                raise Unreachable(f"voicecalld at {self.path} closed the connection")
            self._lines += [line for line in self._buffer.feed(data) if line]
        message = jsonsafe.loads(self._lines.pop(0))
        if not isinstance(message, dict):
            raise Unreachable(f"voicecalld at {self.path} sent something that is not JSON-RPC")
        return message

    def call(self, method: str, params: dict[str, Any] | None = None,
             timeout: float | None = None) -> Any:
        """Send one request and return its result; raises RpcError or Unreachable.
        Event notifications that arrive meanwhile are skipped."""
        rid = next(self._ids)
        if timeout is not None:
            self._sock.settimeout(timeout)
            self.timeout = timeout
        try:
            self._sock.sendall(protocol.request(rid, method, params))
        except OSError as exc:
            raise Unreachable(f"lost the connection to voicecalld at {self.path}: {exc.strerror}") from None
        while True:
            message = self._read_message()
            if message.get("id") == rid or ("error" in message and message.get("id") is None):
                break
        if "error" in message:
            err = message["error"]
            raise RpcError(err.get("code", INTERNAL_ERROR), err.get("message", "error"), err.get("data"))
        return message.get("result")

    def events(self) -> Iterator[dict[str, Any]]:
        """Event notifications, after ``events.subscribe``; blocks between them."""
        self._sock.settimeout(None)
        while True:
            message = self._read_message()
            if message.get("method") == "event":
                yield message.get("params", {})
