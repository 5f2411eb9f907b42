"""The I/O-free parts of a speech-to-speech call through the OpenAI Realtime
API, GA interface (https://platform.openai.com/docs/guides/realtime-conversations,
https://platform.openai.com/docs/api-reference/realtime-client-events):
what the session is told, and what the caller has heard.

* ``session_update``: the ``session.update`` of a ``realtime`` session,
  G.711 µ-law (``audio/pcmu``) in and out, so the carrier's audio goes in
  and the model's comes out unchanged; server VAD; the call's tools.
* ``say_exactly``: a ``response.create`` that makes the model say a given
  text verbatim (the opening, ``voicecall.speak``, a continue's question).
* ``seed_items``: the conversation so far (the call record's transcript) as
  ``conversation.item.create`` events, for a session that replaces one that
  dropped or reached its lifetime.
* ``HeardAudio``: which of the model's audio the caller has actually heard,
  from the marks the carrier echoed. A barge-in truncates the model's item
  at that point (``conversation.item.truncate``): the API rejects an
  ``audio_end_ms`` past the audio it sent, and the wall clock would
  overstate what played, so the only source is the echoed marks; those the
  carrier returns because of a ``clear`` say nothing was heard.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import chat

END_CALL = "end_call"
END_CALL_TOOL: dict[str, Any] = {
    "type": "function",
    "name": END_CALL,
    "description": ("End the phone call. Use it when the caller says goodbye, asks to hang up, or the "
                    "conversation is clearly over. Say a short goodbye first: the line is closed once it has "
                    "been heard."),
    "parameters": {"type": "object", "properties": {}, "required": [], "additionalProperties": False},
}

VOICE_PROMPT = (
    "You are a friendly voice assistant on a phone call, talking with {who} whose phone number is {caller}. "
    "Speak naturally in short turns of one or two sentences. If you did not understand the caller, ask them "
    "to repeat. When the caller says goodbye or the conversation is over, say a brief goodbye and call the "
    "end_call function."
)

#: Milliseconds of µ-law audio per byte (8000 bytes a second).
MS_PER_BYTE = 1000 / 8000


def instructions(configured: str | None, fallback: str | None, record: dict[str, Any]) -> str:
    """``realtime.instructions``, else ``responseSystemPrompt``, else the built-in
    voice prompt; ``{caller}`` is the other party's number."""
    caller = chat.remote_party(record)
    prompt = configured or fallback
    if prompt:
        return prompt.replace("{caller}", caller)
    who = "a caller" if record.get("direction") == "inbound" else "the person you called"
    return VOICE_PROMPT.format(who=who, caller=caller)


def tools(transfer_to: Sequence[str]) -> list[dict[str, Any]]:
    """``end_call``, and ``transfer_call`` when transfers are allowed (the
    auto-responder's function, in the Realtime API's flat shape)."""
    transfer = chat.transfer_function(transfer_to)
    return [END_CALL_TOOL, *([{"type": "function", **transfer}] if transfer else [])]


def turn_detection(base: dict[str, Any], answers: bool) -> dict[str, Any]:
    """The session's turn detection (``base``: server or semantic VAD, as
    for speech-to-text). ``answers``: the model answers each caller turn by
    itself (``create_response``); off while someone else answers (a
    continue, a socket responder, a notification)."""
    return {**base, "create_response": answers, "interrupt_response": True}


def session_update(*, model: str, voice: str, prompt: str, transcription_model: str, detection: dict[str, Any],
                   answers: bool, tool_list: list[dict[str, Any]]) -> dict[str, Any]:
    """The GA ``session.update`` for a µ-law speech-to-speech session."""
    return {"type": "session.update", "session": {
        "type": "realtime",
        "model": model,
        "output_modalities": ["audio"],
        "instructions": prompt,
        "audio": {
            "input": {"format": {"type": "audio/pcmu"},
                      "transcription": {"model": transcription_model},
                      "turn_detection": turn_detection(detection, answers)},
            "output": {"format": {"type": "audio/pcmu"}, "voice": voice},
        },
        "tools": tool_list,
        "tool_choice": "auto",
    }}


def answering(detection: dict[str, Any], answers: bool) -> dict[str, Any]:
    """A ``session.update`` that only switches whether the model answers by itself."""
    return {"type": "session.update", "session": {
        "type": "realtime", "audio": {"input": {"turn_detection": turn_detection(detection, answers)}}}}


def say_exactly(text: str, utterance_id: str) -> dict[str, Any]:
    """A response that says ``text`` word for word. The utterance id rides
    in the response's metadata, which ``response.created`` echoes, so the
    response's audio can be told apart from the model's own replies."""
    quoted = text.replace('"', "'")
    return {"type": "response.create", "response": {
        "instructions": f'Say exactly the following text, word for word, and nothing else: "{quoted}"',
        "metadata": {"utterance": utterance_id[:512]},
    }}


def seed_items(transcript: list[dict[str, Any]], limit: int = chat.MAX_HISTORY) -> list[dict[str, Any]]:
    """The call's final transcript as conversation items, oldest first."""
    out: list[dict[str, Any]] = []
    for message in chat.conversation(transcript, limit):
        if message["role"] == "assistant":
            content = [{"type": "output_text", "text": message["content"]}]
        else:
            content = [{"type": "input_text", "text": message["content"]}]
        out.append({"type": "conversation.item.create",
                    "item": {"type": "message", "role": message["role"], "content": content}})
    return out


def function_output(call_id: str, output: dict[str, Any]) -> dict[str, Any]:
    return {"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": call_id, "output": json.dumps(output)}}


def truncate(item_id: str, audio_end_ms: int) -> dict[str, Any]:
    return {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
            "audio_end_ms": audio_end_ms}


@dataclass(frozen=True)
class MarkInfo:
    item_id: str
    end_ms: int  # the item's audio before the mark, in ms
    last: bool   # the mark after the item's last audio


class HeardAudio:
    """What of each model item the caller has heard, from echoed marks.
    Not thread-safe: the owner serializes calls."""

    def __init__(self) -> None:
        self._marks: dict[str, MarkInfo] = {}  # sent, not yet echoed
        self._heard: dict[str, int] = {}       # item id -> ms heard
        self._sent: dict[str, int] = {}        # item id -> ms sent to the carrier

    def sent_audio(self, item_id: str, nbytes: int) -> int:
        """Audio of ``item_id`` went to the carrier; its ms sent so far."""
        self._sent[item_id] = self._sent.get(item_id, 0) + nbytes
        return round(self._sent[item_id] * MS_PER_BYTE)

    def sent_mark(self, name: str, item_id: str, last: bool = False) -> MarkInfo:
        info = MarkInfo(item_id, round(self._sent.get(item_id, 0) * MS_PER_BYTE), last)
        self._marks[name] = info
        return info

    def echoed(self, name: str) -> MarkInfo | None:
        """A mark came back because its audio played; None if it was not
        outstanding (unknown, or dropped by ``cleared``)."""
        info = self._marks.pop(name, None)
        if info is not None:
            self._heard[info.item_id] = max(self._heard.get(info.item_id, 0), info.end_ms)
        return info

    def cleared(self) -> list[MarkInfo]:
        """A ``clear`` went out: the marks outstanding come back at once
        without their audio having played, so they no longer count."""
        dropped = list(self._marks.values())
        self._marks.clear()
        return dropped

    @property
    def outstanding(self) -> int:
        return len(self._marks)

    def heard_ms(self, item_id: str) -> int:
        return self._heard.get(item_id, 0)

    def sent_ms(self, item_id: str) -> int:
        return round(self._sent.get(item_id, 0) * MS_PER_BYTE)

    def forget(self, item_id: str) -> None:
        self._heard.pop(item_id, None)
        self._sent.pop(item_id, None)
