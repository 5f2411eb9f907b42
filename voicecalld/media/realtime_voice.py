"""Speech-to-speech for one call through one OpenAI Realtime session, GA
interface (https://platform.openai.com/docs/guides/realtime-conversations,
https://platform.openai.com/docs/api-reference/realtime-server-events; no
``OpenAI-Beta`` header: that selects the beta interface, which is shut down).

``RealtimeVoice`` is a ``Transcriber`` (``realtime_stt``) whose session is
a conversation: it keeps the connection the same way (caller audio appended
unchanged and never blocking the read loop, reconnects with backoff,
rotation before the session's lifetime runs out, at a pause), and the
caller's transcripts come out in turn order as before. On top of that:

* the model's audio (``response.output_audio.delta``, µ-law) goes to the
  carrier through a ``voice_out.Pacer``: 20 ms frames, marks every 200 ms;
* barge-in (``input_audio_buffer.speech_started`` while the bot is heard):
  ``clear`` at once, the response cancelled, and the item truncated at what
  the caller heard by the echoed marks;
* the model's own replies become ``said`` lines in the record; an utterance
  of the call (the opening, ``voicecall.speak``, a continue's question, a
  notification) is said verbatim (``response.create`` with instructions)
  and reported played once its last mark is echoed, like the player's;
* tools: ``end_call`` (hang up once the goodbye was heard) and
  ``transfer_call`` (when ``transfer.allowTo`` lists numbers);
* the turn latency is the caller's end of speech (when the audio of their
  last word arrived, as the transcriber's timeline places the VAD's
  ``audio_end_ms``) to the reply's first frame sent to the carrier;
* a session that drops is reopened with the conversation so far as items;
  if the service cannot be reached (``GIVE_UP_AFTER`` failed attempts in a
  row), ``on_unreachable`` gets the caller audio buffered meanwhile and the
  utterances not yet said, and the call goes on without this session.

DTMF the call sends is paced out with the model's audio; unlike the
player's tones, a barge-in clears it too (the carrier's ``clear`` drops
everything queued at the carrier anyway).

Whether the model answers a caller turn by itself: on calls that converse
(inbound, conversation mode) unless ``responder = "socket"`` (the agent
answers) and except the turn a continue waits for.
"""

from __future__ import annotations

import base64
import binascii
import collections
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..calls import CallRecord, EventType, Speak
from ..errors import VoiceCallError
from . import realtime_voice_core as core
from .framing import Framing
from .realtime_stt import DEFAULT_LIFETIME, ROTATE_GRACE, SttEvent, Transcriber, _Session, turn_detection
from .voice_out import Pacer

log = logging.getLogger(__name__)

GIVE_UP_AFTER = 3  # failed connection attempts in a row before the call goes on without the service
GOODBYE_INSTRUCTIONS = "Say a brief, friendly goodbye to the caller, in one short sentence."


class VoiceEngine(Protocol):
    """What the session asks of the call engine (``manager.CallManager``)."""

    def live_record(self, call_id: str) -> CallRecord | None: ...

    def note_turn(self, call_id: str, latency_ms: float) -> bool: ...

    def end(self, call_id: object) -> dict[str, Any]: ...

    def transfer(self, call_id: object, to: object, message: object = None) -> dict[str, Any]: ...


#: Emits a call event: (type, fields).
Emit = Callable[..., None]
#: Runs a callable with the call's events, in order, off the session's threads.
Submit = Callable[[Callable[[], None]], None]
#: The session gave up: (why, caller audio not yet sent, utterances not yet said).
Unreachable = Callable[[str, list[bytes], list[Speak]], None]


def with_model(url: str, model: str) -> str:
    """``url`` with ``model=`` as its query (a model URL opens a conversation session)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("model", "intent")]
    return urlunsplit(parts._replace(query=urlencode([*query, ("model", model)])))


@dataclass
class _Reply:
    """One response of the model."""

    id: str
    utterance: str | None = None  # the call's utterance it says, if any
    goodbye: bool = False         # hang up once it has been heard
    transcript: str = ""
    said: bool = False            # its line went to the record
    interrupted: bool = False
    done: bool = False
    items: list[str] = field(default_factory=list)  # items with audio, in order
    transfer: tuple[str, str | None] | None = None    # (to, message) once it has been heard


class RealtimeVoice(Transcriber):
    what = "realtime voice"

    def __init__(self, call_id: str, cfg: Any, *, framing: Framing, send: Callable[[str], None], emit: Emit,
                 engine: VoiceEngine, submit: Submit, on_unreachable: Unreachable,
                 lateness: collections.deque[float] | None = None, lifetime: float | None = None) -> None:
        rt = cfg.realtime
        super().__init__(call_id, url=with_model(rt.url, rt.model), api_key=rt.apiKey or cfg.streaming.openaiApiKey
                         or "", model=rt.inputTranscriptionModel, threshold=float(cfg.streaming.vadThreshold),
                         silence_ms=int(cfg.streaming.silenceDurationMs), listener=self._heard,
                         lifetime=DEFAULT_LIFETIME if lifetime is None else lifetime,
                         detection=str(cfg.streaming.turnDetection), eagerness=str(cfg.streaming.eagerness))
        self.cfg = cfg
        self.engine = engine
        self.emit = emit
        self.submit = submit
        self.on_unreachable = on_unreachable
        self.pacer = Pacer(send, framing, name=call_id[:8], on_first_frame=self._first_frame, lateness=lateness)
        record = engine.live_record(call_id)
        snapshot = record.to_dict() if record is not None else {}
        self._prompt = core.instructions(rt.instructions, cfg.responseSystemPrompt, snapshot)
        self._tools = core.tools(cfg.transfer.allowTo)
        converses = snapshot.get("direction") == "inbound" or snapshot.get("mode") == "conversation"
        self._answers = converses and cfg.responder != "socket"
        self._vlock = threading.Lock()
        self._replies: dict[str, _Reply] = {}
        self._item_reply: dict[str, str] = {}
        self._active_reply: str | None = None
        self._says: collections.deque[Speak] = collections.deque()  # waiting for no response to be active
        self._asked: dict[str, Speak] = {}  # response.create sent, response.created not yet seen (by event id)
        self._claimed = False   # a continue waits for the caller's next turn: the model does not answer it
        self._speech_end: float | None = None
        self._failures = 0
        self._gave_up = False
        self._connected = False  # a session was open before: a new one starts with the conversation so far
        self.truncations: list[tuple[str, int]] = []  # (item id, audio_end_ms), for tests and logs

    # -- configuration --

    def session_config(self) -> dict[str, Any]:
        return core.session_update(model=self.cfg.realtime.model, voice=self.cfg.realtime.voice, prompt=self._prompt,
                                   transcription_model=self.model, detection=self._detection(),
                                   answers=self._answers and not self._claimed, tool_list=self._tools)

    def _detection(self) -> dict[str, Any]:
        """Turn detection as configured for speech-to-text (server or semantic VAD)."""
        return turn_detection(self.detection, self.threshold, self.silence_ms, self.eagerness)

    # -- from the bridge --

    def say(self, action: Speak) -> None:
        """Say an utterance of the call verbatim; reported played by its last mark."""
        if action.turn is not None and self._answers and not self._claimed:
            # A continue: its caller turn goes back to the agent, so the model leaves it unanswered.
            self._claimed = True
            self._send_event(core.answering(self._detection(), False))
        with self._vlock:
            self._says.append(action)
        self._next_say()

    def mark_echoed(self, name: str) -> None:
        self.pacer.mark_echoed(name)

    def tones(self, audio: bytes) -> None:
        item = f"dtmf-{uuid.uuid4().hex[:12]}"
        self.pacer.audio(item, audio)
        self.pacer.end(item)

    def close(self) -> None:
        super().close()
        self.pacer.close()

    # -- sending --

    def _send_event(self, event: dict[str, Any]) -> bool:
        with self._lock:
            session = self._active
        if session is None or not session.ready.is_set() or session.ended.is_set():
            return False
        try:
            session.send(event)
            return True
        except Exception as exc:  # noqa: BLE001 - the reader notices the drop and reconnects
            log.debug("call %s: realtime event not sent: %s", self.name, exc)
            return False

    def _next_say(self) -> None:
        """Ask for the next verbatim utterance if no response is under way
        (a conversation has one active response at a time)."""
        with self._vlock:
            if self._active_reply is not None or self._asked or not self._says:
                return
            action = self._says.popleft()
            event = core.say_exactly(action.text, action.utterance_id)
            event["event_id"] = f"say_{uuid.uuid4().hex[:16]}"
            self._asked[event["event_id"]] = action
        if not self._send_event(event):
            with self._vlock:  # not connected: said after the reconnect
                self._asked.pop(event["event_id"], None)
                self._says.appendleft(action)

    # -- session management (the supervisor thread) --

    def _open(self) -> _Session:
        try:
            session = super()._open()
        except Exception as exc:
            self._failures += 1
            if self._failures >= GIVE_UP_AFTER:
                self._give_up(str(exc))
            raise
        self._failures = 0
        record = self.engine.live_record(self.name)
        reopened, self._connected = self._connected, True
        if reopened and record is not None:
            items = core.seed_items(record.transcript)
            for item in items:
                session.send(item)
            log.info("call %s: realtime session %d opened with the conversation so far (%d items)", self.name,
                     self._sessions, len(items))
        return session

    def _flush_backlog(self, session: _Session) -> bool:
        if not super()._flush_backlog(session):
            return False
        self._next_say()  # what waited for the session
        return True

    def _supervise(self) -> None:
        super()._supervise()
        if not self._gave_up:
            return
        with self._vlock:
            says = list(self._asked.values()) + list(self._says)
            self._asked.clear()
            self._says.clear()
        with self._lock:
            backlog = [audio for audio, _ in self._backlog]
            self._backlog.clear()
            self._backlog_bytes = 0
        self.pacer.close()
        self.on_unreachable(f"the realtime service cannot be reached ({self.url.split('?')[0]})", backlog, says)

    def _give_up(self, why: str) -> None:
        log.warning("call %s: realtime voice unavailable after %d attempts (%s)", self.name, self._failures, why)
        self._gave_up = True
        self._closed = True  # ends the supervisor loop; _supervise hands over

    def _rotate(self, old: _Session) -> None:
        age = time.monotonic() - old.opened_at
        if (self._active_reply is not None or self.pacer.speaking) and age < self.lifetime + ROTATE_GRACE:
            return  # not at a pause: the supervisor asks again shortly
        super()._rotate(old)

    def _on_session_end(self, session: _Session) -> None:
        was_active = self._active is session
        super()._on_session_end(session)
        if not was_active or self._closed:
            return
        # What the lost session was saying plays out; what it owed is over.
        with self._vlock:
            replies = [r for r in self._replies.values() if not r.done]
            for reply in replies:
                reply.done = True
            self._active_reply = None
            says = list(self._asked.values())
            self._asked.clear()
            self._says.extendleft(reversed(says))  # asked but never started: said after the reconnect
        for reply in replies:
            self._finish(reply)

    # -- the session's events (its reader thread) --

    def _heard(self, event: SttEvent) -> None:
        """The caller's words, in turn order (``Transcriber``'s ordering)."""
        if event.kind == "speech_stopped":
            self._speech_end = event.at  # when the caller's last word arrived (Transcriber's timeline)
        elif event.kind == "partial" and event.text:
            self.emit(EventType.SPEECH, transcript=event.text, is_final=False)
        elif event.kind == "final" and event.text:
            self.emit(EventType.SPEECH, transcript=event.text, is_final=True)
            if self._claimed:
                self._claimed = False
                if self._answers:
                    self._send_event(core.answering(self._detection(), True))

    def _on_message(self, session: _Session, event: dict[str, Any]) -> None:
        kind = event.get("type", "")
        if kind == "session.updated":
            session.ready.set()
            return
        if kind.startswith(("conversation.item.input_audio_transcription.", "input_audio_buffer.committed",
                            "input_audio_buffer.speech_stopped")):
            super()._on_message(session, event)  # the transcripts in turn order; the end of speech on our clock
            return
        if session is not self._active:
            return  # a retired session: only the transcripts it owes count
        if kind == "input_audio_buffer.speech_started":
            self._in_speech = True
            self._barge_in()
        elif kind == "response.created":
            self._created(event.get("response") or {})
        elif kind == "response.output_audio.delta":
            self._audio(event)
        elif kind == "response.output_audio_transcript.delta":
            reply = self._reply(event.get("response_id"))
            if reply is not None:
                reply.transcript += str(event.get("delta") or "")
        elif kind == "response.output_audio_transcript.done":
            reply = self._reply(event.get("response_id"))
            if reply is not None and not reply.interrupted:
                reply.transcript = str(event.get("transcript") or reply.transcript)
                self._note_said(reply)
        elif kind == "response.function_call_arguments.done":
            self._tool(event)
        elif kind == "response.done":
            self._response_done(event.get("response") or {})
        elif kind == "error":
            self._error(event.get("error") or {})

    def _reply(self, response_id: object) -> _Reply | None:
        with self._vlock:
            return self._replies.get(str(response_id))

    def _created(self, response: dict[str, Any]) -> None:
        rid = str(response.get("id") or "")
        metadata = response.get("metadata") or {}
        utterance = metadata.get("utterance") if isinstance(metadata, dict) else None
        with self._vlock:
            reply = _Reply(rid, utterance=str(utterance) if utterance else None)
            reply.goodbye = isinstance(metadata, dict) and metadata.get("goodbye") == "1"
            if reply.utterance is not None:
                for key, action in list(self._asked.items()):
                    if action.utterance_id == reply.utterance:
                        del self._asked[key]
            self._replies[rid] = reply
            self._active_reply = rid

    def _audio(self, event: dict[str, Any]) -> None:
        reply = self._reply(event.get("response_id"))
        if reply is None or reply.interrupted:
            return  # a response a barge-in cancelled: what it still sends is not played
        item = str(event.get("item_id") or reply.id)
        try:
            audio = base64.b64decode(str(event.get("delta") or ""), validate=True)
        except (binascii.Error, ValueError):
            log.warning("call %s: realtime audio delta that is not base64 ignored", self.name)
            return
        with self._vlock:
            if item not in reply.items:
                reply.items.append(item)
                self._item_reply[item] = reply.id
        self.pacer.audio(item, audio)

    def _note_said(self, reply: _Reply) -> None:
        """The model's own reply goes to the record (an utterance of the call is there already)."""
        with self._vlock:
            if reply.said or reply.utterance is not None or not reply.transcript.strip():
                return
            reply.said = True
        self.emit(EventType.SAID, transcript=reply.transcript.strip())

    def _response_done(self, response: dict[str, Any]) -> None:
        with self._vlock:
            reply = self._replies.get(str(response.get("id") or ""))
            if reply is None or reply.done:
                return
            reply.done = True
            if self._active_reply == reply.id:
                self._active_reply = None
        if response.get("status") == "failed":
            log.warning("call %s: realtime response failed: %s", self.name, response.get("status_details"))
        if reply.interrupted:
            # Cut short while it was still coming: its audio is gone, and it never plays to its end.
            self.submit(lambda: self._heard_reply(reply))
        else:
            self._note_said(reply)
            self._finish(reply)
        self._next_say()

    def _finish(self, reply: _Reply) -> None:
        """Its audio is all queued: once the caller has heard it, report the
        utterance played, and hang up or transfer if the model asked to."""
        def heard() -> None:
            self.submit(lambda: self._heard_reply(reply))

        if not reply.items:
            heard()
            return
        for item in reply.items[:-1]:
            self.pacer.end(item)
        self.pacer.end(reply.items[-1], heard)

    def _heard_reply(self, reply: _Reply) -> None:
        """On the call's event worker: a reply was heard to its end (or will never be)."""
        if reply.utterance is not None:
            self.emit(EventType.PLAYED, utterance_id=reply.utterance)
        if reply.goodbye and not reply.interrupted:
            log.info("call %s: the model ends the call", self.name)
            try:
                self.engine.end(self.name)
            except VoiceCallError as exc:
                log.warning("call %s: hang-up after the goodbye failed: %s", self.name, exc.message)
        elif reply.transfer is not None:
            to, message = reply.transfer
            log.info("call %s: the model transfers the call", self.name)
            try:
                self.engine.transfer(self.name, to, None if reply.items else message)
            except VoiceCallError as exc:
                log.warning("call %s: the model's transfer did not happen: %s", self.name, exc.message)

    def _tool(self, event: dict[str, Any]) -> None:
        name, call_id = str(event.get("name") or ""), str(event.get("call_id") or "")
        reply = self._reply(event.get("response_id"))
        try:
            args = json.loads(str(event.get("arguments") or "{}"))
        except ValueError:
            args = {}
        args = args if isinstance(args, dict) else {}
        result: dict[str, Any] = {"success": True}
        if name == core.END_CALL and reply is not None:
            reply.goodbye = True
        elif name == "transfer_call" and reply is not None and self.cfg.transfer.allowTo:
            to, message = args.get("to"), args.get("message")
            reply.transfer = (str(to), str(message) if isinstance(message, str) and message else None)
        else:
            result = {"success": False, "error": f"unknown function {name!r}"}
        self._send_event(core.function_output(call_id, result))

    def _barge_in(self) -> None:
        """The caller speaks: if the bot is being heard, stop it at once
        and truncate its item at what the caller heard."""
        cleared = self.pacer.clear()
        if cleared is None:
            return
        with self._vlock:
            active = self._replies.get(self._active_reply or "")
            rid = self._item_reply.get(cleared.item_id or "")
            stopped = [r for r in (active, self._replies.get(rid or "")) if r is not None and not r.interrupted]
            for reply in stopped:
                reply.interrupted = True
        if active is not None and not active.done:
            self._send_event({"type": "response.cancel"})
        if cleared.item_id is not None and not cleared.item_id.startswith("dtmf-"):
            self.truncations.append((cleared.item_id, cleared.heard_ms))
            self._send_event(core.truncate(cleared.item_id, cleared.heard_ms))
        for reply in stopped:
            # A line cut short still goes to the record, marked interrupted.
            if reply.utterance is None and not reply.said and reply.transcript.strip():
                reply.said = True
                self.emit(EventType.SAID, transcript=reply.transcript.strip())
        self.emit(EventType.INTERRUPTED)
        for callback in cleared.dropped:
            callback()  # replies that had all their audio: reported as the player reports dropped utterances

    def _first_frame(self, item_id: str) -> None:
        """On the pacer's thread: the first frame of a reply went to the carrier."""
        with self._vlock:
            reply = self._replies.get(self._item_reply.get(item_id, ""))
            if reply is None or reply.utterance is not None:
                return  # not an answer of the model's (a verbatim utterance, tones)
            end, self._speech_end = self._speech_end, None
        if end is None:
            return
        latency_ms = (time.monotonic() - end) * 1000
        self.submit(lambda: self._note_turn(latency_ms))

    def _note_turn(self, latency_ms: float) -> None:
        self.engine.note_turn(self.name, latency_ms)

    def _error(self, error: dict[str, Any]) -> None:
        code, message = error.get("code"), error.get("message")
        event_id = str(error.get("event_id") or "")
        with self._vlock:
            action = self._asked.pop(event_id, None)
            if action is not None:
                self._says.appendleft(action)  # a response was under way after all: said after it
        if code in ("response_cancel_not_active", "conversation_already_has_active_response"):
            log.debug("call %s: realtime: %s", self.name, message)
            return
        log.warning("call %s: realtime error %s: %s", self.name, code, message)
