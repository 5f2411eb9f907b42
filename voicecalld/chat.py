"""Chat Completions for the auto-responder, with no I/O: the request body
built from a call record, the reply parsed out of the response, and the
reply's text made fit to be spoken.

Any server speaking the OpenAI Chat Completions API works (OpenAI, a local
llama.cpp or vLLM server); only the base URL differs. ``responseModel`` is
``provider/model`` and only the part after the first slash is sent, as the
real API refuses provider-prefixed names with a 404.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import jsonsafe

#: Transcript entries sent per request: a long call must not grow every
#: request (and its cost and latency) without bound.
MAX_HISTORY = 40
#: Upper bound on the reply's length in tokens: a spoken turn is short, and a
#: runaway local model must not keep the caller listening for minutes.
MAX_COMPLETION_TOKENS = 300
#: Characters of cleaned reply spoken at most (about a minute of speech).
MAX_SPOKEN_CHARS = 1000
DEFAULT_GOODBYE = "Thank you for calling. Goodbye!"

HANG_UP = "hang_up"
HANG_UP_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": HANG_UP,
        "description": ("End the phone call. Use it when the caller says goodbye, asks to hang up, or the "
                        "conversation is clearly over. The goodbye is spoken before the line is closed."),
        "parameters": {
            "type": "object",
            "properties": {
                "goodbye": {"type": "string",
                            "description": "A short goodbye to say before hanging up, e.g. \"Goodbye, take care!\""},
            },
            "required": [],
            "additionalProperties": False,
        },
    },
}

TRANSFER_CALL = "transfer_call"


def transfer_function(allow_to: Sequence[str]) -> dict[str, Any] | None:
    """The ``transfer_call`` function a model may call (name, description,
    JSON-schema parameters), or None when transfers are off (an empty
    ``transfer.allowTo``): a model is only ever offered the allowed numbers.
    Chat Completions takes it as ``{"type": "function", "function": it}``,
    the Realtime API as ``{"type": "function", **it}``."""
    if not allow_to:
        return None
    return {
        "name": TRANSFER_CALL,
        "description": ("Hand the call over to a person at another number (a cold transfer: you leave the "
                        "call). Use it when the caller asks for a person or for something only they can do. "
                        "The message is said to the caller first."),
        "parameters": {
            "type": "object",
            "properties": {
                "to": {"type": "string", "enum": list(allow_to), "description": "The number to transfer to."},
                "message": {"type": "string",
                            "description": "A short sentence said before the transfer, e.g. \"Transferring "
                                           "you to a colleague now.\""},
            },
            "required": ["to"],
            "additionalProperties": False,
        },
    }


DEFAULT_PROMPT = (
    "You are a friendly voice assistant on a phone call, talking with {who} whose phone number is {caller}. "
    "Everything you write is read aloud by text-to-speech, so answer in one or two short spoken sentences of "
    "plain conversational text: no markdown, lists, code, emoji, URLs or stage directions. If you did not "
    "understand the caller, ask them to repeat. When the caller says goodbye or the conversation is over, "
    "call the hang_up function with a brief goodbye."
)


def model_name(configured: str) -> str:
    """``openai/gpt-4o-mini`` -> ``gpt-4o-mini``; a name without a provider is sent as is."""
    _, slash, rest = configured.partition("/")
    return rest if slash else configured


def remote_party(record: dict[str, Any]) -> str:
    """The other end's number: the caller of an inbound call, the callee of an outbound one."""
    number = record.get("from") if record.get("direction") == "inbound" else record.get("to")
    return str(number or "unknown")


def system_prompt(configured: str | None, record: dict[str, Any]) -> str:
    caller = remote_party(record)
    if configured:
        # Plain replacement, not str.format: a prompt may contain other braces.
        return configured.replace("{caller}", caller)
    who = "a caller" if record.get("direction") == "inbound" else "the person you called"
    return DEFAULT_PROMPT.format(who=who, caller=caller)


def conversation(transcript: list[dict[str, Any]], limit: int = MAX_HISTORY) -> list[dict[str, str]]:
    """The call's final transcript as chat messages, oldest first; consecutive
    entries of one speaker become one message."""
    messages: list[dict[str, str]] = []
    for entry in transcript[-limit:]:
        text = str(entry.get("text") or "").strip()
        if not text or entry.get("isFinal") is False:
            continue
        role = "assistant" if entry.get("speaker") == "bot" else "user"
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += " " + text
        else:
            messages.append({"role": role, "content": text})
    return messages


def unanswered(transcript: list[dict[str, Any]]) -> list[str]:
    """The caller's final transcripts since the bot last spoke."""
    out: list[str] = []
    for entry in reversed(transcript):
        if entry.get("speaker") == "bot":
            break
        if entry.get("isFinal") is not False and str(entry.get("text") or "").strip():
            out.append(str(entry["text"]).strip())
    out.reverse()
    return out


def request_body(model: str, record: dict[str, Any], prompt: str | None, *, tools: bool = True,
                 transfer_to: Sequence[str] = (), stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model_name(model),
        "messages": [{"role": "system", "content": system_prompt(prompt, record)},
                     *conversation(record.get("transcript") or [])],
        "max_completion_tokens": MAX_COMPLETION_TOKENS,
    }
    if stream:
        body["stream"] = True
    if tools:
        transfer = transfer_function(transfer_to)
        body["tools"] = [HANG_UP_TOOL, *([{"type": "function", "function": transfer}] if transfer else [])]
    return body


@dataclass(frozen=True)
class Reply:
    """What the model answered: ``text`` cleaned for speech (may be empty);
    ``hang_up`` when it called the hang_up tool; ``transfer_to`` when it
    called transfer_call (``text`` is then its message)."""

    text: str
    hang_up: bool = False
    transfer_to: str | None = None


class BadCompletion(ValueError):
    """The response is not a Chat Completions object."""


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts, as some compatible servers send
        return " ".join(str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


@dataclass(frozen=True)
class ToolCall:
    """A call of one of our tools: ``hang_up`` (with its ``goodbye``, maybe
    empty) or ``transfer_call`` (to ``to``, saying ``message``)."""

    name: str
    goodbye: str = ""
    to: str = ""
    message: str = ""


def tool_call(name: Any, raw: Any) -> ToolCall | None:
    """One of our tools called with ``raw`` arguments (a JSON string, as
    the API sends them, or an object); None for anything else, including a
    transfer with nowhere to go (as if it had not been called)."""
    if name not in (HANG_UP, TRANSFER_CALL):
        return None
    try:
        args = jsonsafe.loads(raw) if isinstance(raw, str) and raw.strip() else (raw or {})
    except ValueError:
        args = {}
    if not isinstance(args, dict):
        args = {}
    if name == TRANSFER_CALL:
        to = args.get("to")
        if not isinstance(to, str) or not to:
            return None
        said = for_speech(args["message"]) if isinstance(args.get("message"), str) else ""
        return ToolCall(TRANSFER_CALL, to=to, message=said)
    goodbye = for_speech(args["goodbye"]) if isinstance(args.get("goodbye"), str) else ""
    return ToolCall(HANG_UP, goodbye=goodbye)


def parse_completion(data: Any) -> Reply:
    try:
        message = data["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise BadCompletion("the response has no choices[0].message") from None
    if not isinstance(message, dict):
        raise BadCompletion("choices[0].message is not an object")
    text = for_speech(content_text(message.get("content")))
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        tool = tool_call(function.get("name"), function.get("arguments")) if isinstance(function, dict) else None
        if tool is None:
            continue
        if tool.name == TRANSFER_CALL:
            return Reply(tool.message or text, transfer_to=tool.to)
        return Reply(text or tool.goodbye or DEFAULT_GOODBYE, hang_up=True)
    return Reply(text)


# --- text for speech ---------------------------------------------------------------

_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.S | re.I)  # reasoning a local model printed
_FENCE = re.compile(r"^[ \t]*(?:```|~~~).*$", re.M)
# A link target: one level of parentheses inside (Wikipedia URLs), an optional "title".
_TARGET = r"\((?:[^()\s]|\([^()]*\))*(?:\s+\"[^\"]*\")?\)"
_IMAGE = re.compile(r"!\[([^\]]*)\]" + _TARGET)
_LINK = re.compile(r"\[([^\]]+)\]" + _TARGET)
_URL_ANGLE = re.compile(r"<(https?://[^>]+)>")
_HTML = re.compile(r"</?[A-Za-z][^>]*>")
_RULE = re.compile(r"^[ \t]*([-*_])(?:[ \t]*\1){2,}[ \t]*$", re.M)
_TABLE_SEP = re.compile(r"^[ \t]*\|?[ \t]*:?-{3,}:?[ \t]*(?:\|[ \t]*:?-{3,}:?[ \t]*)*\|?[ \t]*$", re.M)
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+")
_BULLET = re.compile(r"^[ \t]*(?:[-*+\u2022]|\d{1,3}[.)])[ \t]+")
_QUOTE = re.compile(r"^[ \t]*>+[ \t]?")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_ITALIC_STAR = re.compile(r"(?<![\w*])\*(?=\S)([^*]+?)(?<=\S)\*(?![\w*])")
_ITALIC_UNDER = re.compile(r"(?<!\w)_(?=\S)([^_]+?)(?<=\S)_(?!\w)")
_STRIKE = re.compile(r"~~(.+?)~~")
_CODE = re.compile(r"`+([^`]*)`+")
_SPACES = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def _inline(text: str) -> str:
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _URL_ANGLE.sub(r"\1", text)
    text = _CODE.sub(r"\1", text)
    text = _BOLD.sub(r"\2", text)
    text = _STRIKE.sub(r"\1", text)
    text = _ITALIC_STAR.sub(r"\1", text)
    text = _ITALIC_UNDER.sub(r"\1", text)
    return _HTML.sub("", text)


def for_speech(text: str, limit: int = MAX_SPOKEN_CHARS) -> str:
    """Plain spoken text from a model's reply: markdown, code fences and
    reasoning blocks removed, list items and headings as sentences, one
    line, at most ``limit`` characters (cut at a sentence end if there is one)."""
    text = _THINK.sub("", text)
    text = _FENCE.sub("", text)
    text = _RULE.sub("", text)
    text = _TABLE_SEP.sub("", text)
    parts: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        structural = False
        for pattern in (_HEADING, _BULLET, _QUOTE):
            stripped = pattern.sub("", line, count=1)
            if stripped != line:
                structural = pattern is not _QUOTE
                line = stripped
        if line.startswith("|") and line.endswith("|"):
            line = ", ".join(cell.strip() for cell in line.strip("|").split("|") if cell.strip())
            structural = True
        line = _inline(line).strip()
        if not line:
            continue
        if structural and line[-1] not in ".!?,;:":
            line += "."
        parts.append(line)
    spoken = _SPACES.sub(" ", " ".join(parts)).strip()
    if len(spoken) > limit:
        cut = spoken[:limit]
        ends = [m.end() for m in _SENTENCE_END.finditer(cut)]
        spoken = cut[:ends[-1]] if ends else cut.rsplit(" ", 1)[0]
    return spoken
