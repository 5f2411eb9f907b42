"""The voice_call tool: its schema in each format, the input shapes it
accepts, and all five actions through ``voicecallctl tool`` against the
real daemon, error results included."""

from __future__ import annotations

import json
from typing import Any

import pytest

from voicecalld import tool
from voicecalld.errors import NotConnected
from voicecalld.testing._openai_chat import validate_chat_request


@pytest.mark.parametrize(("fmt", "key"), [("openai", "parameters"), ("anthropic", "input_schema"),
                                          ("mcp", "inputSchema")])
def test_schema_formats(fmt: str, key: str) -> None:
    definition = tool.schema(fmt)
    assert set(definition) == {"name", "description", key}
    params = definition[key]
    assert params["type"] == "object" and params["required"] == ["action"]
    assert params["properties"]["action"]["enum"] == list(tool.ACTIONS)
    definition[key]["properties"].clear()  # a deep copy: callers may change it
    assert tool.schema(fmt)[key]["properties"]


def test_openai_definition_is_accepted_as_a_function_tool() -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "call mom"}],
            "tools": [{"type": "function", "function": tool.schema("openai")}]}
    validate_chat_request(body, None)


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="openai, anthropic, mcp"):
        tool.schema("gemini")


ARGS = {"action": "get_status", "callId": "c1"}


@pytest.mark.parametrize("call", [
    ARGS,
    {"name": "voice_call", "arguments": ARGS},
    {"name": "voice_call", "arguments": json.dumps(ARGS)},                         # OpenAI: a JSON string
    {"id": "call_1", "type": "function", "function": {"name": "voice_call", "arguments": json.dumps(ARGS)}},
    {"type": "tool_use", "id": "toolu_1", "name": "voice_call", "input": ARGS},    # Anthropic
])
def test_arguments_of_accepts_the_usual_tool_call_shapes(call: Any) -> None:
    assert tool.arguments_of(call) == ARGS


@pytest.mark.parametrize(("call", "message"), [
    ({"name": "other", "arguments": {}}, "unknown tool 'other'"),
    ({"name": "voice_call", "arguments": "{nope"}, "not JSON"),
    ([1, 2], "expected"),
    ({"name": "voice_call", "arguments": [1]}, "expected"),
])
def test_arguments_of_explains_what_it_refuses(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tool.arguments_of(call)


class Calls:
    """A stand-in for the manager that records what the tool asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[Any, ...]] = []

    def initiate(self, message: object, to: object = None, mode: object = None) -> dict[str, Any]:
        self.asked.append(("initiate", message, to, mode))
        return {"callId": "c1", "state": "initiated"}

    def continue_(self, call_id: object, message: object) -> dict[str, Any]:
        self.asked.append(("continue", call_id, message))
        return {"callId": call_id, "transcript": "yes"}

    def speak(self, call_id: object, message: object) -> dict[str, Any]:
        raise NotConnected(f"call {call_id} has ended")

    def end(self, call_id: object) -> dict[str, Any]:
        raise RuntimeError("bug")

    def status(self, call_id: object) -> dict[str, Any]:
        return {"callId": call_id}


@pytest.mark.parametrize(("arguments", "result"), [
    ({"action": "initiate_call", "message": "hi", "to": "+15550001234"}, {"callId": "c1", "initiated": True}),
    ('{"action": "continue_call", "callId": "c1", "message": "ok?"}', {"success": True, "transcript": "yes"}),
    ({"action": "speak_to_user", "callId": "c1", "message": "hi"}, {"error": "call c1 has ended"}),
    ({"action": "end_call", "callId": "c1"}, {"error": "end_call failed inside voicecalld; its log has the details"}),
    ({"action": "get_status", "callId": "c1"}, {"found": True, "call": {"callId": "c1"}}),
    ({"action": "dance"}, {"error": "action must be one of initiate_call, continue_call, speak_to_user, end_call, "
                                    "get_status, send_dtmf, transfer_call, got 'dance'"}),
    ({"action": "end_call", "callId": "c1", "message": "x"}, {"error": "end_call does not take message"}),
    ({"action": "continue_call", "callId": "c1"}, {"error": "continue_call needs message (a non-empty string)"}),
    ("{bad", {"error": "arguments is not valid JSON: Expecting property name enclosed in double quotes: "
                       "line 1 column 2 (char 1)"}),
    (7, {"error": "arguments must be an object like {\"action\": \"get_status\", \"callId\": \"...\"}"}),
])
def test_call_returns_results_never_raises(arguments: Any, result: dict[str, Any]) -> None:
    assert tool.call(Calls(), arguments) == result


# --- voicecallctl tool against the daemon --------------------------------------------------------------


def run_tool(d, arguments: Any) -> tuple[int, Any]:
    code, out, err = d.ctl("tool", stdin=json.dumps(arguments))
    assert not (code == 0 and err), err
    return code, out


def test_all_five_actions_through_voicecallctl(start_daemon) -> None:
    d = start_daemon({"mock": {"calleeReplies": ["Yes, go ahead."]}})
    code, out = run_tool(d, {"action": "initiate_call", "message": "Deploy now?", "to": "+15550004444",
                             "mode": "conversation"})
    assert code == 0 and set(out) == {"callId", "initiated"} and out["initiated"] is True
    call_id = out["callId"]
    d.wait_state(call_id, "listening")
    # An OpenAI tool_calls item, arguments as a JSON string, as the model produced it.
    openai_call = {"id": "call_1", "type": "function", "function": {"name": "voice_call", "arguments": json.dumps(
        {"action": "continue_call", "callId": call_id, "message": "Shall I deploy?"})}}
    assert run_tool(d, openai_call) == (0, {"success": True, "transcript": "Yes, go ahead."})
    assert run_tool(d, {"type": "tool_use", "id": "t1", "name": "voice_call", "input": {
        "action": "speak_to_user", "callId": call_id, "message": "Deploying."}}) == (0, {"success": True})
    code, out = run_tool(d, {"action": "get_status", "callId": call_id})
    assert code == 0 and out["found"] is True and out["call"]["to"] == "+15550004444"
    assert [t["text"] for t in out["call"]["transcript"]][:3] == ["Deploy now?", "Shall I deploy?", "Yes, go ahead."]
    assert run_tool(d, {"action": "end_call", "callId": call_id}) == (0, {"success": True})
    d.wait_state(call_id, "hangup-bot")

    # Error results: printed on stdout as {"error": ...}, exit status 1.
    errors = [
        ({"action": "end_call", "callId": call_id}, "has ended"),
        ({"action": "speak_to_user", "callId": "no-such-call", "message": "hi"}, "no call with id no-such-call"),
        ({"action": "initiate_call", "message": "hi", "to": "555-1234"}, "E.164"),
        ({"action": "initiate_call", "message": "hi", "mode": "chat"}, "mode must be notify or conversation"),
        ({"action": "continue_call", "callId": call_id}, "needs message"),
        ({"action": "fly"}, "action must be one of"),
    ]
    for arguments, message in errors:
        code, out = run_tool(d, arguments)
        assert code == 1 and message in out["error"], (arguments, out)
    assert run_tool(d, {"action": "get_status", "callId": "no-such-call"}) == (0, {"found": False})


def test_voicecallctl_tool_usage_and_unreachable_daemon(tmp_path) -> None:
    import subprocess

    from daemon import ctl_command

    sock = str(tmp_path / "none.sock")

    def ctl(stdin: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*ctl_command(), "--socket", sock, "tool"], input=stdin, capture_output=True,
                              text=True, timeout=30)

    down = ctl(json.dumps({"action": "get_status", "callId": "x"}))
    assert down.returncode == 69 and sock in json.loads(down.stdout)["error"] and sock in down.stderr
    bad = ctl(json.dumps({"name": "weather", "arguments": {}}))  # checked before connecting: usage, not 69
    assert bad.returncode == 2 and "unknown tool 'weather'" in bad.stderr and bad.stdout == ""
    schema = subprocess.run([*ctl_command(), "--socket", sock, "tool-schema", "--format", "anthropic"],
                            capture_output=True, text=True, timeout=30)
    assert schema.returncode == 0 and json.loads(schema.stdout) == tool.schema("anthropic")
