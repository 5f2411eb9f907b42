"""Twilio's side of a Media Streams WebSocket
(https://www.twilio.com/docs/voice/media-streams/websocket-messages), for tests
and benchmarks of the daemon's stream endpoint.

``MediaStreamClient`` connects like Twilio does (with the
``X-Twilio-Signature`` the caller computed), sends ``connected`` and
``start``, then streams µ-law audio as 160-byte / 20 ms ``media`` frames
in real time. It also plays the far end of the bidirectional stream the
way Twilio does: audio the server sends is "played" at 8000 bytes/s, each
``mark`` is echoed once the audio queued before it has finished, and a
``clear`` empties the queue and returns pending marks at once.

The messages' shapes are the carrier's (``StreamWire``): Twilio's by
default (``TwilioWire``); ``voicecalld.testing._telnyx_media.TelnyxWire``
makes the same client speak Telnyx media streaming, which is how
``fake_telnyx`` streams. ``out_of_order=n`` sends every n-th media frame
after the one that follows it, as a carrier that does not keep order would.

Pacing is against ``time.monotonic()`` with frame *n* due at
``start + n * 20 ms`` (never "sleep 20 ms" in a loop), so scheduling
jitter does not accumulate into drift. Send and arrival times are recorded
so a benchmark can compute forwarding latency.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, Self

import simple_websocket
from wsproto.events import TextMessage

from voicecalld.media import mulaw

from ._audio_signals import silence_pcm, speech_like_pcm

__all__ = [
    "FRAME_BYTES",
    "FRAME_SECONDS",
    "MediaStreamClient",
    "ReceivedMark",
    "ReceivedMedia",
    "SentFrame",
    "StreamWire",
    "TwilioWire",
    "silence",
    "speech_like",
]

FRAME_BYTES = 160  # 20 ms of 8 kHz µ-law
FRAME_SECONDS = 0.020
PLAYOUT_BYTES_PER_SECOND = 8000


def speech_like(seconds: float, level: float = 0.5) -> bytes:
    """µ-law audio of a voiced, syllabic signal, loud enough for a VAD."""
    return mulaw.encode(speech_like_pcm(seconds, 8000, level))


def silence(seconds: float) -> bytes:
    """µ-law digital silence."""
    return mulaw.encode(silence_pcm(seconds, 8000))


class StreamWire(Protocol):
    """A carrier's message shapes, for the client to send."""

    #: The key numbering every message after ``connected``.
    sequence_key: str
    #: The payload byte of silence (pads a short last frame).
    silence: int

    def connected(self) -> dict[str, Any]: ...
    def start(self) -> dict[str, Any]: ...
    def media(self, chunk: int, timestamp_ms: int, payload_b64: str) -> dict[str, Any]: ...
    def dtmf(self, digit: str) -> dict[str, Any]: ...
    def mark(self, name: str) -> dict[str, Any]: ...
    def stop(self) -> dict[str, Any]: ...


@dataclass
class TwilioWire:
    """Twilio Media Streams' shapes (https://www.twilio.com/docs/voice/media-streams/websocket-messages)."""

    call_sid: str
    account_sid: str
    stream_sid: str
    custom_parameters: dict[str, str]
    sequence_key: str = "sequenceNumber"
    silence: int = mulaw.SILENCE

    def connected(self) -> dict[str, Any]:
        return {"event": "connected", "protocol": "Call", "version": "1.0.0"}

    def start(self) -> dict[str, Any]:
        return {"event": "start", "streamSid": self.stream_sid, "start": {
            "accountSid": self.account_sid, "streamSid": self.stream_sid, "callSid": self.call_sid,
            "tracks": ["inbound"], "customParameters": self.custom_parameters,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}

    def media(self, chunk: int, timestamp_ms: int, payload_b64: str) -> dict[str, Any]:
        return {"event": "media", "streamSid": self.stream_sid, "media": {
            "track": "inbound", "chunk": str(chunk), "timestamp": str(timestamp_ms), "payload": payload_b64}}

    def dtmf(self, digit: str) -> dict[str, Any]:
        return {"event": "dtmf", "streamSid": self.stream_sid, "dtmf": {"track": "inbound_track", "digit": digit}}

    def mark(self, name: str) -> dict[str, Any]:
        return {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}

    def stop(self) -> dict[str, Any]:
        return {"event": "stop", "streamSid": self.stream_sid,
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}}


@dataclass(frozen=True)
class SentFrame:
    chunk: int  # 1-based, as in the ``chunk`` field
    timestamp_ms: int  # the ``timestamp`` field
    due: float  # monotonic time the frame was scheduled for
    sent_at: float  # monotonic time it was handed to the socket


@dataclass(frozen=True)
class ReceivedMedia:
    payload: bytes
    at: float


@dataclass
class ReceivedMark:
    name: str
    at: float  # when the server's mark arrived
    play_done: float  # when the audio queued before it finishes playing
    echoed_at: float | None = None
    cleared: bool = False  # echoed early because a clear flushed the queue


@dataclass
class _Playout:
    """Twilio's outbound buffer, simulated: when queued audio stops playing."""

    ends_at: float = 0.0
    pending: list[ReceivedMark] = field(default_factory=list)

    def queue_audio(self, now: float, nbytes: int) -> None:
        self.ends_at = max(self.ends_at, now) + nbytes / PLAYOUT_BYTES_PER_SECOND


class MediaStreamClient:
    """One simulated Twilio media stream. Thread-safe; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        signature: str | None = None,
        headers: dict[str, str] | None = None,
        custom_parameters: dict[str, str] | None = None,
        call_sid: str | None = None,
        account_sid: str | None = None,
        stream_sid: str | None = None,
        wire: StreamWire | None = None,
        out_of_order: int = 0,
    ) -> None:
        self.url = url
        self.headers = dict(headers or {})
        if signature is not None:
            self.headers["X-Twilio-Signature"] = signature
        self.custom_parameters = dict(custom_parameters or {})
        self.call_sid = call_sid or "CA" + secrets.token_hex(16)
        self.account_sid = account_sid or "AC" + secrets.token_hex(16)
        self.stream_sid = stream_sid or "MZ" + secrets.token_hex(16)
        self.wire: StreamWire = wire or TwilioWire(self.call_sid, self.account_sid, self.stream_sid,
                                                   self.custom_parameters)
        self.out_of_order = out_of_order
        self._held: tuple[dict[str, Any], SentFrame] | None = None  # a frame sent after its successor

        self.sent_frames: list[SentFrame] = []
        self.sent: list[dict[str, Any]] = []  # every message sent, in order
        self.received: list[dict[str, Any]] = []  # every message received, parsed
        self.received_media: list[ReceivedMedia] = []
        self.marks: list[ReceivedMark] = []
        self.clears: list[float] = []
        self.started_at: float | None = None  # when ``start`` went out; media timestamps count from here

        self._ws: simple_websocket.Client | None = None
        self._send_lock = threading.Lock()
        self._play_lock = threading.Lock()
        self._state = threading.Condition()
        self._sequence = 0
        self._chunk = 0
        self._clock_base = 0.0
        self._clock_frames = 0
        self._playout = _Playout()
        self._stopping = threading.Event()
        self._receiver: threading.Thread | None = None
        self._background: list[threading.Thread] = []
        self._closed = threading.Event()
        self._started = threading.Event()  # connect() has sent ``start``: media may follow
        self.close_code: int | None = None

    # -- lifecycle ---------------------------------------------------------

    def connect(self, timeout: float = 5.0) -> Self:
        """Open the WebSocket and send ``connected`` and ``start``."""
        # simple-websocket has no connect timeout of its own; the handshake
        # runs on this thread, so bound it by running it on a helper.
        box: list[Any] = []

        def dial() -> None:
            try:
                box.append(simple_websocket.Client.connect(self.url, headers=self.headers))
            except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
                box.append(exc)

        dialer = threading.Thread(target=dial, name="media-client-dial", daemon=True)
        dialer.start()
        dialer.join(timeout)
        if not box:
            raise TimeoutError(f"WebSocket handshake with {self.url} took longer than {timeout} s")
        if isinstance(box[0], BaseException):
            raise box[0]
        self._ws = box[0]
        # Twilio sends each 20 ms frame as soon as it exists. Without
        # TCP_NODELAY, Nagle's algorithm holds small frames back until the
        # previous one is acknowledged (up to ~40 ms with delayed ACKs),
        # which would show up as fake forwarding latency.
        _no_delay(self._ws.sock)
        self._send(self.wire.connected(), numbered=False)
        self.started_at = time.monotonic()
        self._send(self.wire.start())
        self._receiver = threading.Thread(target=self._receive_loop, name="media-client-recv", daemon=True)
        self._receiver.start()
        self._started.set()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """End the call the way Twilio does: a ``stop`` event, then close. Joins all threads."""
        self._stopping.set()
        for thread in self._background:
            thread.join(timeout)
        if self._ws is not None and self._ws.connected:
            try:
                self._send(self.wire.stop())
            except (simple_websocket.ConnectionClosed, OSError):
                pass
        self.close(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Close without a ``stop`` event (as when the carrier side vanishes). Joins all threads."""
        self._stopping.set()
        ws = self._ws
        if ws is not None:
            if ws.connected:
                try:
                    with self._send_lock:
                        ws.close()
                except (simple_websocket.ConnectionClosed, OSError):
                    pass
            ws.thread.join(timeout)
        if self._receiver is not None and self._receiver is not threading.current_thread():
            self._receiver.join(timeout)
        for thread in self._background:
            thread.join(timeout)

    def __enter__(self) -> Self:
        return self.connect() if self._ws is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        """The stream is open and started (``connect`` has returned), so
        media may be played: another thread that sees True may ``play``."""
        return self._started.is_set() and self._ws is not None and self._ws.connected

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """Wait for the server to close the stream; ``close_code`` then says how."""
        return self._closed.wait(timeout)

    def _send(self, message: dict[str, Any], numbered: bool = True) -> None:
        if self._ws is None:
            raise RuntimeError("not connected; call connect() first")
        with self._send_lock:
            if numbered:
                message = self._numbered(message)
            self._ws.send(json.dumps(message))
            self.sent.append(message)

    def _numbered(self, message: dict[str, Any]) -> dict[str, Any]:
        """``message`` with the next sequence number (under the send lock)."""
        self._sequence += 1
        return {"event": message["event"], self.wire.sequence_key: str(self._sequence),
                **{k: v for k, v in message.items() if k != "event"}}

    def play(self, audio: bytes) -> int:
        """Stream µ-law ``audio`` in real time; blocks until sent. Returns frames sent.

        A trailing partial frame is padded with µ-law silence, as every
        Twilio frame is 160 bytes. Consecutive calls continue one schedule;
        after an idle gap the schedule restarts from now. Stops early (and
        returns the count so far) when the stream is stopped or closed.
        """
        with self._play_lock:
            sent = 0
            now = time.monotonic()
            if self._clock_base + self._clock_frames * FRAME_SECONDS < now - FRAME_SECONDS:
                self._clock_base, self._clock_frames = now, 0
            for offset in range(0, len(audio), FRAME_BYTES):
                due = self._clock_base + self._clock_frames * FRAME_SECONDS
                wait = due - time.monotonic()
                if wait > 0 and self._stopping.wait(wait):
                    break
                if self._stopping.is_set():
                    break
                if not self._send_media(audio[offset : offset + FRAME_BYTES], due):
                    break
                self._clock_frames += 1
                sent += 1
            self._release_held()
            return sent

    def burst(self, audio: bytes) -> int:
        """Send µ-law ``audio`` as frames in one socket write, as a network that held packets back
        delivers them; returns the frames sent."""
        assert self._ws is not None and self.started_at is not None, "not connected; call connect() first"
        now, data, messages = time.monotonic(), b"", list[dict[str, Any]]()
        with self._play_lock, self._send_lock:
            for index, offset in enumerate(range(0, len(audio), FRAME_BYTES)):
                message, frame = self._media_message(audio[offset:offset + FRAME_BYTES], now + index * FRAME_SECONDS)
                messages.append(self._numbered(message))
                data += self._ws.ws.send(TextMessage(data=json.dumps(messages[-1])))
                self.sent_frames.append(replace(frame, sent_at=now))
            self._ws.sock.sendall(data)
            self.sent += messages
        return len(messages)

    def _media_message(self, audio: bytes, due: float) -> tuple[dict[str, Any], SentFrame]:
        """The next media message: ``audio`` padded with µ-law silence to a 160-byte frame, due at ``due``."""
        assert self.started_at is not None
        frame = audio.ljust(FRAME_BYTES, bytes([self.wire.silence]))
        self._chunk += 1
        timestamp = max(0, round((due - self.started_at) * 1000))
        message = self.wire.media(self._chunk, timestamp, base64.b64encode(frame).decode("ascii"))
        return message, SentFrame(self._chunk, timestamp, due, 0.0)

    def _send_media(self, audio: bytes, due: float) -> bool:
        message, frame = self._media_message(audio, due)
        if self.out_of_order and frame.chunk % self.out_of_order == 0 and self._held is None:
            self._held = (message, frame)
            return True  # goes out after the next frame
        try:
            self._send(message)
        except (simple_websocket.ConnectionClosed, OSError):
            return False
        self.sent_frames.append(replace(frame, sent_at=time.monotonic()))
        return self._release_held()

    def _release_held(self) -> bool:
        if self._held is None:
            return True
        (message, frame), self._held = self._held, None
        try:
            self._send(message)
        except (simple_websocket.ConnectionClosed, OSError):
            return False
        self.sent_frames.append(replace(frame, sent_at=time.monotonic()))
        return True

    def start_streaming_in_background(self, audio: bytes) -> threading.Thread:
        """``play(audio)`` on a thread; ``stop()`` joins it."""
        thread = threading.Thread(target=self.play, args=(audio,), name="media-client-play", daemon=True)
        self._background.append(thread)
        thread.start()
        return thread

    def wait_streaming(self, timeout: float | None = None) -> bool:
        """Wait for background streams to finish; True when all have."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._background:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._background)

    def send_dtmf(self, digit: str) -> None:
        if len(digit) != 1 or digit not in "0123456789*#ABCD":
            raise ValueError(f"not a DTMF digit: {digit!r}")
        self._send(self.wire.dtmf(digit))

    @property
    def inbound_audio(self) -> bytes:
        """All µ-law audio the server has sent, concatenated."""
        with self._state:
            return b"".join(m.payload for m in self.received_media)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate()`` holds; it is re-checked whenever something arrives."""
        with self._state:
            return self._state.wait_for(predicate, timeout)

    def wait_for_mark(self, name: str, timeout: float = 5.0) -> ReceivedMark:
        """Wait until the mark ``name`` has been echoed back to the server."""

        def echoed() -> bool:
            return any(m.name == name and m.echoed_at is not None for m in self.marks)

        if not self.wait_for(echoed, timeout):
            raise TimeoutError(f"mark {name!r} was not echoed within {timeout} s")
        return next(m for m in self.marks if m.name == name and m.echoed_at is not None)

    def _receive_loop(self) -> None:
        ws = self._ws
        assert ws is not None
        try:
            while not self._stopping.is_set():
                raw = ws.receive(timeout=self._next_wakeup())
                now = time.monotonic()
                if raw is not None:
                    self._on_message(raw, now)
                self._echo_due_marks(time.monotonic())
        except simple_websocket.ConnectionClosed:
            pass
        finally:
            self.close_code = ws.close_reason
            self._closed.set()
            with self._state:
                self._state.notify_all()

    def _next_wakeup(self) -> float:
        with self._state:
            pending = [m.play_done for m in self._playout.pending]
        if not pending:
            return 0.05
        return max(0.0, min(min(pending) - time.monotonic(), 0.05))

    def _on_message(self, raw: str | bytes, now: float) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            message = {"event": "<invalid>", "raw": raw}
        if not isinstance(message, dict):
            message = {"event": "<invalid>", "raw": raw}
        event = message.get("event")
        echo_now: list[ReceivedMark] = []
        with self._state:
            self.received.append(message)
            if event == "media":
                payload = base64.b64decode(message.get("media", {}).get("payload", ""))
                self.received_media.append(ReceivedMedia(payload, now))
                self._playout.queue_audio(now, len(payload))
            elif event == "mark":
                name = str(message.get("mark", {}).get("name", ""))
                mark = ReceivedMark(name, now, max(now, self._playout.ends_at))
                self.marks.append(mark)
                self._playout.pending.append(mark)
            elif event == "clear":
                self.clears.append(now)
                self._playout.ends_at = now
                echo_now, self._playout.pending = self._playout.pending, []
                for mark in echo_now:
                    mark.cleared = True
            self._state.notify_all()
        for mark in echo_now:
            self._echo(mark)

    def _echo_due_marks(self, now: float) -> None:
        with self._state:
            due = [m for m in self._playout.pending if m.play_done <= now]
            self._playout.pending = [m for m in self._playout.pending if m.play_done > now]
        for mark in due:
            self._echo(mark)

    def _echo(self, mark: ReceivedMark) -> None:
        try:
            self._send(self.wire.mark(mark.name))
        except (simple_websocket.ConnectionClosed, OSError):
            return
        with self._state:
            mark.echoed_at = time.monotonic()
            self._state.notify_all()


def _no_delay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # not a TCP socket: nothing to tune
