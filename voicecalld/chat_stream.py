"""A streamed Chat Completions reply, with no I/O: server-sent events
decoded from the response's bytes, and the ``chat.completion.chunk``
deltas they carry put back together (text, tool calls, finish reason).

The wire format (https://platform.openai.com/docs/api-reference/chat-streaming,
and https://html.spec.whatwg.org/multipage/server-sent-events.html for the
event stream): ``data: {chunk}`` lines, events separated by a blank line,
the stream ending with ``data: [DONE]``. A chunk's ``choices[0].delta``
holds a piece of ``content`` and/or ``tool_calls`` pieces, whose
``function.arguments`` arrive in fragments to concatenate by ``index``.

``ThinkFilter`` drops the ``<think>...</think>`` reasoning some local
models print before their answer, even when a tag is split across chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import chat, jsonsafe

DONE = "[DONE]"


class SseDecoder:
    """Bytes in, the ``data`` of each complete event out."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk
        out: list[str] = []
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                return out
            line = self._buffer[:newline].rstrip(b"\r").decode("utf-8", "replace")
            self._buffer = self._buffer[newline + 1:]
            if not line:
                if self._data:
                    out.append("\n".join(self._data))
                    self._data = []
            elif line.startswith("data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(" ") else value)
            # comments (":" keep-alives), "event:", "id:", "retry:" carry nothing we use

    def close(self) -> list[str]:
        """The stream ended: an event not followed by a blank line still counts."""
        out = self.feed(b"\n\n") if self._buffer or self._data else []
        return out


class BadChunk(ValueError):
    """A ``data`` payload that is not a chunk object."""


@dataclass
class _Tool:
    name: str = ""
    arguments: str = ""


@dataclass
class StreamedReply:
    """The reply so far, from its chunks."""

    text: str = ""
    finish_reason: str | None = None
    done: bool = False
    _tools: dict[int, _Tool] = field(default_factory=dict)

    def add(self, payload: str) -> str:
        """One event's data; the piece of text it adds (may be empty)."""
        if payload.strip() == DONE:
            self.done = True
            return ""
        try:
            chunk = jsonsafe.loads(payload)
        except ValueError:
            raise BadChunk("an event of the stream is not JSON") from None
        if not isinstance(chunk, dict):
            raise BadChunk("an event of the stream is not an object")
        if isinstance(chunk.get("error"), dict):
            raise BadChunk(str(chunk["error"].get("message") or "the stream reported an error")[:300])
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices:
            return ""  # the usage chunk, or a keep-alive
        choice = choices[0] if isinstance(choices[0], dict) else {}
        if isinstance(choice.get("finish_reason"), str):
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return ""
        for piece in delta.get("tool_calls") or ():
            self._tool_piece(piece)
        text = chat.content_text(delta.get("content"))
        self.text += text
        return text

    def _tool_piece(self, piece: Any) -> None:
        if not isinstance(piece, dict):
            return
        index = piece.get("index", 0)
        tool = self._tools.setdefault(index if isinstance(index, int) else 0, _Tool())
        function = piece.get("function")
        if isinstance(function, dict):
            if isinstance(function.get("name"), str):
                tool.name += function["name"]
            if isinstance(function.get("arguments"), str):
                tool.arguments += function["arguments"]

    @property
    def calls_tool(self) -> bool:
        """A tool call has begun (its arguments may still be arriving)."""
        return bool(self._tools)

    def tool(self) -> chat.ToolCall | None:
        """The first of our tools the model called, once the stream is over."""
        for index in sorted(self._tools):
            found = chat.tool_call(self._tools[index].name, self._tools[index].arguments)
            if found is not None:
                return found
        return None


class ThinkFilter:
    """Text in, text without ``<think>...</think>`` blocks out."""

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self) -> None:
        self._held = ""
        self._inside = False

    def feed(self, text: str) -> str:
        text = self._held + text
        self._held = ""
        out: list[str] = []
        while text:
            tag = self.CLOSE if self._inside else self.OPEN
            at = text.lower().find(tag)
            if at < 0:
                # Hold back what could be the start of the tag.
                keep = next((n for n in range(min(len(tag) - 1, len(text)), 0, -1)
                             if tag.startswith(text[-n:].lower())), 0)
                if not self._inside:
                    out.append(text[:len(text) - keep])
                self._held = text[len(text) - keep:]
                break
            if not self._inside:
                out.append(text[:at])
            text = text[at + len(tag):]
            self._inside = not self._inside
        return "".join(out)

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self._inside else held
