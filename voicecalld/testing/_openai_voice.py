"""One fake Realtime speech-to-speech WebSocket connection, GA interface
(https://platform.openai.com/docs/guides/realtime-conversations,
https://platform.openai.com/docs/api-reference/realtime-client-events).

A connection opened with ``?model=`` is a conversation. It validates the
``session.update`` (``type: "realtime"``, formats as objects, a voice,
server VAD, tools), runs the fake's energy VAD over the caller's audio and,
when a turn ends, sends the caller's transcript and (with
``create_response``) answers ``VoiceScript.reply_delay_s`` later: µ-law
speech-like audio as ``response.output_audio.delta`` events, streamed
``VoiceScript.speed`` times faster than real time, with its transcript as
deltas, and the scripted tool call if any. ``response.create`` with
instructions ending in a quoted text says exactly that text.

It honours ``response.cancel`` (and cancels its own response when the
caller starts talking, as ``interrupt_response`` does) and
``conversation.item.truncate``, which it rejects with an ``error`` when
``audio_end_ms`` is past the audio it sent for the item, as the real
service does. ``FakeOpenAI.drop_realtime_after`` cuts the socket on cue.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import itertools
import json
import queue
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import simple_websocket

from voicecalld.media import mulaw

from ._audio_signals import speech_like_pcm
from ._http import abort_socket
from ._openai_realtime import EXPIRED_CLOSE_CODE, EXPIRED_MESSAGE, RealtimeRecord
from ._openai_records import SessionService
from ._openai_session import (
    ConfigError,
    _check_format,
    _check_transcription,
    _check_turn_detection,
    _invalid_value,
    _reject_unknown,
    _require_object,
    _require_type,
)
from ._openai_vad import EnergyVad

__all__ = ["VoiceConnection", "VoiceRecord", "VoiceScript"]

VOICE_MODELS = frozenset({"gpt-realtime", "gpt-realtime-mini", "gpt-4o-realtime-preview"})
_SESSION_KEYS = {"type", "model", "output_modalities", "instructions", "audio", "tools", "tool_choice",
                 "max_output_tokens", "tracing", "truncation", "prompt", "include"}
_INPUT_KEYS = {"format", "transcription", "noise_reduction", "turn_detection"}
_OUTPUT_KEYS = {"format", "voice", "speed"}
_CHUNK_MS = 100
_IDLE_POLL = 0.05
_QUOTED = re.compile(r'"(.*)"\s*$', re.S)


class Service(SessionService, Protocol):
    """What a speech-to-speech connection asks of the fake server besides."""

    voice: VoiceScript


@dataclass
class VoiceScript:
    """The fake model's knobs. A reply is a string (what it says) or a dict
    with ``text``, ``tool`` (``{"name", "arguments"}``) and ``delay``."""

    reply_delay_s: float = 0.3
    ms_per_char: float = 60.0
    speed: float = 4.0  # audio streamed this many times faster than real time
    default_reply: str = "Okay."
    replies: queue.Queue[str | dict[str, Any]] = field(default_factory=queue.Queue)

    def next_reply(self) -> dict[str, Any]:
        try:
            reply = self.replies.get_nowait()
        except queue.Empty:
            reply = self.default_reply
        return dict(reply) if isinstance(reply, dict) else {"text": reply}


@dataclass
class VoiceRecord(RealtimeRecord):
    """A conversation session: what ``RealtimeRecord`` keeps, and its
    responses, truncations and the items the client created."""

    responses: list[dict[str, Any]] = field(default_factory=list)
    truncations: list[dict[str, Any]] = field(default_factory=list)
    created_items: list[dict[str, Any]] = field(default_factory=list)
    speech_started_at: list[float] = field(default_factory=list)  # time.monotonic() of each speech_started sent
    speech_stopped_at: list[float] = field(default_factory=list)  # ... and of each speech_stopped
    first_audio_at: list[float] = field(default_factory=list)  # ... and of each response's first audio delta


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(11)}"


class _Stop(Exception):
    pass


class VoiceConnection:
    """Runs one accepted conversation WebSocket until it closes."""

    def __init__(self, ws: simple_websocket.Server, record: VoiceRecord, fake: Service, model: str) -> None:
        self.ws, self.record, self.fake = ws, record, fake
        self.deadline = time.monotonic() + fake.session_lifetime if fake.session_lifetime is not None else None
        self.session: dict[str, Any] = {
            "type": "realtime", "object": "realtime.session", "id": _id("sess"), "model": model,
            "output_modalities": ["audio"], "instructions": "", "tools": [], "tool_choice": "auto",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "transcription": None,
                                "noise_reduction": None,
                                "turn_detection": _check_turn_detection({"type": "server_vad"})},
                      "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"}}}
        record.session = self.session
        self.vad: EnergyVad | None = None
        self._configure_vad(0)
        self.audio_ms = 0.0
        self.heap: list[tuple[float, int, dict[str, Any], str | None]] = []
        self.seq = itertools.count()
        self.active: str | None = None  # the response in progress
        self.sent_ms: dict[str, int] = {}  # assistant item -> audio sent, ms
        self.calls: set[str] = set()  # function call ids made
        self.speech_item: str | None = None

    def run(self) -> None:
        try:
            self._send({"type": "session.created", "event_id": _id("event"), "session": self.session})
            while not self.fake.stopping:
                raw = self.ws.receive(timeout=self._wait_time())
                if raw is not None:
                    self._handle(raw)
                self._tick()
            self.ws.close(1001, "server shutting down")
        except (_Stop, simple_websocket.ConnectionClosed, OSError):
            pass

    def finish(self) -> None:
        self.record.note_closed(self.ws.close_reason)

    # -- plumbing --

    def _send(self, event: dict[str, Any]) -> None:
        self.record.sent.append(event)
        self.ws.send(json.dumps(event))

    def _error(self, code: str | None, message: str, param: str | None = None, event_id: str | None = None) -> None:
        self._send({"type": "error", "event_id": _id("event"), "error": {
            "type": "invalid_request_error", "code": code, "message": message, "param": param,
            "event_id": event_id}})

    def _at(self, due: float, event: dict[str, Any], response: str | None = None) -> None:
        heapq.heappush(self.heap, (due, next(self.seq), event, response))

    def _wait_time(self) -> float:
        now = time.monotonic()
        wake = [now + _IDLE_POLL] + ([self.heap[0][0]] if self.heap else []) + (
            [self.deadline] if self.deadline else [])
        return max(0.0, min(wake) - now)

    def _tick(self) -> None:
        now = time.monotonic()
        while self.heap and self.heap[0][0] <= now:
            _, _, event, _ = heapq.heappop(self.heap)
            if event["type"] == "response.output_audio.delta":
                item = event["item_id"]
                if item not in self.sent_ms:
                    self.record.first_audio_at.append(now)
                self.sent_ms[item] = self.sent_ms.get(item, 0) + len(base64.b64decode(event["delta"])) // 8
            if event["type"] == "response.done":
                self.active = None
            self._send(event)
        if self.deadline is not None and now >= self.deadline:
            self._error("session_expired", EXPIRED_MESSAGE)
            self.record.close_code = EXPIRED_CLOSE_CODE
            self.ws.close(EXPIRED_CLOSE_CODE, EXPIRED_MESSAGE)
            raise _Stop

    def _configure_vad(self, clock_ms: int) -> None:
        vad = self.session["audio"]["input"]["turn_detection"]
        self.vad = EnergyVad(8000, vad["threshold"], vad["silence_duration_ms"], vad["prefix_padding_ms"],
                             start_ms=clock_ms) if vad is not None else None

    # -- client events --

    def _handle(self, raw: str | bytes) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            self._error("invalid_json", "We could not parse the JSON body of your request.")
            return
        if not isinstance(event, dict):
            self._error("invalid_json", "Expected a JSON object.")
            return
        self.record.events.append(event)
        kind, client_id = event.get("type"), event.get("event_id")
        handler = {
            "session.update": self._on_session_update, "input_audio_buffer.append": self._on_append,
            "conversation.item.create": self._on_item_create, "conversation.item.truncate": self._on_truncate,
            "response.create": self._on_response_create, "response.cancel": self._on_cancel,
        }.get(str(kind))
        if handler is None:
            self._error("invalid_value", f"Invalid value: {kind!r}.", "type", client_id)
            return
        handler(event, client_id)

    def _on_session_update(self, event: dict[str, Any], client_id: str | None) -> None:
        try:
            merged = self._merge(_require_object(event.get("session"), "session"))
        except ConfigError as exc:
            self._error(exc.code, exc.message, exc.param, client_id)
            return
        vad_changed = merged["audio"]["input"]["turn_detection"] != self.session["audio"]["input"]["turn_detection"]
        self.session = self.record.session = merged
        if vad_changed and not (self.vad and self.vad.speaking):
            self._configure_vad(int(self.audio_ms))
        self._send({"type": "session.updated", "event_id": _id("event"), "session": merged})

    def _merge(self, update: dict[str, Any]) -> dict[str, Any]:
        _reject_unknown(update, _SESSION_KEYS, "session")
        if update.get("type") != "realtime":
            raise _invalid_value(update.get("type"), ("realtime",), "session.type")
        merged: dict[str, Any] = json.loads(json.dumps(self.session))
        if "model" in update and update["model"] not in VOICE_MODELS:
            raise _invalid_value(update["model"], tuple(sorted(VOICE_MODELS)), "session.model")
        if "output_modalities" in update and update["output_modalities"] not in (["audio"], ["text"]):
            raise _invalid_value(update["output_modalities"], (["audio"], ["text"]), "session.output_modalities")
        if "instructions" in update:
            _require_type(update["instructions"], str, "a string", "session.instructions")
        if "tools" in update:
            self._check_tools(update["tools"])
        for key in ("model", "output_modalities", "instructions", "tools", "tool_choice"):
            if key in update:
                merged[key] = update[key]
        audio = _require_object(update.get("audio", {}), "session.audio")
        _reject_unknown(audio, {"input", "output"}, "session.audio")
        audio_in = _require_object(audio.get("input", {}), "session.audio.input")
        _reject_unknown(audio_in, _INPUT_KEYS, "session.audio.input")
        target = merged["audio"]["input"]
        if "format" in audio_in:
            target["format"] = _check_format(audio_in["format"])
        if "transcription" in audio_in:
            target["transcription"] = _check_transcription(audio_in["transcription"], self.fake.transcription_models)
        if "turn_detection" in audio_in:
            target["turn_detection"] = _check_turn_detection(audio_in["turn_detection"])
        audio_out = _require_object(audio.get("output", {}), "session.audio.output")
        _reject_unknown(audio_out, _OUTPUT_KEYS, "session.audio.output")
        if "format" in audio_out:
            fmt = _require_object(audio_out["format"], "session.audio.output.format")
            if fmt != {"type": "audio/pcmu"}:
                raise ConfigError("invalid_value", "FakeOpenAI speaks only {'type': 'audio/pcmu'}.",
                                  "session.audio.output.format")
            merged["audio"]["output"]["format"] = fmt
        if "voice" in audio_out:
            _require_type(audio_out["voice"], str, "a string", "session.audio.output.voice")
            merged["audio"]["output"]["voice"] = audio_out["voice"]
        return merged

    @staticmethod
    def _check_tools(tools: Any) -> None:
        if not isinstance(tools, list):
            raise ConfigError("invalid_type", "Invalid type for 'session.tools': expected an array.", "session.tools")
        for i, tool in enumerate(tools):
            where = f"session.tools[{i}]"
            _require_object(tool, where)
            _reject_unknown(tool, {"type", "name", "description", "parameters"}, where)
            if tool.get("type") != "function":
                raise _invalid_value(tool.get("type"), ("function", "mcp"), f"{where}.type")
            _require_type(tool.get("name"), str, "a string", f"{where}.name")
            if _require_object(tool.get("parameters"), f"{where}.parameters").get("type") != "object":
                raise _invalid_value(tool["parameters"].get("type"), ("object",), f"{where}.parameters.type")

    def _on_append(self, event: dict[str, Any], client_id: str | None) -> None:
        try:
            chunk = base64.b64decode(str(event.get("audio")), validate=True)
        except (binascii.Error, ValueError):
            self._error("invalid_value", "Invalid 'audio'. Expected base64-encoded audio bytes.", "audio", client_id)
            return
        self.record.frames += 1
        self.record.audio_bytes += chunk
        if self.fake._frame_triggers_drop():
            self.record.dropped = True
            abort_socket(self.ws.sock)
            raise _Stop
        if self.session["audio"]["input"]["format"] != {"type": "audio/pcmu"}:
            return  # the client must configure µ-law before this fake can hear it
        pcm = mulaw.decode(chunk)
        self.audio_ms += len(chunk) / 8
        for change in self.vad.feed(pcm) if self.vad is not None else []:
            if change.kind == "start":
                self.speech_item = _id("item")
                self._send({"type": "input_audio_buffer.speech_started", "event_id": _id("event"),
                            "audio_start_ms": change.ms, "item_id": self.speech_item})
                self.record.speech_started_at.append(time.monotonic())
                if self.active is not None and self._vad("interrupt_response", True):
                    self._cancel(self.active, "turn_detected")
            else:
                self._turn_ended(change.ms)

    def _vad(self, key: str, default: bool) -> bool:
        vad = self.session["audio"]["input"]["turn_detection"] or {}
        return bool(vad.get(key, default))

    def _turn_ended(self, end_ms: int) -> None:
        item = self.speech_item or _id("item")
        self.speech_item = None
        self._send({"type": "input_audio_buffer.speech_stopped", "event_id": _id("event"), "audio_end_ms": end_ms,
                    "item_id": item})
        self.record.speech_stopped_at.append(time.monotonic())
        self._send({"type": "input_audio_buffer.committed", "event_id": _id("event"), "item_id": item,
                    "previous_item_id": None})
        now = time.monotonic()
        if self.session["audio"]["input"]["transcription"] is not None:
            text = str(self.fake._next_transcript())
            self.record.transcripts.append((item, text))
            self._at(now + self.fake.transcription_delay_s, {
                "type": "conversation.item.input_audio_transcription.completed", "event_id": _id("event"),
                "item_id": item, "content_index": 0, "transcript": text})
        if self._vad("create_response", True) and self.active is None:
            self._respond(now, self.fake.voice.next_reply(), {})

    def _on_item_create(self, event: dict[str, Any], client_id: str | None) -> None:
        item = event.get("item")
        if not isinstance(item, dict):
            self._error("missing_required_parameter", "Missing required parameter: 'item'.", "item", client_id)
            return
        if item.get("type") == "function_call_output":
            if item.get("call_id") not in self.calls:
                self._error("invalid_value", f"Invalid 'item.call_id': no function call {item.get('call_id')!r}.",
                            "item.call_id", client_id)
                return
        elif item.get("type") == "message":
            allowed = {"user": "input_text", "system": "input_text", "assistant": "output_text"}
            kind = allowed.get(str(item.get("role")))
            content = item.get("content")
            if kind is None or not isinstance(content, list) or any(
                    not isinstance(c, dict) or c.get("type") != kind for c in content):
                self._error("invalid_value", f"Invalid content for a {item.get('role')!r} message.", "item.content",
                            client_id)
                return
        else:
            self._error("invalid_value", f"Invalid value: {item.get('type')!r}.", "item.type", client_id)
            return
        self.record.created_items.append(item)
        self._send({"type": "conversation.item.added", "event_id": _id("event"), "item": {"id": _id("item"), **item}})

    def _on_truncate(self, event: dict[str, Any], client_id: str | None) -> None:
        item, end = event.get("item_id"), event.get("audio_end_ms")
        sent = self.sent_ms.get(str(item))
        if sent is None:
            self._error("invalid_value", f"Invalid 'item_id': no assistant audio item {item!r}.", "item_id", client_id)
            return
        if not isinstance(end, int) or isinstance(end, bool) or end < 0 or end > sent:
            self._error("invalid_value", f"Audio content of {sent}ms is already shorter than {end}ms",
                        "audio_end_ms", client_id)
            self.record.truncations.append({"item_id": item, "audio_end_ms": end, "accepted": False})
            return
        self.record.truncations.append({"item_id": item, "audio_end_ms": end, "accepted": True, "sent_ms": sent})
        self._send({"type": "conversation.item.truncated", "event_id": _id("event"), "item_id": item,
                    "content_index": 0, "audio_end_ms": end})

    def _on_response_create(self, event: dict[str, Any], client_id: str | None) -> None:
        if self.active is not None:
            self._error("conversation_already_has_active_response",
                        f"Conversation already has an active response in progress: {self.active}.", None, client_id)
            return
        params = event.get("response") or {}
        quoted = _QUOTED.search(str(params.get("instructions") or ""))
        reply = {"text": quoted.group(1)} if quoted else self.fake.voice.next_reply()
        self._respond(time.monotonic(), reply, params.get("metadata") or {}, scripted=not quoted)

    def _on_cancel(self, event: dict[str, Any], client_id: str | None) -> None:
        if self.active is None:
            self._error("response_cancel_not_active", "Cancellation failed: no active response found.", None,
                        client_id)
            return
        self._cancel(self.active, "client_cancelled")

    # -- responses --

    def _respond(self, now: float, reply: dict[str, Any], metadata: dict[str, Any], scripted: bool = True) -> None:
        voice = self.fake.voice
        rid, item = _id("resp"), _id("item")
        text = str(reply.get("text") or "")
        start = now + (voice.reply_delay_s if scripted else 0.0) + float(reply.get("delay", 0.0))
        self.active = rid
        self.record.responses.append({"id": rid, "item_id": item, "text": text, "metadata": metadata,
                                      "tool": reply.get("tool"), "status": "in_progress"})
        base = {"response_id": rid}
        self._at(start, {"type": "response.created", "event_id": _id("event"), "response": {
            "id": rid, "object": "realtime.response", "status": "in_progress", "metadata": metadata or None,
            "output": []}}, rid)
        output: list[dict[str, Any]] = []
        if text:
            self._at(start, {"type": "response.output_item.added", **base, "output_index": 0, "item": {
                "id": item, "type": "message", "role": "assistant", "status": "in_progress", "content": []}}, rid)
            audio = mulaw.encode(speech_like_pcm(max(0.2, len(text) * voice.ms_per_char / 1000)))
            step = 8 * _CHUNK_MS
            words = re.findall(r"\s*\S+", text)
            chunks = range(0, len(audio), step)
            for n, offset in enumerate(chunks):
                at = start + n * _CHUNK_MS / 1000 / voice.speed
                self._at(at, {"type": "response.output_audio.delta", **base, "item_id": item, "output_index": 0,
                              "content_index": 0, "delta": base64.b64encode(audio[offset:offset + step]).decode()},
                         rid)
                if n < len(words):
                    self._at(at, {"type": "response.output_audio_transcript.delta", **base, "item_id": item,
                                  "content_index": 0, "delta": words[n] if n < len(chunks) - 1 else
                                  "".join(words[n:])}, rid)
            end = start + len(chunks) * _CHUNK_MS / 1000 / voice.speed
            self._at(end, {"type": "response.output_audio.done", **base, "item_id": item, "content_index": 0}, rid)
            self._at(end, {"type": "response.output_audio_transcript.done", **base, "item_id": item,
                           "content_index": 0, "transcript": text}, rid)
            output.append({"id": item, "type": "message", "role": "assistant", "status": "completed",
                           "content": [{"type": "output_audio", "transcript": text}]})
        else:
            end = start
        tool = reply.get("tool")
        if isinstance(tool, dict):
            call_id = _id("call")
            self.calls.add(call_id)
            args = json.dumps(tool.get("arguments") or {})
            self._at(end, {"type": "response.function_call_arguments.done", **base, "item_id": _id("item"),
                           "output_index": len(output), "call_id": call_id, "name": tool["name"],
                           "arguments": args}, rid)
            output.append({"type": "function_call", "call_id": call_id, "name": tool["name"], "arguments": args})
        self._at(end, {"type": "response.done", "event_id": _id("event"), "response": {
            "id": rid, "object": "realtime.response", "status": "completed", "metadata": metadata or None,
            "output": output}}, rid)

    def _cancel(self, rid: str, reason: str) -> None:
        """Stop a response: what it has not sent yet is never sent."""
        pending = [e for e in self.heap if e[3] == rid]
        self.heap = [e for e in self.heap if e[3] != rid]
        heapq.heapify(self.heap)
        self.active = None
        for response in self.record.responses:
            if response["id"] == rid:
                response["status"] = "cancelled"
        for _, _, event, _ in sorted(pending):
            if event["type"] == "response.created":
                self._send(event)  # the client learns of it, and that it is over
        self._send({"type": "response.done", "event_id": _id("event"), "response": {
            "id": rid, "object": "realtime.response", "status": "cancelled",
            "status_details": {"type": "cancelled", "reason": reason}, "output": []}})
