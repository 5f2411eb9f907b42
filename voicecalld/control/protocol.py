"""Newline-delimited JSON-RPC 2.0: parsing and framing, with no I/O.

One UTF-8 JSON object per line. Anything that is not a valid request turns
into the error response JSON-RPC prescribes (with the codes of
``errors``); nothing here raises on bad input. Only the standard library
is used: ``voicecallctl`` imports this.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR

MAX_LINE = 1 << 20  # 1 MiB


@dataclass(frozen=True)
class Request:
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    id: Any = None
    #: A request without an "id" member is a notification: it gets no response.
    notification: bool = False


@dataclass(frozen=True)
class Invalid:
    """A line that is not a usable request; answer with ``error(...)``."""

    code: int
    message: str
    id: Any = None


def parse(line: bytes) -> Request | Invalid:
    """Parse one line (without its newline)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return Invalid(PARSE_ERROR, "Parse error: the line is not valid UTF-8")
    try:
        obj = json.loads(text)
    except RecursionError:
        return Invalid(PARSE_ERROR, "Parse error: JSON nested too deeply")
    except ValueError as exc:
        return Invalid(PARSE_ERROR, f"Parse error: {exc}")
    if isinstance(obj, list):
        return Invalid(INVALID_REQUEST, "Invalid Request: batches are not supported; send one request per line")
    if not isinstance(obj, dict):
        return Invalid(INVALID_REQUEST, "Invalid Request: expected a JSON object")
    rid = obj.get("id")
    if not (rid is None or isinstance(rid, (str, int, float)) and not isinstance(rid, bool)):
        return Invalid(INVALID_REQUEST, "Invalid Request: id must be a string, a number or null")
    if obj.get("jsonrpc") != "2.0":
        return Invalid(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', rid)
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        return Invalid(INVALID_REQUEST, "Invalid Request: method must be a non-empty string", rid)
    params = obj.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return Invalid(INVALID_PARAMS, "Invalid params: params must be an object of named parameters", rid)
    return Request(method, params, rid, notification="id" not in obj)


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def result(rid: Any, value: Any) -> bytes:
    return _line({"jsonrpc": "2.0", "id": rid, "result": value})


def error(rid: Any, code: int, message: str, data: Any = None) -> bytes:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return _line({"jsonrpc": "2.0", "id": rid, "error": err})


def notification(method: str, params: dict[str, Any]) -> bytes:
    return _line({"jsonrpc": "2.0", "method": method, "params": params})


def request(rid: Any, method: str, params: dict[str, Any] | None = None) -> bytes:
    return _line({"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}})


class LineBuffer:
    """Splits a byte stream into lines, refusing lines over ``limit`` bytes.

    ``feed`` returns complete lines; a line that grows past the limit is
    reported once as ``None`` and its remainder is discarded up to the next
    newline, so one oversized request does not end the connection.
    """

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | None]:
        out: list[bytes | None] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            if self._discarding:
                self._discarding = False
            elif len(self._buf) + nl - start > self.limit:
                out.append(None)
            else:
                self._buf += data[start:nl]
                out.append(bytes(self._buf).rstrip(b"\r"))
            self._buf.clear()
            start = nl + 1
        rest = data[start:]
        if self._discarding:
            return out
        if len(self._buf) + len(rest) > self.limit:
            out.append(None)
            self._buf.clear()
            self._discarding = True
        else:
            self._buf += rest
        return out

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held so far."""
        return len(self._buf)
