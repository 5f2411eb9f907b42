"""Twilio Media Streams: the WebSocket endpoint at ``streaming.streamPath``
and, for each open stream, the bridge between the call's audio and the rest
of the daemon (protocols.md E).

The endpoint authenticates before it upgrades (``X-Twilio-Signature`` over
the exact ``wss://`` URL written into the TwiML, unless verification is
skipped), caps streams that have connected but not yet started and streams
in total (503 past either cap; by default every call the daemon may have
can open its stream at once), then requires a ``start`` message within
5 s naming a live call and carrying that call's token (constant-time
check); anything else is closed with 1008 (policy violation). Refusals are
logged at a bounded rate. A call whose stream is refused listens with
``<Gather>`` from then on (Twilio goes on to the ``<Connect>`` action).

A bridge forwards the caller's µ-law frames to a ``Transcriber`` and turns
its results into call events (partials, finals, barge-in), speaks the
call's utterances through a ``Player``, and reports DTMF. An utterance the
text-to-speech service refuses twice is said with ``<Say>`` instead: one
failed request must not end the call. When Twilio sends ``stop`` or the
socket closes, the bridge tears everything down.

simple-websocket does the handshake and the framing, but its reader thread
per connection is replaced (``thread_class``) by one ``ReadLoop`` thread
that reads every stream's socket, and messages are handled as they are
parsed (``event_class``, see ``Doorbell``) instead of waking the request's
thread: per-frame thread wake-ups and interpreter-lock hand-offs, not the
work, were what saturated a core at a hundred calls. Call events (DTMF,
marks, transcripts) go to the manager through a per-call serial work queue,
because the manager writes the log and may call the carrier, which must not
stall the loop.

The loop serves every call, so nothing it does may wait on one: its writes
never block (``outbox``), it handles a stream's messages alone (no lock
shared with the request's thread), and it takes no lock of a call's player
or bridge; the locks it does take (the transcriber's, the work queue's) are
never held across I/O.
"""

from __future__ import annotations

import base64
import binascii
import collections
import json
import logging
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import simple_websocket
from werkzeug.wrappers import Request, Response

from .. import jsonsafe
from ..calls import CallEvent, CallRecord, EventType, Speak
from ..config import stream_limits
from ..errors import NotConnected, VoiceCallError
from ..httpjson import error_response
from ..providers import twilio_signature
from ..ratelog import RateLimitedLog
from ..workqueue import KeyedWorkQueue
from .loop import RECEIVE_BYTES, Doorbell, LoopReader, ReadLoop
from .player import Player
from .realtime_stt import SttEvent, Transcriber
from .tts import Synthesizer

if TYPE_CHECKING:  # pragma: no cover
    from ..manager import CallManager
    from ..providers.twilio import TwilioProvider

log = logging.getLogger(__name__)

START_TIMEOUT = 5.0
POLICY_VIOLATION = 1008


class StreamFinished(ConnectionError):
    """Raised after a WebSocket session: the socket belonged to the
    WebSocket, so werkzeug must not write an HTTP response on it (its dev
    server treats ConnectionError as a dropped connection)."""



class StreamHub:
    """The endpoint, and the bridges of the streams that are open."""

    def __init__(self, manager: CallManager, provider: TwilioProvider) -> None:
        self.manager = manager
        self.provider = provider
        self._lock = threading.Lock()
        self._pending = 0
        self._bridges: dict[str, Bridge] = {}
        self._closing = False
        #: Frame lateness of every call's playback (seconds), for daemon.status.
        self.lateness: collections.deque[float] = collections.deque(maxlen=20_000)
        #: Time from reading a caller frame off the socket to handing it to
        #: speech-to-text (seconds), for daemon.status.
        self.forwarding: collections.deque[float] = collections.deque(maxlen=20_000)
        self._synthesizer: Synthesizer | None = None
        self.frames_in = 0
        self.loop = ReadLoop()
        #: Call events from the streams, in order per call, off the loop thread.
        self.events = KeyedWorkQueue("media-events", workers=4, idle=1.0)
        self._refusals = RateLimitedLog(log)
        provider.stream_speaker = self.speak

    @property
    def config(self) -> Any:
        return self.manager.config

    @property
    def health(self) -> str | None:
        """A problem for /healthz, or None."""
        return self.loop.health

    def limits(self) -> tuple[int, int]:
        """(streams open at once, streams connected but not started)."""
        return stream_limits(self.config)

    @property
    def open_streams(self) -> int:
        with self._lock:
            return len(self._bridges)

    @property
    def synthesizer(self) -> Synthesizer:
        """One text-to-speech client (one pooled HTTP session) for all streams."""
        cfg = self.config
        with self._lock:
            if self._synthesizer is None:
                self._synthesizer = Synthesizer(cfg.tts.baseUrl, cfg.streaming.openaiApiKey, model=cfg.tts.model,
                                                voice=cfg.tts.voice)
            return self._synthesizer

    def stats(self) -> dict[str, Any]:
        """For daemon.status: open streams and how punctually audio is paced."""
        late = sorted(self.lateness)
        forward = sorted(self.forwarding)

        def ms(values: list[float], q: float) -> float | None:
            return round(values[min(len(values) - 1, int(q * len(values)))] * 1e3, 3) if values else None

        return {"openStreams": self.open_streams, "framesIn": self.frames_in,
                "forwarding": {"frames": len(forward), "p50Ms": ms(forward, 0.5), "p99Ms": ms(forward, 0.99)},
                "pacing": {"frames": len(late), "latenessP50Ms": ms(late, 0.5), "latenessP99Ms": ms(late, 0.99)}}

    # -- the WSGI side --

    def handle(self, environ: dict[str, Any]) -> Response:
        request = Request(environ)
        if not self.provider.streaming():
            return error_response(404, "media streaming is not enabled")
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return error_response(400, "expected a WebSocket upgrade")
        if not self._signed(request):
            self._refusals.warning("signature", "media stream upgrade from %s with a missing or wrong "
                                   "X-Twilio-Signature refused", request.remote_addr)
            return error_response(401, "invalid X-Twilio-Signature")
        max_streams, max_pending = self.limits()
        with self._lock:
            if self._closing:
                return error_response(503, "shutting down")
            open_, starting = len(self._bridges), self._pending
            busy = starting >= max_pending or open_ + starting >= max_streams
            if not busy:
                self._pending += 1
        if busy:
            self._refusals.warning("limit", "media stream refused: %d open, %d starting (limits: "
                                   "streaming.maxStreams %d, streaming.maxPendingStreams %d); its call listens "
                                   "with <Gather> instead", open_, starting, max_streams, max_pending)
            return error_response(503, "too many media streams")
        pending = True
        sock = environ.get("werkzeug.socket")
        if sock is not None:
            # Paced 20 ms frames are small: with Nagle's algorithm on, each one
            # could wait for the previous one's (delayed) ACK, up to 40 ms.
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        try:
            ws = simple_websocket.Server.accept(environ, receive_bytes=RECEIVE_BYTES, thread_class=LoopReader,
                                                event_class=Doorbell)
        except Exception:  # noqa: BLE001 - a broken handshake is the client's problem, not ours
            with self._lock:
                self._pending -= 1
            return error_response(400, "WebSocket handshake failed")
        over = self.loop.add_websocket(ws)
        try:
            bridge = self._start(ws)
            with self._lock:
                self._pending -= 1
                pending = False
                if bridge is not None:
                    old = self._bridges.pop(bridge.call_id, None)
                    self._bridges[bridge.call_id] = bridge
                else:
                    old = None
            if old is not None:
                old.close()  # a second stream for the call replaces the first
            if bridge is not None:
                try:
                    bridge.run()
                finally:
                    with self._lock:
                        if self._bridges.get(bridge.call_id) is bridge:
                            del self._bridges[bridge.call_id]
                    bridge.close()
        finally:
            if pending:
                with self._lock:
                    self._pending -= 1
            self.loop.finish_websocket(ws, over)
        raise StreamFinished("media stream finished")

    def _signed(self, request: Request) -> bool:
        if self.config.skipSignatureVerification:
            return True
        url = self.provider.stream_url
        token = self.config.twilio.authToken
        signature = request.headers.get("X-Twilio-Signature")
        return url is not None and twilio_signature.validate(token, url, signature, {})

    def _start(self, ws: simple_websocket.Server) -> Bridge | None:
        """Wait for ``start``; a bridge for a known call with the right
        token, or None after closing the socket with 1008."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            try:
                raw = ws.receive(timeout=max(0.0, remaining)) if remaining > 0 else None
            except simple_websocket.ConnectionClosed:
                return None
            if raw is None:
                self._refuse(ws, "no start message within 5 s")
                return None
            message = _parse(raw)
            if message is None or message.get("event") == "connected":
                continue
            if message.get("event") != "start":
                self._refuse(ws, f"expected start, got {str(message.get('event'))[:40]!r}")
                return None
            start = _obj(message.get("start"))
            params = _obj(start.get("customParameters"))
            call_id, token = params.get("callId"), params.get("token")
            if not isinstance(call_id, str) or not self.provider.check_stream_token(call_id, str(token)) \
                    or self.manager.live_record(call_id) is None:
                self._refuse(ws, "unknown call or wrong stream token")
                return None
            stream_sid = str(message.get("streamSid") or start.get("streamSid") or "")
            log.info("call %s: media stream %s started", call_id, stream_sid)
            return Bridge(self, call_id, ws, stream_sid)

    def _refuse(self, ws: simple_websocket.Server, why: str) -> None:
        """Close a stream that did not start properly with 1008."""
        self._refusals.warning("start", "media stream closed: %s", why)
        try:
            ws.close(reason=POLICY_VIOLATION, message=why[:120])
        except (simple_websocket.ConnectionClosed, OSError):
            pass

    # -- the call side --

    def speak(self, record: CallRecord, action: Speak) -> bool:
        """The provider's ``stream_speaker``: speak over the call's stream
        if it has one (True), else let the provider use ``<Say>`` (False)."""
        with self._lock:
            bridge = self._bridges.get(record.callId)
        if bridge is None or not bridge.alive:
            return False
        bridge.say(action)
        return True

    def say_instead(self, call_id: str, action: Speak, why: str) -> None:
        """On the call's event worker: streamed speech failed, so the
        carrier says the utterance (``<Say>``). If that fails too, it is
        only logged: the conversation goes on."""
        record = self.manager.live_record(call_id)
        if record is None:
            return  # the call is over
        log.warning("call %s: text-to-speech failed (%s); saying utterance %s with <Say> instead", call_id, why,
                    action.utterance_id)
        try:
            self.provider.speak_with_say(record, action)
        except NotConnected:
            log.debug("call %s: ended before <Say> could take over", call_id)
        except VoiceCallError as exc:
            log.warning("call %s: utterance %s could not be said with <Say> either: %s", call_id,
                        action.utterance_id, exc.message)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            bridges = list(self._bridges.values())
        for bridge in bridges:
            bridge.close()
        self.events.stop()
        if self._synthesizer is not None:
            self._synthesizer.close()


class Bridge:
    """One call's open media stream."""

    def __init__(self, hub: StreamHub, call_id: str, ws: simple_websocket.Server, stream_sid: str) -> None:
        cfg = hub.config
        self.hub = hub
        self.call_id = call_id
        self.ws = ws
        self.stream_sid = stream_sid
        self.alive = True
        self._send_lock = threading.Lock()
        self._ended = threading.Event()
        #: Utterances given to the player and not yet played, by id. (Single
        #: dict operations: the loop thread must not wait for a lock here.)
        self._speaking: dict[str, Speak] = {}
        self._closed = False
        self.frames_in = 0
        self.player = Player(self._send, stream_sid, hub.synthesizer.stream, on_played=self._played,
                             on_failed=self._speech_failed, name=call_id[:8], lateness=hub.lateness)
        self.transcriber = Transcriber(call_id, url=cfg.streaming.realtimeUrl, api_key=cfg.streaming.openaiApiKey,
                                       model=cfg.streaming.sttModel, threshold=float(cfg.streaming.vadThreshold),
                                       silence_ms=int(cfg.streaming.silenceDurationMs), listener=self._heard)
        self.transcriber.start()

    def say(self, action: Speak) -> None:
        self._speaking[action.utterance_id] = action
        self.player.say(action.utterance_id, action.text)

    def _emit(self, type_: EventType, **fields: Any) -> None:
        event = CallEvent(type_, uuid.uuid4().hex, call_id=self.call_id, **fields)
        if not self.hub.events.submit(self.call_id, lambda: self.hub.manager.handle_event(event)):
            log.warning("call %s: %s event dropped (daemon stopping or overloaded)", self.call_id, type_.value)

    def _send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":"))
        with self._send_lock:
            if self._closed:
                return
            try:
                self.ws.send(data)
            except (simple_websocket.ConnectionClosed, OSError):
                self.alive = False

    # -- from Twilio --

    def run(self) -> None:
        """Handle the stream's messages until ``stop`` or the socket
        closes. The messages are handled on the loop thread, and only
        there (so in order, and without a lock the loop could wait for);
        this (the request's) thread only waits for the end."""
        self.ws.event.handler = self._drain  # the hub accepts every stream with a Doorbell
        self.hub.loop.call_soon(self._drain)  # whatever arrived before the handler was attached
        self._ended.wait()
        self.alive = False

    def _drain(self) -> None:
        while not self._ended.is_set():
            try:
                raw = self.ws.receive(timeout=0)
            except simple_websocket.ConnectionClosed:
                self._ended.set()
                return
            if raw is None:
                return
            try:
                self._handle(raw)
            except Exception:  # noqa: BLE001 - one bad message must not stop the loop
                log.exception("call %s: media stream message failed", self.call_id)

    def _handle(self, raw: Any) -> None:
        message = _parse(raw)
        if message is None:
            return
        event = message.get("event")
        if event == "media":
            media = _obj(message.get("media"))
            if media.get("track", "inbound") in ("inbound", "inbound_track"):
                try:
                    audio = base64.b64decode(media.get("payload") or "", validate=True)
                except (binascii.Error, ValueError):
                    return
                self.frames_in += 1
                self.hub.frames_in += 1
                self.transcriber.send_audio(audio)
                read_at = getattr(self.ws, "read_at", None)
                if read_at is not None:
                    self.hub.forwarding.append(time.monotonic() - read_at)
        elif event == "mark":
            name = str(_obj(message.get("mark")).get("name", ""))
            # With the call's events, off the loop: the loop takes no lock of a call's player.
            if not self.hub.events.submit(self.call_id, lambda: self.player.mark_echoed(name)):
                log.warning("call %s: mark %s dropped (daemon stopping or overloaded)", self.call_id, name[:40])
        elif event == "dtmf":
            dtmf = _obj(message.get("dtmf"))
            digit = str(dtmf.get("digit", ""))
            if digit:
                self._emit(EventType.DTMF, digits=digit)
        elif event == "stop":
            log.info("call %s: media stream stopped", self.call_id)
            self.alive = False
            self._ended.set()

    # -- from the transcriber and the player --

    def _heard(self, event: SttEvent) -> None:
        if event.kind == "speech_started":
            if self.player.interrupt():
                self._emit(EventType.INTERRUPTED)
        elif event.kind == "partial" and event.text:
            self._emit(EventType.SPEECH, transcript=event.text, is_final=False)
        elif event.kind == "final" and event.text:
            self._emit(EventType.SPEECH, transcript=event.text, is_final=True)
        elif event.kind == "error":
            self._emit(EventType.ERROR, message=f"speech-to-text failed: {event.text}")

    def _played(self, utterance_id: str) -> None:
        self._speaking.pop(utterance_id, None)
        self._emit(EventType.PLAYED, utterance_id=utterance_id)

    def _speech_failed(self, utterance_id: str, text: str, why: str) -> None:
        action = self._speaking.pop(utterance_id, None) or Speak(text, utterance_id)
        if not self.hub.events.submit(self.call_id, lambda: self.hub.say_instead(self.call_id, action, why)):
            log.warning("call %s: utterance %s dropped (daemon stopping or overloaded)", self.call_id, utterance_id)

    def close(self) -> None:
        with self._send_lock:
            if self._closed:
                return
            self._closed = True
        self.alive = False
        self._ended.set()
        self.player.close()
        self.transcriber.close()
        try:
            self.ws.close()
        except (simple_websocket.ConnectionClosed, OSError):
            pass


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _parse(raw: Any) -> dict[str, Any] | None:
    try:
        message = jsonsafe.loads(raw)
    except (TypeError, ValueError):
        return None
    return message if isinstance(message, dict) else None
