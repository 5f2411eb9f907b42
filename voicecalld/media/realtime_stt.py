"""Speech-to-text for one call through the OpenAI Realtime transcription
WebSocket, GA interface only
(https://platform.openai.com/docs/guides/realtime-transcription; the beta
interface, selected by an ``OpenAI-Beta`` header, has been shut down).

``Transcriber`` keeps a call transcribed for as long as it lasts:

* audio is appended as it arrives (Twilio's µ-law goes in unchanged, as
  ``audio/pcmu``), from the caller's thread, with no extra hop and without
  ever blocking it: that thread reads every call's media, so when a
  session's socket cannot take more, the audio is queued and this call's
  own supervisor thread sends it, waiting as long as it takes;
* if the socket drops, it reconnects with capped exponential backoff and
  replays the audio that arrived meanwhile (bounded), so the call keeps its
  transcript;
* before the service's session lifetime runs out it opens a fresh session
  and switches to it during a pause in speech, so no utterance is split;
* final transcripts are released in the order their audio was committed
  (``previous_item_id`` links the turns), because completions for different
  turns may arrive out of order;
* the end of the caller's speech (``speech_stopped``'s ``audio_end_ms``,
  counted in the session's audio) is mapped back to the moment that audio
  arrived from the carrier, on this process's monotonic clock, so a reply's
  turn latency can be measured from it.

Turn detection is ``server_vad`` (a fixed silence ends the turn) or
``semantic_vad`` (the model judges whether the caller has finished; its
``eagerness`` trades speed against cutting a slow speaker off).

``turn_order.TurnOrder`` is that ordering logic on its own, with no I/O.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import websocket

from .. import jsonsafe, metrics
from .turn_order import ORDER_WAIT, TurnOrder
from .wsframes import masked_text_frame

__all__ = ["SttEvent", "Transcriber", "TurnOrder", "session_update", "turn_detection"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 5.0
REPLAY_LIMIT = 8000 * 20      # bytes of µ-law kept while disconnected: 20 s
DEFAULT_LIFETIME = 55 * 60.0  # the service ends sessions at 60 minutes
ROTATE_GRACE = 120.0          # give up waiting for a pause this long after the lifetime


TIMELINE_FRAMES = 1500       # audio arrival times kept per session: 30 s of 20 ms frames


@dataclass(frozen=True)
class SttEvent:
    """What a transcriber reports: ``speech_started`` (the caller began
    talking: barge-in), ``speech_stopped`` (``at``: when the caller's last
    word arrived, monotonic seconds, if known), ``partial`` and ``final``
    transcripts, ``error``."""

    kind: str
    text: str = ""
    item_id: str = ""
    at: float | None = None


Listener = Callable[[SttEvent], None]


def turn_detection(kind: str, threshold: float, silence_ms: int, eagerness: str) -> dict[str, Any]:
    """The session's ``turn_detection``: ``semantic_vad`` with its
    eagerness, else ``server_vad`` with the energy threshold and silence."""
    if kind == "semantic_vad":
        return {"type": "semantic_vad", "eagerness": eagerness}
    return {"type": "server_vad", "threshold": threshold, "prefix_padding_ms": 300, "silence_duration_ms": silence_ms}


def session_update(model: str, threshold: float, silence_ms: int, detection: str = "server_vad",
                   eagerness: str = "auto") -> dict[str, Any]:
    """The GA ``session.update`` for a µ-law transcription session."""
    return {"type": "session.update", "session": {
        "type": "transcription",
        "audio": {"input": {
            "format": {"type": "audio/pcmu"},
            "transcription": {"model": model},
            "noise_reduction": {"type": "near_field"},
            "turn_detection": turn_detection(detection, threshold, silence_ms, eagerness),
        }},
    }}


def _append_frame(audio: bytes) -> bytes:
    """``input_audio_buffer.append`` as a whole WebSocket frame. The hot
    path (50 times a second per call): base64 needs no JSON escaping, so
    the message is assembled directly, and framed without websocket-client's
    general-purpose frame builder."""
    return masked_text_frame(b'{"type":"input_audio_buffer.append","audio":"' + base64.b64encode(audio) + b'"}')


class _Session:
    """One WebSocket session and its reader thread."""

    def __init__(self, owner: Transcriber, index: int) -> None:
        self.owner = owner
        self.index = index
        self.ws: websocket.WebSocket | None = None
        self.ready = threading.Event()
        self.ended = threading.Event()
        self.opened_at = time.monotonic()
        self.thread = threading.Thread(target=self._run, name=f"stt-{owner.name}-{index}", daemon=True)
        self.closing = False
        self.send_lock = threading.Lock()
        self.writable: select.poll | None = None  # POLLOUT on the socket, for try_append
        #: (audio sent to this session so far in ms, when that audio arrived),
        #: per append: maps the service's audio times to our clock.
        self.sent_ms = 0.0
        self.timeline: collections.deque[tuple[float, float]] = collections.deque(maxlen=TIMELINE_FRAMES)

    def connect(self) -> None:
        o = self.owner
        self.ws = websocket.create_connection(
            o.url, timeout=CONNECT_TIMEOUT, header=[f"Authorization: Bearer {o.api_key}"],
            enable_multithread=True, skip_utf8_validation=True)
        self.ws.settimeout(None)
        sock = self.ws.sock
        assert sock is not None
        self.writable = select.poll()
        self.writable.register(sock, select.POLLOUT)
        self.send(o.session_config())
        self.opened_at = time.monotonic()
        self.thread.start()

    def send(self, event: dict[str, Any]) -> None:
        assert self.ws is not None
        with self.send_lock:
            self.ws.send(json.dumps(event, separators=(",", ":")))

    def note(self, nbytes: int, arrived: float) -> None:
        """``nbytes`` of µ-law (8 bytes a millisecond) that arrived at
        ``arrived`` went to the session (under ``send_lock``)."""
        self.sent_ms += nbytes / 8
        self.timeline.append((self.sent_ms, arrived))

    def arrival(self, audio_ms: float) -> float | None:
        """When the audio at ``audio_ms`` of this session arrived; None if
        that is older than the timeline remembers."""
        timeline = list(self.timeline)
        if not timeline or audio_ms < timeline[0][0] - 1000:
            return None
        for end_ms, arrived in timeline:
            if end_ms >= audio_ms:
                return arrived - (end_ms - audio_ms) / 1000
        end_ms, arrived = timeline[-1]
        return arrived + (audio_ms - end_ms) / 1000

    def try_append(self, audio: bytes) -> bool:
        """Append only if it cannot block: False (nothing sent, the audio is
        the caller's to keep) when the socket's send buffer is nearly full or
        a blocking send is under way. A TCP socket reports writable while a
        third of its buffer is free, far more than one frame, so the send
        that follows returns at once, on a TLS socket too."""
        assert self.ws is not None and self.writable is not None
        if not self.send_lock.acquire(blocking=False):
            return False  # the supervisor is catching up with blocking sends
        try:
            if not self.writable.poll(0):
                return False
            self._write(_append_frame(audio))
            self.note(len(audio), time.monotonic())
            return True
        finally:
            self.send_lock.release()

    def append(self, chunks: list[tuple[bytes, float]]) -> None:
        """Append (audio, when it arrived) pieces, waiting for the socket as
        long as it takes."""
        with self.send_lock:
            self._write(_append_frame(b"".join(audio for audio, _ in chunks)))
            for audio, arrived in chunks:
                self.note(len(audio), arrived)

    def _write(self, frame: bytes) -> None:
        """A whole frame onto the socket, under websocket-client's own lock
        (its reader thread answers pings on the same socket)."""
        ws = self.ws
        assert ws is not None
        with ws.lock:
            if ws.sock is None:
                raise websocket.WebSocketConnectionClosedException("the socket is closed")
            ws.sock.sendall(frame)

    def close(self) -> None:
        self.closing = True
        if self.ws is not None:
            try:
                self.ws.close(timeout=1)
            except Exception:  # noqa: BLE001 - closing a broken socket may fail any way it likes
                pass

    def _run(self) -> None:
        assert self.ws is not None
        try:
            while True:
                raw = self.ws.recv()
                if not raw:
                    break
                self.owner._on_message(self, jsonsafe.loads(raw))
        except (websocket.WebSocketException, OSError, ValueError) as exc:
            if not self.closing:
                log.warning("call %s: %s session dropped: %s", self.owner.name, self.owner.what,
                            exc or type(exc).__name__)
        finally:
            self.ended.set()
            self.owner._on_session_end(self)


class Transcriber:
    #: What the session is, for log lines.
    what = "speech-to-text"

    def __init__(self, name: str, *, url: str, api_key: str, model: str, threshold: float, silence_ms: int,
                 listener: Listener, lifetime: float = DEFAULT_LIFETIME, detection: str = "server_vad",
                 eagerness: str = "auto") -> None:
        self.name = name  # the callId, for logs
        self.url, self.api_key, self.model = url, api_key, model
        self.threshold, self.silence_ms = threshold, silence_ms
        self.detection, self.eagerness = detection, eagerness
        self.listener = listener
        self.lifetime = lifetime
        self._lock = threading.Lock()
        self._active: _Session | None = None
        self._retiring: list[tuple[float, _Session]] = []  # (close at, session) after a rotation
        self._backlog: collections.deque[tuple[bytes, float]] = collections.deque()  # (audio, arrived)
        self._backlog_bytes = 0
        self._order = TurnOrder()
        self._partials: dict[str, str] = {}
        self._in_speech = False
        self._closed = False
        self._congested = False  # audio waits in _backlog until the supervisor has sent it
        self._sessions = 0
        self._supervisor = threading.Thread(target=self._supervise, name=f"stt-{name}", daemon=True)
        self._wake = threading.Event()
        self.reconnects = 0
        self.rotations = 0
        self.congestions = 0  # times the session's socket was too full to take audio at once
        self.frames_sent = 0

    # -- public --

    def start(self) -> None:
        self._supervisor.start()

    def send_audio(self, ulaw: bytes) -> None:
        """Forward caller audio (any length); never blocks, neither on a
        reconnect nor on a session that is slow to take audio."""
        with self._lock:
            session = self._active if self._active is not None and self._active.ready.is_set() else None
            if session is None or self._backlog or self._congested:
                self._buffer(ulaw)
                return
        try:
            sent = session.try_append(ulaw)
        except (websocket.WebSocketException, OSError):
            with self._lock:
                self._buffer(ulaw)  # the reader notices the drop; the audio is replayed after reconnect
            return
        if sent:
            self.frames_sent += 1
            return
        # The socket is (nearly) full: from now on audio queues up, in order,
        # until the supervisor has caught up with blocking sends.
        with self._lock:
            self._buffer(ulaw)
            self._congested = True
        self.congestions += 1
        self._wake.set()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sessions = [s for s in (self._active, *(r for _, r in self._retiring)) if s is not None]
            self._retiring.clear()
        for s in sessions:
            s.close()
        self._wake.set()
        self._supervisor.join(5)
        for s in sessions:
            if s.thread.is_alive():
                s.thread.join(5)

    def session_config(self) -> dict[str, Any]:
        """The ``session.update`` each new session is configured with."""
        return session_update(self.model, self.threshold, self.silence_ms, self.detection, self.eagerness)

    # -- internals --

    def _buffer(self, audio: bytes) -> None:
        self._backlog.append((audio, time.monotonic()))
        self._backlog_bytes += len(audio)
        while self._backlog_bytes > REPLAY_LIMIT:
            self._backlog_bytes -= len(self._backlog.popleft()[0])

    def _open(self) -> _Session:
        self._sessions += 1
        session = _Session(self, self._sessions)
        session.connect()
        if not session.ready.wait(CONNECT_TIMEOUT) or session.ended.is_set():
            session.close()
            raise ConnectionError(f"the {self.what} service did not confirm the session")
        return session

    def _flush_backlog(self, session: _Session) -> bool:
        """Replay audio buffered while disconnected, then make ``session``
        the active one. False if the session failed meanwhile."""
        while True:
            with self._lock:
                if session.ended.is_set():
                    return False  # died meanwhile: keep the backlog for the next session
                if not self._backlog:
                    self._active = session  # from now on audio goes straight to it
                    self._congested = False
                    return True
                chunks = list(self._backlog)
                self._backlog.clear()
                self._backlog_bytes = 0
            try:
                session.append(chunks)
            except (websocket.WebSocketException, OSError):
                with self._lock:
                    self._backlog.extendleft(reversed(chunks))
                    self._backlog_bytes += sum(len(audio) for audio, _ in chunks)
                session.close()
                return False

    def _supervise(self) -> None:
        """Connects, reconnects with backoff, and rotates sessions."""
        delay = BACKOFF_FIRST
        while not self._closed:
            with self._lock:
                active = self._active
            if active is None:
                try:
                    session = self._open()
                except Exception as exc:  # noqa: BLE001 - any connect failure is retried
                    log.warning("call %s: cannot open %s session (%s); retrying in %.2f s", self.name, self.what,
                                exc, delay)
                    self._wake.wait(delay)
                    self._wake.clear()
                    delay = min(BACKOFF_MAX, delay * 2)
                    continue
                if self._closed:
                    session.close()
                    return
                if self._flush_backlog(session):
                    delay = BACKOFF_FIRST
                continue
            if self._congested:
                self._catch_up(active)
                continue
            age = time.monotonic() - active.opened_at
            if age >= self.lifetime and (not self._in_speech or age >= self.lifetime + ROTATE_GRACE):
                self._rotate(active)
                continue
            self._wake.wait(max(0.05, min(1.0, self.lifetime - age)) if age < self.lifetime else 0.2)
            self._wake.clear()
            self._release_stale()

    def _catch_up(self, session: _Session) -> None:
        """Send what queued up while the session's socket was full, with
        blocking sends on this (the call's own) thread."""
        if self._flush_backlog(session):
            log.debug("call %s: speech-to-text caught up after a full socket", self.name)
        else:
            session.ended.wait(1.0)  # the reader ends; the next turn reconnects

    def _rotate(self, old: _Session) -> None:
        try:
            new = self._open()
        except Exception as exc:  # noqa: BLE001
            log.warning("call %s: cannot rotate the %s session (%s); keeping the old one", self.name, self.what,
                        exc)
            old.opened_at = time.monotonic() - self.lifetime + 30  # try again in 30 s
            return
        with self._lock:
            self._active = new
            # The old session still owes transcripts for audio it already got.
            self._retiring.append((time.monotonic() + ORDER_WAIT, old))
        self.rotations += 1
        log.info("call %s: %s session rotated", self.name, self.what)

    def _release_stale(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [s for at, s in self._retiring if at <= now]
            self._retiring = [(at, s) for at, s in self._retiring if at > now]
        for session in due:
            session.close()
            session.thread.join(2)
        for text in self._order.release(now):
            self.listener(SttEvent("final", text))

    def _on_message(self, session: _Session, event: dict[str, Any]) -> None:
        kind = event.get("type", "")
        if kind in ("session.updated", "transcription_session.updated"):
            session.ready.set()
        elif kind == "input_audio_buffer.speech_started":
            if session is self._active:
                self._in_speech = True
            self.listener(SttEvent("speech_started", item_id=str(event.get("item_id", ""))))
        elif kind == "input_audio_buffer.speech_stopped":
            if session is self._active:
                self._in_speech = False
            end_ms = event.get("audio_end_ms")
            at = None
            if isinstance(end_ms, int | float) and not isinstance(end_ms, bool):
                # server_vad's time includes the silence it waited for; the
                # caller's last word came that much earlier.
                waited = self.silence_ms if self.detection == "server_vad" else 0
                at = session.arrival(max(0.0, float(end_ms) - waited))
            self.listener(SttEvent("speech_stopped", item_id=str(event.get("item_id", "")), at=at))
        elif kind == "input_audio_buffer.committed":
            with self._lock:
                self._order.committed(str(event.get("item_id")), event.get("previous_item_id"))
        elif kind == "conversation.item.input_audio_transcription.delta":
            item = str(event.get("item_id", ""))
            text = self._partials.get(item, "") + str(event.get("delta", ""))
            self._partials[item] = text
            self.listener(SttEvent("partial", text.strip(), item))
        elif kind == "conversation.item.input_audio_transcription.completed":
            item = str(event.get("item_id", ""))
            self._partials.pop(item, None)
            with self._lock:
                ready = self._order.completed(item, str(event.get("transcript", "")).strip(), time.monotonic())
            for text in ready:
                self.listener(SttEvent("final", text, item))
        elif kind == "conversation.item.input_audio_transcription.failed":
            item = str(event.get("item_id", ""))
            self._partials.pop(item, None)
            with self._lock:
                ready = self._order.completed(item, None, time.monotonic())
            log.warning("call %s: transcription of a turn failed: %s", self.name, event.get("error"))
            for text in ready:
                self.listener(SttEvent("final", text))
        elif kind == "error":
            error = event.get("error") or {}
            log.warning("call %s: speech-to-text error %s: %s", self.name, error.get("code"), error.get("message"))
            if error.get("code") == "beta_api_shape_disabled":
                self.listener(SttEvent("error", str(error.get("message", ""))))

    def _on_session_end(self, session: _Session) -> None:
        with self._lock:
            if self._active is session:
                self._active = None
                if not self._closed:
                    self.reconnects += 1
                    metrics.STT_RECONNECTS.inc()
        session.ready.set()  # unblock anyone waiting on it
        self._wake.set()
