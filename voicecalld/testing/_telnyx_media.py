"""The fake Telnyx's media streaming: on a dial or answer with ``stream_url``
it opens the WebSocket to that URL once the call is answered, as Telnyx
does, and reports the stream's life with ``streaming.started``,
``streaming.stopped`` and ``streaming.failed`` webhooks.

The connection is a ``media_client.MediaStreamClient`` speaking Telnyx's
frames (``TelnyxWire``; the AsyncAPI page,
https://developers.telnyx.com/api-reference/websockets/stream-call-media-over-websocket):
``connected``, ``start`` (top-level ``stream_id``; ``start.call_control_id``,
``media_format``), numbered ``media`` frames at real-time pace (µ-law, or
A-law with ``encoding="PCMA"``), ``dtmf``, marks echoed once the audio
before them has played, ``clear`` honoured, ``stop``; and, on request,
frames out of order.

``behaviour`` says what Telnyx does with a requested stream: ``connect``
(the default), ``fail`` (``streaming.failed``, ``failure_reason``
``connection_failed``, and no connection) or ``silent`` (nothing at all: a
stream that never comes).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from voicecalld.media import alaw, mulaw

from ._audio_signals import silence_pcm, speech_like_pcm
from ._telnyx_calls import FakeCall
from ._wait import wait_until
from .media_client import MediaStreamClient

log = logging.getLogger(__name__)

BEHAVIOURS = ("connect", "fail", "silent")
ENCODINGS = ("PCMU", "PCMA")
#: How long the fake waits for the daemon's WebSocket handshake.
CONNECT_TIMEOUT = 5.0


def encode(pcm: bytes, encoding: str) -> bytes:
    """16-bit PCM at 8 kHz as the stream's ``encoding`` carries it."""
    return alaw.encode(pcm) if encoding == "PCMA" else mulaw.encode(pcm)


def speech_like(seconds: float, encoding: str = "PCMU", level: float = 0.5) -> bytes:
    """A voiced, syllabic signal loud enough for a VAD, in ``encoding``."""
    return encode(speech_like_pcm(seconds, 8000, level), encoding)


def silence(seconds: float, encoding: str = "PCMU") -> bytes:
    return encode(silence_pcm(seconds, 8000), encoding)


@dataclass
class TelnyxWire:
    """Telnyx media streaming's frame shapes, for ``MediaStreamClient``
    (plain values, so another process can make one: see benchmarks/media.py)."""

    call_control_id: str
    stream_id: str
    encoding: str = "PCMU"
    call_session_id: str = ""
    from_: str = ""
    to: str = ""
    client_state: str | None = None
    sequence_key: str = "sequence_number"
    silence: int = field(init=False)

    def __post_init__(self) -> None:
        self.silence = alaw.SILENCE if self.encoding == "PCMA" else mulaw.SILENCE

    @classmethod
    def of(cls, call: FakeCall, stream_id: str, encoding: str = "PCMU") -> TelnyxWire:
        return cls(call.call_control_id, stream_id, encoding, call.call_session_id, call.from_, call.to,
                   call.client_state)

    def connected(self) -> dict[str, Any]:
        return {"event": "connected", "version": "1.0.0"}

    def start(self) -> dict[str, Any]:
        return {"event": "start", "stream_id": self.stream_id, "start": {
            "user_id": "3e6f995f-85f7-4705-9741-53b116d28237", "call_control_id": self.call_control_id,
            "call_session_id": self.call_session_id, "from": self.from_, "to": self.to,
            "client_state": self.client_state,
            "media_format": {"encoding": self.encoding, "sample_rate": 8000, "channels": 1}}}

    def media(self, chunk: int, timestamp_ms: int, payload_b64: str) -> dict[str, Any]:
        return {"event": "media", "stream_id": self.stream_id, "media": {
            "track": "inbound", "chunk": str(chunk), "timestamp": str(timestamp_ms), "payload": payload_b64}}

    def dtmf(self, digit: str) -> dict[str, Any]:
        return {"event": "dtmf", "stream_id": self.stream_id, "dtmf": {"digit": digit}}

    def mark(self, name: str) -> dict[str, Any]:
        return {"event": "mark", "stream_id": self.stream_id, "mark": {"name": name}}

    def stop(self) -> dict[str, Any]:
        return {"event": "stop", "stream_id": self.stream_id,
                "stop": {"user_id": "3e6f995f-85f7-4705-9741-53b116d28237",
                         "call_control_id": self.call_control_id}}


def plain_url(url: str) -> str:
    """``url`` with ws:// for wss:// (nothing on 127.0.0.1 speaks TLS)."""
    parts = urlsplit(url)
    return urlunsplit(("ws", *parts[1:])) if parts.scheme == "wss" else url


@dataclass
class StreamRequest:
    """A dial's or answer's ``stream_*`` parameters, and what became of them."""

    call_control_id: str
    params: dict[str, Any]
    stream_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client: MediaStreamClient | None = None
    #: "requested", "open", "failed", "refused" (the handshake failed), "closed" (by the daemon), "stopped"
    state: str = "requested"
    ended: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return str(self.params.get("stream_url", ""))


class Streams:
    """Every call's media stream. ``emit(call, event_type, **extra)`` queues a
    webhook and must be called with ``lock`` held; the WebSocket work runs on
    a thread per stream, never under the lock."""

    def __init__(self, lock: threading.RLock, emit: Callable[..., None]) -> None:
        self._lock = lock
        self._emit = emit
        self.behaviour = "connect"
        self.encoding = "PCMU"
        self.out_of_order = 0
        #: Connect with ws:// when the URL says wss:// (nothing on 127.0.0.1 speaks TLS).
        self.plain_ws = True
        #: If set, called (under the lock) with each stream to open instead
        #: of opening it: the caller connects (a ``TelnyxWire.of(call,
        #: req.stream_id)`` client to ``plain_url(req.url)``), e.g. from another process.
        self.on_stream: Callable[[FakeCall, StreamRequest], None] | None = None
        self.requests: dict[str, list[StreamRequest]] = {}
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()

    def request(self, call: FakeCall, params: dict[str, Any]) -> None:
        """A dial or answer asked for a stream (under the lock)."""
        self.requests.setdefault(call.call_control_id, []).append(StreamRequest(call.call_control_id, params))

    def answered(self, call: FakeCall) -> None:
        """The call is connected: open its requested stream (under the lock)."""
        for req in self.requests.get(call.call_control_id, []):
            if req.state != "requested":
                continue
            if self.on_stream is not None:
                req.state = "external"
                self.on_stream(call, req)
            elif self.behaviour == "silent":
                req.state = "silent"
            elif self.behaviour == "fail":
                req.state = "failed"
                self._failed(call, req)
            else:
                thread = threading.Thread(target=self._run, args=(call, req, self.encoding, self.out_of_order),
                                          name="fake-telnyx-stream", daemon=True)
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
                thread.start()

    def ended(self, call: FakeCall) -> None:
        """The call is over (under the lock): its streams stop."""
        for req in self.requests.get(call.call_control_id, []):
            if req.state == "open":
                req.state = "stopped"
                self._emit(call, "streaming.stopped", stream_id=req.stream_id, stream_type="websocket")
            req.ended.set()

    def client(self, call_control_id: str) -> MediaStreamClient | None:
        """The call's open stream, if it has one."""
        with self._lock:
            for req in reversed(self.requests.get(call_control_id, [])):
                if req.state == "open" and req.client is not None and req.client.connected:
                    return req.client
        return None

    def close(self, timeout: float = 10.0) -> None:
        self._closing.set()
        with self._lock:
            for reqs in self.requests.values():
                for req in reqs:
                    req.ended.set()
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

    def _failed(self, call: FakeCall, req: StreamRequest) -> None:
        self._emit(call, "streaming.failed", failure_reason="connection_failed", stream_id=req.stream_id,
                   stream_type="websocket", stream_params={"stream_url": req.url,
                                                           "track": req.params.get("stream_track", "inbound_track")})

    def _url(self, url: str) -> str:
        return plain_url(url) if self.plain_ws else url

    def _run(self, call: FakeCall, req: StreamRequest, encoding: str, out_of_order: int) -> None:
        client = MediaStreamClient(self._url(req.url), wire=TelnyxWire.of(call, req.stream_id, encoding),
                                   out_of_order=out_of_order)
        try:
            client.connect(timeout=CONNECT_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - any failure to connect is Telnyx's streaming.failed
            log.debug("fake telnyx: stream to %s failed: %r", req.url, exc)
            with self._lock:
                req.state = "refused"
                if call.alive:
                    self._failed(call, req)
            return
        with self._lock:
            req.client = client
            if not call.alive or req.ended.is_set():
                req.state = "stopped"
            else:
                req.state = "open"
                self._emit(call, "streaming.started", stream_id=req.stream_id, stream_type="websocket")
        try:
            while not req.ended.is_set() and not self._closing.is_set():
                if client.wait_closed(0.05):
                    with self._lock:
                        # Closed by the daemon while the call goes on.
                        if req.state == "open":
                            req.state = "closed"
                            if call.alive:
                                self._emit(call, "streaming.stopped", stream_id=req.stream_id,
                                           stream_type="websocket")
                    break
        finally:
            client.stop()

    def stream_audio(self, call_control_id: str, audio: bytes) -> bool:
        """Play ``audio`` (in the stream's encoding) into the call's open
        stream in the background; False without one."""
        client = self.client(call_control_id)
        if client is None:
            return False
        client.start_streaming_in_background(audio)
        return True

    def wait_open(self, call_control_id: str, timeout: float) -> MediaStreamClient:
        return wait_until(lambda: self.client(call_control_id), timeout, f"an open media stream on {call_control_id}")
