"""The media-stream WebSocket endpoint at ``streaming.streamPath``, for any
carrier that streams call audio (``Provider.media()``, see ``framing``).

The endpoint lets the carrier authenticate the upgrade (``MediaCarrier.open``;
401 if it refuses), caps streams that have connected but not yet started
and streams in total (503 past either cap; by default every call the daemon
may have can open its stream at once), then requires a ``start`` within 5 s
naming a live call and carrying that call's token (``MediaCarrier.admit``)
in G.711 at 8 kHz mono (µ-law, the format the daemon speaks, or A-law,
which the bridge transcodes to µ-law as it arrives); anything else is
closed with 1008 (policy violation). Refusals are logged
at a bounded rate. A call whose stream is refused goes on without one (the
carrier listens its own way).

An admitted stream gets a ``Bridge`` (``bridge``): the call's audio to
speech-to-text, the call's speech from text-to-speech, marks and barge-in.

One voice per call: what a call says before its stream has started (the
opening message, the inbound greeting) waits for the stream when the
carrier expects one (``MediaCarrier.stream_expected``), and is spoken over
it in the text-to-speech voice as soon as it starts. Only if the stream
has not started within ``STREAM_WAIT`` seconds does the carrier say it its
own way (``MediaCarrier.say_instead``), as it does when text-to-speech fails.

simple-websocket does the handshake and the framing, but its reader thread
per connection is replaced (``thread_class``) by one ``ReadLoop`` thread
that reads every stream's socket, and messages are handled as they are
parsed (``event_class``, see ``Doorbell``) instead of waking the request's
thread: per-frame thread wake-ups and interpreter-lock hand-offs, not the
work, were what saturated a core at a hundred calls. Call events (DTMF,
marks, transcripts) go to the engine through a per-call serial work queue,
because the engine writes the log and may call the carrier, which must not
stall the loop.

The loop serves every call, so nothing it does may wait on one: its writes
never block (``outbox``), it handles a stream's messages alone (no lock
shared with the request's thread), and it takes no lock of a call's player
or bridge; the locks it does take (the transcriber's, the work queue's) are
never held across I/O.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time
from typing import Any

import simple_websocket
from werkzeug.wrappers import Request, Response

from ..calls import CallRecord, Speak
from ..config import stream_limits
from ..errors import NotConnected, VoiceCallError
from ..httpjson import error_response
from ..ratelog import RateLimitedLog
from ..workqueue import KeyedWorkQueue
from .bridge import Bridge, Engine
from .framing import PHONE_AUDIO, Framing, MediaCarrier, MediaEvent, MediaFormat, Other, Start, UpgradeRefused
from .loop import RECEIVE_BYTES, Doorbell, LoopReader, ReadLoop
from .tts import Synthesizer

log = logging.getLogger(__name__)

START_TIMEOUT = 5.0
POLICY_VIOLATION = 1008
#: Seconds the opening waits for the call's stream to start before the carrier says it instead.
STREAM_WAIT = 4.0
#: The caller's audio formats a stream may start with: µ-law, and A-law (transcoded by the bridge).
ACCEPTED_FORMATS = frozenset({PHONE_AUDIO, MediaFormat("PCMA")})


class StreamFinished(ConnectionError):
    """Raised after a WebSocket session: the socket belonged to the
    WebSocket, so werkzeug must not write an HTTP response on it (its dev
    server treats ConnectionError as a dropped connection)."""


class StreamHub:
    """The endpoint, and the bridges of the streams that are open."""

    def __init__(self, engine: Engine, carrier: MediaCarrier) -> None:
        self.engine = engine
        self.carrier = carrier
        self._lock = threading.Lock()
        self._pending = 0
        self._bridges: dict[str, Bridge] = {}
        #: Calls whose stream is expected, and what they said meanwhile (in order).
        self._waiting: dict[str, tuple[list[Speak], threading.Timer]] = {}
        self._closing = False
        #: Frame lateness of every call's playback (seconds), for daemon.status.
        self.lateness: collections.deque[float] = collections.deque(maxlen=20_000)
        #: Time from reading a caller frame off the socket to handing it to
        #: speech-to-text (seconds), for daemon.status.
        self.forwarding: collections.deque[float] = collections.deque(maxlen=20_000)
        self._synthesizer: Synthesizer | None = None
        self.frames_in = 0
        #: Caller frames that came too late to be put back in order, or never came (carriers that number them).
        self.frames_late = 0
        self.frames_lost = 0
        self.loop = ReadLoop()
        #: Call events from the streams, in order per call, off the loop thread.
        self.events = KeyedWorkQueue("media-events", workers=4, idle=1.0)
        self._refusals = RateLimitedLog(log)
        carrier.attach(self.speak)
        carrier.attach_tones(self.send_tones)

    @property
    def config(self) -> Any:
        return self.engine.config

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

        return {"openStreams": self.open_streams, "framesIn": self.frames_in, "framesLate": self.frames_late,
                "framesLost": self.frames_lost,
                "forwarding": {"frames": len(forward), "p50Ms": ms(forward, 0.5), "p99Ms": ms(forward, 0.99)},
                "pacing": {"frames": len(late), "latenessP50Ms": ms(late, 0.5), "latenessP99Ms": ms(late, 0.99)}}

    # -- the WSGI side --

    def handle(self, environ: dict[str, Any]) -> Response:
        request = Request(environ)
        if not self.carrier.streaming():
            return error_response(404, "media streaming is not enabled")
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return error_response(400, "expected a WebSocket upgrade")
        try:
            framing = self.carrier.open(request)
        except UpgradeRefused as exc:
            self._refusals.warning("upgrade", "media stream upgrade from %s refused: %s", request.remote_addr, exc)
            return error_response(401, str(exc))
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
                                   "streaming.maxStreams %d, streaming.maxPendingStreams %d); its call goes on "
                                   "without one", open_, starting, max_streams, max_pending)
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
            bridge = self._start(ws, framing)
            with self._lock:
                self._pending -= 1
                pending = False
                if bridge is not None:
                    old = self._bridges.pop(bridge.call_id, None)
                    self._bridges[bridge.call_id] = bridge
                    waiting = self._waiting.pop(bridge.call_id, None)
                    if waiting is not None:
                        # Said before anything else can be: under the lock speak() takes.
                        waiting[1].cancel()
                        for action in waiting[0]:
                            bridge.say(action)
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

    def _start(self, ws: simple_websocket.Server, framing: Framing) -> Bridge | None:
        """Wait for ``start``; a bridge for a live call with the right
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
            event = framing.parse(raw)
            if event is None:
                continue
            if not isinstance(event, Start):
                self._refuse(ws, f"expected start, got {_kind(event)!r}")
                return None
            if event.media_format not in ACCEPTED_FORMATS:
                self._refuse(ws, f"unsupported audio format {event.media_format}")
                return None
            call_id = self.carrier.admit(event)
            if call_id is None or self.engine.live_record(call_id) is None:
                self._refuse(ws, "unknown call or wrong stream token")
                return None
            log.info("call %s: media stream %s started", call_id, event.stream_id)
            return Bridge(self, call_id, ws, framing, event.media_format)

    def _refuse(self, ws: simple_websocket.Server, why: str) -> None:
        """Close a stream that did not start properly with 1008."""
        self._refusals.warning("start", "media stream closed: %s", why)
        try:
            ws.close(reason=POLICY_VIOLATION, message=why[:120])
        except (simple_websocket.ConnectionClosed, OSError):
            pass

    # -- the call side --

    def speak(self, record: CallRecord, action: Speak) -> bool:
        """The carrier's speaker (``MediaCarrier.attach``): speak over the
        call's stream if it has one, or hold the utterance until the stream
        the carrier expects starts (True); else leave it to the carrier
        (False)."""
        call_id = record.callId
        with self._lock:
            bridge = self._bridges.get(call_id)
            waiting = self._waiting.get(call_id)
            if waiting is not None:
                waiting[0].append(action)
                return True
        if bridge is not None:
            if not bridge.alive:
                return False
            bridge.say(action)
            return True
        if self._closing or not self.carrier.stream_expected(record):
            return False
        timer = threading.Timer(STREAM_WAIT, self._stream_late, args=(call_id,))
        timer.daemon = True
        with self._lock:
            if call_id in self._bridges or call_id in self._waiting:
                bridge, waiting = self._bridges.get(call_id), self._waiting.get(call_id)
            else:
                self._waiting[call_id] = ([action], timer)
                bridge = waiting = None
        if waiting is not None:
            waiting[0].append(action)  # pragma: no cover - another utterance raced this one
            return True
        if bridge is not None:  # pragma: no cover - the stream started meanwhile
            return self.speak(record, action)
        timer.start()
        return True

    def speaks_over_stream(self, call_id: str) -> bool:
        """Does the call speak over a media stream (open, or expected)?"""
        with self._lock:
            bridge = self._bridges.get(call_id)
            return call_id in self._waiting or (bridge is not None and bridge.alive)

    def _stream_late(self, call_id: str) -> None:
        """The stream did not start in time: the carrier says what waited."""
        with self._lock:
            waiting = self._waiting.pop(call_id, None)
        if waiting is None:
            return
        why = f"the media stream did not start within {STREAM_WAIT:g} s"
        for action in waiting[0]:
            if not self.events.submit(call_id, lambda a=action: self.say_instead(call_id, a, why)):  # type: ignore[misc]
                log.warning("call %s: utterance %s dropped (daemon stopping or overloaded)", call_id,
                            action.utterance_id)

    def answers_itself(self, call_id: str) -> bool:
        """The call's caller is answered by its realtime model, so the
        auto-responder stays out (a socket responder still gets its turns)."""
        with self._lock:
            bridge = self._bridges.get(call_id)
        return bridge is not None and bridge.answers_itself and self.config.responder != "socket"

    def send_tones(self, record: CallRecord, digits: str) -> bool:
        """The carrier's tone sender (``MediaCarrier.attach_tones``): DTMF
        in-band on the call's stream if it has one (True), else left to
        the carrier (False)."""
        bridge = self._live_bridge(record.callId)
        if bridge is None:
            return False
        bridge.tones(digits)
        return True

    def _live_bridge(self, call_id: str) -> Bridge | None:
        with self._lock:
            bridge = self._bridges.get(call_id)
        return bridge if bridge is not None and bridge.alive else None

    def say_instead(self, call_id: str, action: Speak, why: str) -> None:
        """On the call's event worker: streamed speech failed, so the
        carrier says the utterance its own way. If that fails too, it is
        only logged: the conversation goes on."""
        record = self.engine.live_record(call_id)
        if record is None:
            return  # the call is over
        log.warning("call %s: %s; the carrier says utterance %s instead", call_id, why, action.utterance_id)
        try:
            self.carrier.say_instead(record, action)
        except NotConnected:
            log.debug("call %s: ended before the carrier could take over", call_id)
        except VoiceCallError as exc:
            log.warning("call %s: utterance %s could not be said by the carrier either: %s", call_id,
                        action.utterance_id, exc.message)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            bridges = list(self._bridges.values())
            waiting, self._waiting = list(self._waiting.values()), {}
        for _, timer in waiting:
            timer.cancel()
        for bridge in bridges:
            bridge.close()
        self.events.stop()
        if self._synthesizer is not None:
            self._synthesizer.close()


def _kind(event: MediaEvent) -> str:
    """An event's name, for logs."""
    return event.event if isinstance(event, Other) else type(event).__name__.lower()
