"""JSON-RPC parsing and line framing: tables of cases, no I/O."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from voicecalld.control import methods, protocol
from voicecalld.control.protocol import Invalid, LineBuffer, Request
from voicecalld.errors import InvalidParams

PARSE_CASES = [
    (b'{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":1}}', Request("m", {"a": 1}, 1)),
    (b'{"jsonrpc":"2.0","id":"x","method":"m"}', Request("m", {}, "x")),
    (b'{"jsonrpc":"2.0","id":null,"method":"m","params":null}', Request("m", {}, None)),
    (b'{"jsonrpc":"2.0","method":"m"}', Request("m", {}, None, notification=True)),
    (b"nope", Invalid(-32700, "")),
    (b"\xff", Invalid(-32700, "")),
    (b"[" * 100_000, Invalid(-32700, "")),
    (b"[]", Invalid(-32600, "")),
    (b"42", Invalid(-32600, "")),
    (b'{"jsonrpc":"2.0","id":true,"method":"m"}', Invalid(-32600, "")),
    (b'{"jsonrpc":"2.0","id":{},"method":"m"}', Invalid(-32600, "")),
    (b'{"id":1,"method":"m"}', Invalid(-32600, "", 1)),
    (b'{"jsonrpc":"2.0","id":1,"method":""}', Invalid(-32600, "", 1)),
    (b'{"jsonrpc":"2.0","id":1,"method":7}', Invalid(-32600, "", 1)),
    (b'{"jsonrpc":"2.0","id":1,"method":"m","params":[1]}', Invalid(-32602, "", 1)),
]


@pytest.mark.parametrize("line,expected", PARSE_CASES, ids=[c[0][:30].decode(errors="replace") for c in PARSE_CASES])
def test_parse(line, expected) -> None:
    got = protocol.parse(line)
    if isinstance(expected, Invalid):
        assert isinstance(got, Invalid) and (got.code, got.id) == (expected.code, expected.id)
        assert got.message
    else:
        assert got == expected


def test_framing_helpers_produce_one_line_each() -> None:
    for line in (protocol.result(1, {"a": "x\ny"}), protocol.error(None, -32700, "bad", {"k": 1}),
                 protocol.notification("event", {"t": "é"}), protocol.request(2, "m")):
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        json.loads(line)
    assert json.loads(protocol.error(3, -1, "m"))["error"] == {"code": -1, "message": "m"}


FEEDS = [
    ([b"a\nb\n"], [b"a", b"b"]),
    ([b"a", b"b", b"\n"], [b"ab"]),
    ([b"a\r\n"], [b"a"]),
    ([b"\n\n"], [b"", b""]),
    ([b"x" * 11 + b"\nok\n"], [None, b"ok"]),                # over the limit in one piece
    ([b"x" * 6, b"x" * 6, b"x" * 6, b"\nok\n"], [None, b"ok"]),  # grows over the limit: reported once
    ([b"x" * 10 + b"\n"], [b"x" * 10]),                     # exactly at the limit is fine
]


@pytest.mark.parametrize("chunks,expected", FEEDS)
def test_line_buffer(chunks, expected) -> None:
    buf = LineBuffer(limit=10)
    out = []
    for chunk in chunks:
        out += buf.feed(chunk)
    assert out == expected
    assert buf.pending == 0


VALIDATION = [
    ("voicecall.status", {"callId": "a"}, None),
    ("voicecall.status", {}, "needs the parameter 'callId'"),
    ("voicecall.status", {"callId": 1}, "callId must be a string"),
    ("voicecall.status", {"callid": "a"}, "did you mean callId?"),
    ("voicecall.history", {"limit": True}, "limit must be an integer"),
    ("voicecall.history", {}, None),
    ("tool.call", {"name": "voice_call", "arguments": []}, "arguments must be an object"),
    ("voicecall.initiate", {"message": "hi", "to": None}, None),  # null counts as absent
]


@pytest.mark.parametrize("method,params,error", VALIDATION)
def test_param_validation(method, params, error) -> None:
    spec = methods.lookup(method)
    if error is None:
        methods.validate(method, spec, params)
    else:
        with pytest.raises(InvalidParams, match=error):
            methods.validate(method, spec, params)


def test_unknown_method_suggests_a_close_one() -> None:
    with pytest.raises(methods.MethodNotFound, match="did you mean voicecall.status"):
        methods.lookup("voicecall.stats")


def test_every_design_method_exists(engine) -> None:
    core = {"voicecall.initiate", "voicecall.continue", "voicecall.speak", "voicecall.end", "voicecall.status",
            "voicecall.list", "voicecall.history", "events.subscribe", "tool.schema", "tool.call", "daemon.status"}
    mock = {"mock.say", "mock.hangup", "mock.inbound"}
    assert set(methods.METHODS) >= core
    # The mock carrier brings its own methods; a daemon serves both.
    assert set(engine.provider.control_methods()) == mock
    assert set(methods.table(engine)) >= core | mock
    assert methods.lookup("mock.say", engine).params[1].name == "text"
    with pytest.raises(methods.MethodNotFound, match="did you mean mock.say"):
        methods.lookup("mock.sya", engine)


def test_json_rpc_error_codes_are_defined_once_in_errors() -> None:
    # The control socket, voicecallctl and the MCP server all answer with
    # the codes of voicecalld/errors.py; a second definition could drift.
    package = Path(__file__).resolve().parent.parent / "voicecalld"
    reserved = range(-32700, -31999)  # JSON-RPC's parse error (-32700) up to its server errors (-32000)
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
                continue
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            values = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, int) and v in reserved for v in values):
                found.append(f"{path.relative_to(package)}:{node.lineno}")
    assert len(found) >= 14 and all(place.startswith("errors.py:") for place in found), found
