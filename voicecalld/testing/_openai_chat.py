"""Chat Completions for the fake: request validation and response shaping
(https://platform.openai.com/docs/api-reference/chat/create). Pure
functions; the HTTP side lives in fake_openai.py.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

__all__ = ["ChatRequestError", "build_completion", "stream_chunks", "tokens", "validate_chat_request"]

_ROLES = ("system", "developer", "user", "assistant", "tool")
# Arguments the real endpoint accepts; anything else is a 400 there too,
# which catches typos such as "max_token" before they reach production.
_KNOWN_ARGUMENTS = {
    "model",
    "messages",
    "max_completion_tokens",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "user",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "seed",
    "stream",
    "stream_options",
    "store",
    "metadata",
    "reasoning_effort",
    "service_tier",
    "modalities",
    "audio",
    "prediction",
    "verbosity",
    "web_search_options",
    "prompt_cache_key",
    "safety_identifier",
}


class ChatRequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def validate_chat_request(body: Any, models: set[str] | frozenset[str] | None) -> None:
    """Raise ChatRequestError for anything the real endpoint would refuse."""
    if not isinstance(body, dict):
        raise ChatRequestError(400, "The request body must be a JSON object.")
    for key in body:
        if key not in _KNOWN_ARGUMENTS:
            raise ChatRequestError(400, f"Unrecognized request argument supplied: {key}", key)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ChatRequestError(400, "you must provide a model parameter", "model")
    # Provider-prefixed names ("openai/gpt-4o-mini", as in the daemon's
    # config) are a routing convention, not an OpenAI model.
    if "/" in model or (models is not None and model not in models):
        raise ChatRequestError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            None,
            "model_not_found",
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatRequestError(400, "Invalid 'messages': expected a non-empty array.", "messages")
    for index, message in enumerate(messages):
        _check_message(message, f"messages[{index}]")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ChatRequestError(400, "Invalid type for 'stream': expected a boolean.", "stream")
    if body.get("stream_options") is not None and not stream:
        raise ChatRequestError(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                               "stream_options")
    limit = body.get("max_completion_tokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ChatRequestError(
            400, "Invalid 'max_completion_tokens': expected a positive integer.", "max_completion_tokens"
        )
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not 0 <= temperature <= 2
    ):
        raise ChatRequestError(
            400, "Invalid 'temperature': expected a number between 0 and 2.", "temperature"
        )
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise ChatRequestError(400, "Invalid 'tools': expected an array.", "tools")
        for index, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if (
                not isinstance(tool, dict)
                or tool.get("type") != "function"
                or not isinstance(function, dict)
                or not isinstance(function.get("name"), str)
            ):
                raise ChatRequestError(
                    400,
                    f"Invalid 'tools[{index}]': expected a function tool with a name.",
                    f"tools[{index}]",
                )


def _check_message(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        raise ChatRequestError(400, f"Invalid '{where}': expected an object.", where)
    role = message.get("role")
    if role not in _ROLES:
        choices = ", ".join(repr(r) for r in _ROLES)
        raise ChatRequestError(
            400,
            f"Invalid value: {role!r}. Supported values are: {choices}.",
            f"{where}.role",
            "invalid_value",
        )
    content = message.get("content")
    if role == "assistant" and content is None and message.get("tool_calls"):
        return
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise ChatRequestError(
            400, f"Missing required parameter: '{where}.tool_call_id'.", f"{where}.tool_call_id"
        )
    if not isinstance(content, (str, list)):
        raise ChatRequestError(
            400,
            f"Invalid type for '{where}.content': expected a string or an array of content parts.",
            f"{where}.content",
        )


def _approx_tokens(text: str) -> int:
    # Close enough for usage accounting in tests: ~4 characters per token.
    return max(1, (len(text) + 3) // 4)


def build_completion(body: dict[str, Any], reply: str | dict[str, Any]) -> dict[str, Any]:
    """A ``chat.completion`` object answering ``body`` with a scripted ``reply``.

    ``reply`` is the assistant's text, or a dict with ``content`` and/or
    ``tool_call`` ({"name", "arguments"}) / ``tool_calls`` (a list of those)
    and an optional ``finish_reason``.
    """
    if isinstance(reply, str):
        reply = {"content": reply}
    calls = list(reply.get("tool_calls") or [])
    if "tool_call" in reply:
        calls.insert(0, reply["tool_call"])
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.get("content"),
        "refusal": None,
        "annotations": [],
    }
    if calls:
        message["tool_calls"] = [
            {
                "id": "call_" + secrets.token_hex(12),
                "type": "function",
                "function": {
                    "name": call["name"],
                    # The API sends arguments as a JSON *string*; clients must parse it.
                    "arguments": call["arguments"]
                    if isinstance(call.get("arguments"), str)
                    else json.dumps(call.get("arguments") or {}),
                },
            }
            for call in calls
        ]
    finish = reply.get("finish_reason") or ("tool_calls" if calls else "stop")
    prompt_text = " ".join(
        m["content"] if isinstance(m.get("content"), str) else json.dumps(m.get("content"))
        for m in body["messages"]
    )
    completion_text = (message["content"] or "") + json.dumps(message.get("tool_calls") or "")
    prompt_tokens = _approx_tokens(prompt_text)
    completion_tokens = _approx_tokens(completion_text)
    return {
        "id": "chatcmpl-" + secrets.token_hex(14),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "service_tier": "default",
        "system_fingerprint": "fp_" + secrets.token_hex(5),
    }


def tokens(text: str) -> list[str]:
    """``text`` in pieces the way a model streams it: words with their
    leading space, runs of punctuation."""
    return re.findall(r"\s*\w+|\s*[^\w\s]+|\s+", text)


def stream_chunks(completion: dict[str, Any]) -> list[tuple[dict[str, Any], bool]]:
    """The ``chat.completion.chunk`` objects that stream ``completion``
    (https://platform.openai.com/docs/api-reference/chat-streaming), each
    with whether it carries a token (the pacing of a generating model
    applies to those): the role, the content token by token, each tool
    call's name and then its arguments in fragments, the finish reason."""
    head = {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"],
            "model": completion["model"], "system_fingerprint": completion["system_fingerprint"]}
    choice = completion["choices"][0]
    message = choice["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    out: list[tuple[dict[str, Any], bool]] = [(chunk({"role": "assistant", "content": "", "refusal": None}), False)]
    out += [(chunk({"content": piece}), True) for piece in tokens(message.get("content") or "")]
    for index, call in enumerate(message.get("tool_calls") or ()):
        out.append((chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                           "function": {"name": call["function"]["name"], "arguments": ""}}]}),
                    True))
        arguments = call["function"]["arguments"]
        out += [(chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[i:i + 8]}}]}), True)
                for i in range(0, len(arguments), 8)]
    out.append((chunk({}, choice["finish_reason"]), False))
    return out
