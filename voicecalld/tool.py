"""The ``voice_call`` tool: one function an AI agent can call to place and
run phone calls (voicecalld-tools(7)).

The parameters are one flat object with an ``action`` enum rather than a
``oneOf`` per action, because OpenAI function parameters must be a plain
top-level object; per-action requirements are checked when the tool runs.
Failures come back as ``{"error": ...}`` results, never as transport
errors, so a model can read them and recover.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Protocol

from . import jsonsafe
from .errors import CallNotFound, VoiceCallError

log = logging.getLogger(__name__)

NAME = "voice_call"
DESCRIPTION = (
    "Make and manage real phone calls. initiate_call dials a number and speaks a message "
    "(mode notify hangs up after the message; mode conversation keeps the line open). "
    "continue_call speaks and then waits for the callee's spoken reply, which it returns. "
    "speak_to_user says something without waiting. end_call hangs up. get_status returns the call "
    "record with its transcript. send_dtmf presses keys on the call (extensions, phone menus). "
    "transfer_call says an optional message and hands the call to another number (only numbers the "
    "operator allowed). Failures come back as {\"error\": \"...\"} results."
)

ACTIONS = ("initiate_call", "continue_call", "speak_to_user", "end_call", "get_status", "send_dtmf", "transfer_call")

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "action": {"type": "string", "enum": list(ACTIONS),
                   "description": "initiate_call: dial `to` and say `message` -> {callId, initiated}. "
                                  "continue_call: say `message` on `callId`, then wait for the callee's reply "
                                  "-> {success, transcript}. speak_to_user: say `message` without waiting. "
                                  "end_call: hang up `callId`. get_status: -> {found, call} with the transcript. "
                                  "send_dtmf: press `digits` on `callId`. transfer_call: say `message` (optional), "
                                  "then hand `callId` to `to`; the call ends as transferred."},
        "message": {"type": "string",
                    "description": "What to say. Required for initiate_call, continue_call and speak_to_user; "
                                   "transfer_call says it before the transfer."},
        "to": {"type": "string", "description": "initiate_call: number to dial in E.164 form, e.g. +15550001234. "
                                                "Defaults to the daemon's configured toNumber. transfer_call "
                                                "(required): the number to hand the call to; only numbers in "
                                                "the daemon's transfer.allowTo are accepted."},
        "digits": {"type": "string", "pattern": "^[0-9*#A-Dw]{1,64}$",
                   "description": "send_dtmf: keys to press, from 0-9 * # A-D; w waits half a second."},
        "mode": {"type": "string", "enum": ["notify", "conversation"],
                 "description": "initiate_call: notify (say the message, then hang up) or conversation."},
        "callId": {"type": "string",
                   "description": "The call to act on, as returned by initiate_call. Required for every "
                                  "action except initiate_call."},
    },
    "required": ["action"],
    "additionalProperties": False,
}

#: The same definition in the shapes agent frameworks expect.
FORMATS = ("openai", "anthropic", "mcp")


def schema(fmt: str = "openai") -> dict[str, Any]:
    """The tool definition: ``openai`` gives {name, description, parameters}
    (also what most frameworks take), ``anthropic`` uses ``input_schema`` and
    ``mcp`` uses ``inputSchema``."""
    key = {"openai": "parameters", "anthropic": "input_schema", "mcp": "inputSchema"}.get(fmt)
    if key is None:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return {"name": NAME, "description": DESCRIPTION, key: copy.deepcopy(PARAMETERS)}


def arguments_of(call: object) -> dict[str, Any]:
    """The tool's arguments from a tool call in any of the usual shapes:
    the arguments themselves (``{"action": ...}``), ``{"name", "arguments"}``
    (arguments an object or, as OpenAI sends them, a JSON string), an OpenAI
    ``tool_calls`` item (``{"type": "function", "function": {...}}``) or an
    Anthropic ``tool_use`` block (``{"name", "input"}``). Raises ValueError
    with a message that says what was expected."""
    if isinstance(call, dict) and isinstance(call.get("function"), dict) and "action" not in call:
        call = call["function"]
    if isinstance(call, dict) and "action" not in call and ("arguments" in call or "input" in call):
        name = call.get("name", NAME)
        if name != NAME:
            raise ValueError(f"unknown tool {name!r}; the tool is {NAME}")
        call = call["arguments"] if "arguments" in call else call["input"]
        if isinstance(call, str):
            try:
                call = jsonsafe.loads(call) if call.strip() else {}
            except ValueError as exc:
                raise ValueError(f"the arguments string is not JSON: {exc}") from None
    if not isinstance(call, dict):
        raise ValueError('expected {"action": ...} or {"name": "voice_call", "arguments": {...}}')
    return call


class Calls(Protocol):
    def initiate(self, message: object, to: object = None, mode: object = None) -> dict[str, Any]: ...
    def continue_(self, call_id: object, message: object) -> dict[str, Any]: ...
    def speak(self, call_id: object, message: object) -> dict[str, Any]: ...
    def end(self, call_id: object) -> dict[str, Any]: ...
    def status(self, call_id: object) -> dict[str, Any]: ...
    def send_dtmf(self, call_id: object, digits: object) -> dict[str, Any]: ...
    def transfer(self, call_id: object, to: object, message: object = None) -> dict[str, Any]: ...


_ALLOWED = {
    "initiate_call": {"message", "to", "mode"},
    "continue_call": {"callId", "message"},
    "speak_to_user": {"callId", "message"},
    "end_call": {"callId"},
    "get_status": {"callId"},
    "send_dtmf": {"callId", "digits"},
    "transfer_call": {"callId", "to", "message"},
}


def _require(args: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = args.get(name)
        if not isinstance(value, str) or not value.strip():
            return f"{args['action']} needs {name} (a non-empty string)"
    return None


def call(calls: Calls, arguments: object) -> dict[str, Any]:
    """Run the tool; always returns a result object."""
    if isinstance(arguments, str):  # OpenAI hands arguments over as a JSON string
        try:
            arguments = jsonsafe.loads(arguments)
        except ValueError as exc:
            return {"error": f"arguments is not valid JSON: {exc}"}
    if not isinstance(arguments, dict):
        return {"error": "arguments must be an object like {\"action\": \"get_status\", \"callId\": \"...\"}"}
    action = arguments.get("action")
    if action not in _ALLOWED:
        return {"error": f"action must be one of {', '.join(ACTIONS)}, got {action!r}"}
    extra = sorted(set(arguments) - _ALLOWED[action] - {"action"})
    if extra:
        return {"error": f"{action} does not take {', '.join(extra)}"}
    try:
        if action == "initiate_call":
            problem = _require(arguments, "message")
            if problem:
                return {"error": problem}
            r = calls.initiate(arguments["message"], arguments.get("to"), arguments.get("mode"))
            queued = {"queued": True, "queuePosition": r.get("queuePosition")} if r["state"] == "queued" else {}
            return {"callId": r["callId"], "initiated": True, **queued}
        problem = _require(arguments, "callId", *(("message",) if action in ("continue_call", "speak_to_user")
                                                  else ()))
        if problem:
            return {"error": problem}
        call_id = arguments["callId"]
        if action == "continue_call":
            return {"success": True, "transcript": calls.continue_(call_id, arguments["message"])["transcript"]}
        if action == "speak_to_user":
            calls.speak(call_id, arguments["message"])
            return {"success": True}
        if action == "end_call":
            calls.end(call_id)
            return {"success": True}
        if action == "send_dtmf":
            calls.send_dtmf(call_id, arguments.get("digits"))
            return {"success": True}
        if action == "transfer_call":
            problem = _require(arguments, "to")
            if problem:
                return {"error": problem}
            calls.transfer(call_id, arguments["to"], arguments.get("message"))
            return {"success": True}
        try:
            return {"found": True, "call": calls.status(call_id)}
        except CallNotFound:
            return {"found": False}
    except VoiceCallError as exc:
        return {"error": exc.message}
    except Exception:
        # A bug, not the model's fault; it still gets a result it can read.
        log.exception("voice_call %s failed", action)
        return {"error": f"{action} failed inside voicecalld; its log has the details"}
