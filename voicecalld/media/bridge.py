"""One call's open media stream: the carrier's frames, parsed by its
``Framing``, become speech-to-text input and call events; the call's
utterances become paced audio frames.

A bridge forwards the caller's audio to a ``Transcriber`` and turns its
results into call events (partials, finals, barge-in), speaks the call's
utterances through a ``Player``, and reports DTMF. An utterance the
text-to-speech service refuses twice is said by the carrier instead
(``MediaCarrier.say_instead``): one failed request must not end the call.
DTMF the call sends goes out in-band, as tones (``dtmf.tones``) queued on
the player after what it is saying. A reply's turn latency is measured
here: from the caller's last word (the transcriber's ``speech_stopped``,
on our clock) to the first frame of the next utterance sent to the carrier.
When the carrier ends the stream or the socket closes, the bridge tears
everything down.

Messages are handled on the read loop (see ``stream``), and only there:
in order, and without a lock the loop could wait for.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import simple_websocket

from .. import metrics
from ..calls import CallEvent, CallRecord, EventType, Speak
from ..workqueue import KeyedWorkQueue
from . import alaw, dtmf
from .framing import PHONE_AUDIO, Audio, Dtmf, Framing, Mark, MediaFormat, Stop
from .loop import ReadLoop
from .player import Player
from .realtime_stt import SttEvent, Transcriber
from .realtime_voice import RealtimeVoice
from .tts import Synthesizer

log = logging.getLogger(__name__)


class Engine(Protocol):
    """What the media layer asks of the call engine."""

    @property
    def config(self) -> Any: ...

    def handle_event(self, event: CallEvent) -> None: ...

    def live_record(self, call_id: str) -> CallRecord | None: ...

    def note_turn(self, call_id: str, latency_ms: float) -> bool: ...

    def end(self, call_id: object) -> dict[str, Any]: ...

    def transfer(self, call_id: object, to: object, message: object = None) -> dict[str, Any]: ...


class Hub(Protocol):
    """What a bridge uses of the stream hub (``stream.StreamHub``): what all
    streams share."""

    engine: Engine
    loop: ReadLoop
    events: KeyedWorkQueue
    frames_in: int
    frames_late: int
    frames_lost: int
    forwarding: collections.deque[float]
    lateness: collections.deque[float]

    @property
    def config(self) -> Any: ...

    @property
    def synthesizer(self) -> Synthesizer: ...

    def say_instead(self, call_id: str, action: Speak, why: str) -> None: ...


class Bridge:
    """One call's open media stream."""

    def __init__(self, hub: Hub, call_id: str, ws: simple_websocket.Server, framing: Framing,
                 media_format: MediaFormat = PHONE_AUDIO) -> None:
        cfg = hub.config
        self.hub = hub
        self.call_id = call_id
        self.ws = ws
        self.framing = framing
        self.alive = True
        self._send_lock = threading.Lock()
        self._ended = threading.Event()
        #: Utterances given to the player and not yet played, by id. (Single
        #: dict operations: the loop thread must not wait for a lock here.)
        self._speaking: dict[str, Speak] = {}
        self._closed = False
        self.frames_in = 0
        #: When the caller's last word arrived (monotonic), until a reply
        #: starts; a turn counts once words were heard in it (not a cough).
        self._speech_ended: float | None = None
        self._words = False
        # Speech-to-text and the realtime model take µ-law: A-law (PCMA)
        # legs are transcoded frame by frame (what we send is µ-law either way).
        self._transcode = alaw.to_mulaw if media_format.encoding == "PCMA" else None
        #: With ``realtime.enabled``: the call's speech-to-speech session
        #: (``realtime_voice``), until the service turns out to be unreachable.
        self.voice: RealtimeVoice | None = None
        if cfg.realtime.enabled:
            self.voice = RealtimeVoice(call_id, cfg, framing=framing, send=self._send, emit=self._emit,
                                       engine=hub.engine, submit=self._submit, on_unreachable=self._fall_back,
                                       lateness=hub.lateness)
            self.transcriber: Transcriber = self.voice
        else:
            self._cascade()
        self.transcriber.start()

    def _cascade(self) -> None:
        """Speech-to-text and text-to-speech (the transcriber is started by the caller)."""
        cfg = self.hub.config
        self.player = Player(self._send, self.framing, self.hub.synthesizer.stream, on_played=self._played,
                             on_failed=self._speech_failed, name=self.call_id[:8], lateness=self.hub.lateness,
                             on_started=self._started)
        self.transcriber = Transcriber(self.call_id, url=cfg.streaming.realtimeUrl,
                                       api_key=cfg.streaming.openaiApiKey, model=cfg.streaming.sttModel,
                                       threshold=float(cfg.streaming.vadThreshold),
                                       silence_ms=int(cfg.streaming.silenceDurationMs), listener=self._heard,
                                       detection=str(cfg.streaming.turnDetection),
                                       eagerness=str(cfg.streaming.eagerness))

    def _fall_back(self, why: str, backlog: list[bytes], says: list[Speak]) -> None:
        """On the realtime session's thread: it cannot be reached, so the
        call goes on with speech-to-text and text-to-speech."""
        log.warning("call %s: %s; the call goes on with speech-to-text and text-to-speech", self.call_id, why)
        with self._send_lock:
            if self._closed:
                return
            self._cascade()
        for chunk in backlog:
            self.transcriber.send_audio(chunk)  # µ-law already
        self.transcriber.start()
        self.voice = None
        for action in says:
            self.say(action)

    def _submit(self, work: Callable[[], None]) -> None:
        if not self.hub.events.submit(self.call_id, work):
            log.warning("call %s: realtime work dropped (daemon stopping or overloaded)", self.call_id)

    @property
    def answers_itself(self) -> bool:
        """The realtime model answers the caller (no responder needed)."""
        return self.voice is not None

    def say(self, action: Speak) -> None:
        voice = self.voice
        if voice is not None:
            voice.say(action)
            return
        self._speaking[action.utterance_id] = action
        self.player.say(action.utterance_id, action.text)

    def tones(self, digits: str) -> None:
        voice = self.voice
        if voice is not None:
            voice.tones(dtmf.tones(digits))
            return
        self.player.play_audio(f"dtmf-{uuid.uuid4().hex[:12]}", dtmf.tones(digits))

    def _emit(self, type_: EventType, **fields: Any) -> None:
        event = CallEvent(type_, uuid.uuid4().hex, call_id=self.call_id, **fields)
        if not self.hub.events.submit(self.call_id, lambda: self.hub.engine.handle_event(event)):
            log.warning("call %s: %s event dropped (daemon stopping or overloaded)", self.call_id, type_.value)

    def _send(self, frame: str) -> None:
        with self._send_lock:
            if self._closed:
                return
            try:
                self.ws.send(frame)
            except (simple_websocket.ConnectionClosed, OSError):
                self.alive = False

    # -- from the carrier --

    def run(self) -> None:
        """Handle the stream's messages until the carrier stops it or the
        socket closes. The messages are handled on the loop thread, and
        only there (so in order, and without a lock the loop could wait
        for); this (the request's) thread only waits for the end."""
        self.ws.event.handler = self._drain  # the hub accepts every stream with a Doorbell
        self.hub.loop.call_soon(self._drain)  # whatever arrived before the handler was attached
        self._ended.wait()
        self.alive = False

    def _drain(self) -> None:
        """Handle every message that has arrived. The caller's audio among
        them goes to the transcriber as one piece: a read that caught up
        with a backlog (many frames) costs one send, not one per frame.
        Each send lets go of the interpreter lock and must win it back
        from whatever else is running; per frame, that made the loop fall
        further behind the busier the daemon was."""
        audio: list[bytes] = []
        try:
            while not self._ended.is_set():
                try:
                    raw = self.ws.receive(timeout=0)
                except simple_websocket.ConnectionClosed:
                    self._ended.set()
                    return
                if raw is None:
                    return
                try:
                    self._handle(raw, audio)
                except Exception:  # noqa: BLE001 - one bad message must not stop the loop
                    log.exception("call %s: media stream message failed", self.call_id)
        finally:
            if audio:
                self._forward(audio)

    def _forward(self, audio: list[bytes]) -> None:
        try:
            self.transcriber.send_audio(b"".join(audio))
        except Exception:  # noqa: BLE001 - as a bad message: the loop goes on
            log.exception("call %s: forwarding audio failed", self.call_id)
            return
        read_at = getattr(self.ws, "read_at", None)
        if read_at is not None:
            elapsed = time.monotonic() - read_at
            for _ in audio:
                self.hub.forwarding.append(elapsed)
                metrics.MEDIA_FORWARD.observe(elapsed)

    def _handle(self, raw: str | bytes, audio: list[bytes]) -> None:
        """One message; the caller's audio is added to ``audio`` (µ-law)."""
        event = self.framing.parse(raw)
        if isinstance(event, Audio):
            self.frames_in += 1
            self.hub.frames_in += 1
            audio.append(event.payload if self._transcode is None else self._transcode(event.payload))
        elif isinstance(event, Mark):
            name = event.name
            voice = self.voice
            echoed = voice.mark_echoed if voice is not None else self.player.mark_echoed
            # With the call's events, off the loop: the loop takes no lock of a call's player.
            if not self.hub.events.submit(self.call_id, lambda: echoed(name)):
                log.warning("call %s: mark %s dropped (daemon stopping or overloaded)", self.call_id, name[:40])
        elif isinstance(event, Dtmf):
            self._emit(EventType.DTMF, digits=event.digit)
        elif isinstance(event, Stop):
            log.info("call %s: media stream stopped", self.call_id)
            self.alive = False
            self._ended.set()

    # -- from the transcriber and the player --

    def _heard(self, event: SttEvent) -> None:
        if event.kind == "speech_started":
            self._speech_ended = None
            cut = self.player.interrupt()
            if cut is not None:
                self._emit(EventType.INTERRUPTED, utterance_id=cut.heard, dropped=cut.unheard)
        elif event.kind == "speech_stopped":
            self._speech_ended, self._words = event.at, False
        elif event.kind == "partial" and event.text:
            self._emit(EventType.SPEECH, transcript=event.text, is_final=False)
        elif event.kind == "final" and event.text:
            self._words = True
            self._emit(EventType.SPEECH, transcript=event.text, is_final=True)
        elif event.kind == "error":
            self._emit(EventType.ERROR, message=f"speech-to-text failed: {event.text}")

    def _started(self, utterance_id: str) -> None:
        """On the player's thread: an utterance's first frame went out."""
        ended, self._speech_ended = self._speech_ended, None
        if ended is None or not self._words:
            return
        latency_ms = (time.monotonic() - ended) * 1000

        def note() -> None:
            self.hub.engine.note_turn(self.call_id, latency_ms)

        if not self.hub.events.submit(self.call_id, note):
            log.debug("call %s: turn latency not recorded (daemon stopping or overloaded)", self.call_id)

    def _played(self, utterance_id: str) -> None:
        self._speaking.pop(utterance_id, None)
        self._emit(EventType.PLAYED, utterance_id=utterance_id)

    def _speech_failed(self, utterance_id: str, text: str, why: str) -> None:
        action = self._speaking.pop(utterance_id, None) or Speak(text, utterance_id)
        reason = f"text-to-speech failed ({why})"
        if not self.hub.events.submit(self.call_id, lambda: self.hub.say_instead(self.call_id, action, reason)):
            log.warning("call %s: utterance %s dropped (daemon stopping or overloaded)", self.call_id, utterance_id)

    def close(self) -> None:
        with self._send_lock:
            if self._closed:
                return
            self._closed = True
        self.alive = False
        self._ended.set()
        # Carriers that number their frames count what they could not put back in order.
        late, lost = getattr(self.framing, "late", 0), getattr(self.framing, "lost", 0)
        if late or lost:
            self.hub.frames_late += late
            self.hub.frames_lost += lost
            log.info("call %s: %d caller frames came too late to be used, %d never came", self.call_id, late, lost)
        voice = self.voice
        if voice is not None:
            voice.close()  # also the transcriber: it is the voice
        else:
            self.player.close()
            self.transcriber.close()
        try:
            self.ws.close()
        except (simple_websocket.ConnectionClosed, OSError):
            pass
