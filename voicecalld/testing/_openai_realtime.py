"""One fake Realtime transcription WebSocket connection
(https://platform.openai.com/docs/guides/realtime-transcription).

``RealtimeRecord`` is what a test inspects afterwards; ``RealtimeConnection``
speaks the GA protocol on the request thread that owns the socket. All
sends happen on that one thread, so no lock is needed around the socket,
and scheduled events (delayed or reordered transcripts) wait in an outbox
that the receive loop drains between messages.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
from typing import Any, Protocol

import simple_websocket

from voicecalld.media import mulaw

from ._http import abort_socket
from ._openai_records import ArrivalStamps, Outbox, RealtimeRecord, SessionService
from ._openai_session import (
    ConfigError,
    apply_session_update,
    default_session,
    input_settings,
)
from ._openai_vad import EnergyVad


class Service(SessionService, Protocol):
    """What a transcription connection asks of the fake server besides."""

    completed_out_of_order: bool
    out_of_order_hold_s: float

__all__ = ["BETA_CLOSE_CODE", "ArrivalStamps", "RealtimeConnection", "RealtimeRecord"]

BETA_CLOSE_CODE = 4000
BETA_ERROR = {
    "type": "invalid_request_error",
    "code": "beta_api_shape_disabled",
    "message": "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API.",
}
# What the real service sends at its session time limit (observed in public
# client code: an error event, then close 1001 "going away").
EXPIRED_MESSAGE = "Your session hit the maximum duration of 60 minutes."
EXPIRED_CLOSE_CODE = 1001

_CLIENT_EVENTS = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
)
_MIN_COMMIT_MS = 100  # the real service refuses to commit less
_IDLE_POLL = 0.05  # how often the loop wakes without traffic


def _event_id() -> str:
    return "event_" + secrets.token_hex(11)


def _item_id() -> str:
    return "item_" + secrets.token_hex(11)


class _Stop(Exception):
    """The connection is over (closed, dropped or expired)."""


class RealtimeConnection:
    """Runs one accepted WebSocket until it closes."""

    def __init__(self, ws: simple_websocket.Server, record: RealtimeRecord, fake: Service) -> None:
        self.ws = ws
        self.record = record
        self.fake = fake
        now = time.monotonic()
        self.deadline = now + fake.session_lifetime if fake.session_lifetime is not None else None
        self.session = default_session("sess_" + secrets.token_hex(11), int(time.time()) + 3600)
        self.record.session = self.session
        self._configure()
        self.outbox = Outbox()
        self.buffer_ms = 0.0  # audio appended since the last commit or clear
        self.audio_ms = 0.0  # all audio appended in this session
        self.speech_item: str | None = None
        self.last_committed: str | None = None
        self.turns = 0
        self.held: tuple[float, dict[str, Any]] | None = None  # completion kept back for reordering
        self.arrived = now  # when the message being handled was read off the socket

    # -- lifecycle ---------------------------------------------------------

    def reject_beta(self) -> None:
        """Answer like the real service does to the OpenAI-Beta header since the shutdown."""
        self.record.rejected = "beta"
        try:
            self._error(BETA_ERROR["code"], BETA_ERROR["message"])
            self._close(BETA_CLOSE_CODE, BETA_ERROR["message"])
        except (_Stop, simple_websocket.ConnectionClosed, OSError):
            pass

    def run(self) -> None:
        try:
            self._send({"type": "session.created", "event_id": _event_id(), "session": self.session})
            while not self.fake.stopping:
                raw = self.ws.receive(timeout=self._wait_time())
                if raw is not None:
                    stamps = getattr(self.ws.event, "stamps", None)
                    self.arrived = stamps.popleft() if stamps else time.monotonic()
                    self._handle(raw)
                self._tick()
            self._close(1001, "server shutting down")
        except (_Stop, simple_websocket.ConnectionClosed, OSError):
            pass

    def finish(self) -> None:
        """Mark the record closed; called once the socket is gone."""
        self.record.note_closed(self.ws.close_reason)

    def drop(self) -> None:
        """Cut the TCP connection with no closing handshake, like a network failure."""
        self.record.dropped = True
        abort_socket(self.ws.sock)
        raise _Stop

    # -- plumbing ----------------------------------------------------------

    def _send(self, event: dict[str, Any]) -> None:
        self.record.sent.append(event)
        self.ws.send(json.dumps(event))

    def _close(self, code: int, reason: str) -> None:
        self.record.close_code = code
        if self.ws.connected:
            self.ws.close(code, reason)
        raise _Stop

    def _error(
        self,
        code: str | None,
        message: str,
        param: str | None = None,
        client_event_id: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        self._send(
            {
                "type": "error",
                "event_id": _event_id(),
                "error": {
                    "type": kind,
                    "code": code,
                    "message": message,
                    "param": param,
                    "event_id": client_event_id,
                },
            }
        )

    def _wait_time(self) -> float:
        now = time.monotonic()
        wakeups = [now + _IDLE_POLL]
        for due in (self.outbox.next_due(), self.deadline):
            if due is not None:
                wakeups.append(due)
        if self.held is not None:
            wakeups.append(self.held[0] + self.fake.out_of_order_hold_s)
        return max(0.0, min(wakeups) - now)

    def _tick(self) -> None:
        now = time.monotonic()
        if self.held is not None and now - self.held[0] >= self.fake.out_of_order_hold_s:
            # No second turn came to swap with; deliver rather than lose it.
            self.outbox.put(now, self.held[1])
            self.held = None
        for event in self.outbox.pop_due(now):
            self._send(event)
        if self.deadline is not None and now >= self.deadline:
            self._error("session_expired", EXPIRED_MESSAGE)
            self._close(EXPIRED_CLOSE_CODE, EXPIRED_MESSAGE)

    def _configure(self, clock_ms: int = 0) -> None:
        self.settings = input_settings(self.session)
        vad = self.settings.vad
        self.vad = (
            EnergyVad(
                self.settings.rate,
                vad["threshold"],
                vad["silence_duration_ms"],
                vad["prefix_padding_ms"],
                start_ms=clock_ms,
            )
            if vad is not None
            else None
        )

    # -- client events -----------------------------------------------------

    def _handle(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            self._error("invalid_json", "Binary frames are not supported; send JSON text.")
            return
        try:
            event = json.loads(raw)
        except ValueError as exc:
            self._error("invalid_json", f"We could not parse the JSON body of your request. ({exc})")
            return
        if not isinstance(event, dict):
            self._error("invalid_json", "Expected a JSON object.")
            return
        self.record.events.append(event)
        kind = event.get("type")
        client_id = event.get("event_id")
        if kind == "session.update":
            self._on_session_update(event, client_id)
        elif kind == "input_audio_buffer.append":
            self._on_append(event, client_id)
        elif kind == "input_audio_buffer.commit":
            self._on_commit(client_id)
        elif kind == "input_audio_buffer.clear":
            self.buffer_ms = 0.0
            if self.vad is not None:
                self.vad.reset_floor()
            self._send({"type": "input_audio_buffer.cleared", "event_id": _event_id()})
        else:
            choices = ", ".join(repr(c) for c in _CLIENT_EVENTS)
            self._error(
                "invalid_value",
                f"Invalid value: {kind!r}. Supported values are: {choices}.",
                "type",
                client_id,
            )

    def _on_session_update(self, event: dict[str, Any], client_id: str | None) -> None:
        try:
            merged = apply_session_update(self.session, event, self.fake.transcription_models)
        except ConfigError as exc:
            # Like the real service: report and keep the socket open.
            self._error(exc.code, exc.message, exc.param, client_id)
            return
        format_changed = merged["audio"]["input"]["format"] != self.session["audio"]["input"]["format"]
        vad_changed = (
            merged["audio"]["input"]["turn_detection"] != self.session["audio"]["input"]["turn_detection"]
        )
        self.session = self.record.session = merged
        if format_changed or vad_changed:
            self._configure(clock_ms=int(self.audio_ms))
        else:
            # Keep the VAD, and with it any utterance in progress.
            self.settings = input_settings(merged)
        self._send({"type": "session.updated", "event_id": _event_id(), "session": merged})

    def _on_append(self, event: dict[str, Any], client_id: str | None) -> None:
        self.record.append_times.append(self.arrived)
        audio = event.get("audio")
        if not isinstance(audio, str):
            self._error(
                "missing_required_parameter", "Missing required parameter: 'audio'.", "audio", client_id
            )
            return
        try:
            chunk = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            self._error(
                "invalid_value", "Invalid 'audio'. Expected base64-encoded audio bytes.", "audio", client_id
            )
            return
        self.record.frames += 1
        self.record.audio_bytes += chunk
        if self.fake._frame_triggers_drop():
            self.drop()
        if self.settings.format == "audio/pcmu":
            pcm = mulaw.decode(chunk)
        else:
            pcm = chunk[: len(chunk) - len(chunk) % 2]
        chunk_ms = 1000.0 * (len(pcm) // 2) / self.settings.rate
        self.buffer_ms += chunk_ms
        self.audio_ms += chunk_ms
        if self.vad is None:
            return
        for change in self.vad.feed(pcm):
            if change.kind == "start":
                self.speech_item = _item_id()
                self._send(
                    {
                        "type": "input_audio_buffer.speech_started",
                        "event_id": _event_id(),
                        "audio_start_ms": change.ms,
                        "item_id": self.speech_item,
                    }
                )
            else:
                item_id = self.speech_item or _item_id()
                self.speech_item = None
                self._send(
                    {
                        "type": "input_audio_buffer.speech_stopped",
                        "event_id": _event_id(),
                        "audio_end_ms": change.ms,
                        "item_id": item_id,
                    }
                )
                self._commit(item_id)

    def _on_commit(self, client_id: str | None) -> None:
        if self.buffer_ms < _MIN_COMMIT_MS:
            self._error(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{_MIN_COMMIT_MS}ms of audio, but buffer only has {self.buffer_ms:.2f}ms of audio.",
                None,
                client_id,
            )
            return
        item_id = self.speech_item or _item_id()
        self.speech_item = None
        if self.vad is not None:
            self.vad.reset_floor()
        self._commit(item_id)

    # -- turns -------------------------------------------------------------

    def _commit(self, item_id: str) -> None:
        audio_ms = self.buffer_ms
        self.buffer_ms = 0.0
        self._send(
            {
                "type": "input_audio_buffer.committed",
                "event_id": _event_id(),
                "previous_item_id": self.last_committed,
                "item_id": item_id,
            }
        )
        self.last_committed = item_id
        if self.settings.model is None:
            return  # no transcription configured: the real service stays silent too
        self.turns += 1
        scripted = self.fake._next_transcript()
        due = time.monotonic() + self.fake.transcription_delay_s
        if isinstance(scripted, dict) and "error" in scripted:
            self.record.transcripts.append((item_id, ""))
            error = {
                "type": "server_error",
                "code": None,
                "message": "Transcription failed.",
                "param": None,
                **scripted["error"],
            }
            self.outbox.put(
                due,
                {
                    "type": "conversation.item.input_audio_transcription.failed",
                    "event_id": _event_id(),
                    "item_id": item_id,
                    "content_index": 0,
                    "error": error,
                },
            )
            return
        text = str(scripted)
        self.record.transcripts.append((item_id, text))
        for delta in _word_chunks(text):
            event = {
                "type": "conversation.item.input_audio_transcription.delta",
                "event_id": _event_id(),
                "item_id": item_id,
                "content_index": 0,
                "delta": delta,
            }
            if self.settings.logprobs:
                event["logprobs"] = [_logprob(delta)]
            self.outbox.put(due, event)
        audio_tokens = max(1, round(audio_ms / 100))
        text_tokens = max(1, len(text.split()))
        completed = {
            "type": "conversation.item.input_audio_transcription.completed",
            "event_id": _event_id(),
            "item_id": item_id,
            "content_index": 0,
            "transcript": text,
            "usage": {
                "type": "tokens",
                "input_tokens": audio_tokens,
                "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
                "output_tokens": text_tokens,
                "total_tokens": audio_tokens + text_tokens,
            },
        }
        if self.settings.logprobs:
            completed["logprobs"] = [_logprob(word) for word in _word_chunks(text)]
        if self.fake.completed_out_of_order and self.held is None and self.turns % 2 == 1:
            # Keep this turn's completion back until the next turn's is out.
            self.held = (time.monotonic(), completed)
            return
        self.outbox.put(due, completed)
        if self.held is not None:
            self.outbox.put(due, self.held[1])
            self.held = None


def _word_chunks(text: str) -> list[str]:
    """Split into word-sized deltas (leading space kept) that join back to ``text``."""
    chunks = re.findall(r"\s*\S+", text)
    tail = text[sum(map(len, chunks)) :]
    if tail:
        if chunks:
            chunks[-1] += tail
        else:
            chunks.append(tail)
    return chunks


def _logprob(token: str) -> dict[str, Any]:
    return {"token": token, "logprob": -0.01, "bytes": list(token.encode())}
