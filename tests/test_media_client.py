"""MediaStreamClient against a tiny werkzeug + simple-websocket server that
plays the daemon's side: it records what arrives and sends media/mark/clear."""

from __future__ import annotations

import base64
import itertools
import json
import queue
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import simple_websocket
from werkzeug.wrappers import Request, Response

from voicecalld.media import mulaw
from voicecalld.testing._http import BackgroundServer, serve_websocket
from voicecalld.testing._openai_vad import EnergyVad
from voicecalld.testing._wait import wait_until
from voicecalld.testing.media_client import (
    FRAME_BYTES,
    MediaStreamClient,
    silence,
    speech_like,
)

_CLOSE = object()


class StreamServer:
    """The server end of one media stream, driven by the test."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, Any], float]] = []
        self.headers: dict[str, str] = {}
        self.changed = threading.Condition()
        self.outbox: queue.Queue[Any] = queue.Queue()
        self.closed = threading.Event()
        self.http = BackgroundServer(self.app)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.http.port}/voice/stream"

    def app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.path != "/voice/stream":
            return Response("not found", status=404)(environ, start_response)
        self.headers = dict(request.headers.items())
        try:
            serve_websocket(environ, self.session)
        finally:
            self.closed.set()

    def session(self, ws: simple_websocket.Server) -> None:
        while True:
            try:
                raw = ws.receive(timeout=0.002)
            except simple_websocket.ConnectionClosed:
                return
            if raw is not None:
                with self.changed:
                    self.received.append((json.loads(raw), time.monotonic()))
                    self.changed.notify_all()
            while not self.outbox.empty():
                item = self.outbox.get()
                if item is _CLOSE:
                    ws.close(1008, "unknown call")
                    return
                ws.send(json.dumps(item))

    def send(self, message: dict[str, Any]) -> float:
        self.outbox.put(message)
        return time.monotonic()

    def events(self, kind: str) -> list[tuple[dict[str, Any], float]]:
        with self.changed:
            return [(m, t) for m, t in self.received if m.get("event") == kind]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 5.0) -> list[tuple[dict[str, Any], float]]:
        with self.changed:
            ok = self.changed.wait_for(lambda: len(self.events_unlocked(kind)) >= count, timeout)
            assert ok, f"expected {count} {kind!r} event(s), got {len(self.events_unlocked(kind))}"
            return self.events_unlocked(kind)

    def events_unlocked(self, kind: str) -> list[tuple[dict[str, Any], float]]:
        return [(m, t) for m, t in self.received if m.get("event") == kind]


@pytest.fixture
def server() -> Iterator[StreamServer]:
    before = set(threading.enumerate())
    srv = StreamServer()
    srv.http.start()
    yield srv
    srv.outbox.put(_CLOSE)
    srv.closed.wait(2)
    assert srv.http.stop() == []
    # A joined thread may still be winding down for a moment: wait for it, bounded.
    wait_until(lambda: not [t for t in threading.enumerate() if t not in before and t.is_alive()], 5,
               "the stream's threads to end",
               context=lambda: repr([t for t in threading.enumerate() if t not in before and t.is_alive()]))


@pytest.fixture
def client(server: StreamServer) -> Iterator[MediaStreamClient]:
    stream = MediaStreamClient(
        server.url,
        signature="c2lnbmF0dXJl",
        custom_parameters={"token": "tok-123", "callId": "call-1"},
        call_sid="CA" + "0" * 32,
    )
    stream.connect()
    yield stream
    stream.stop()


def media_message(audio: bytes, stream_sid: str) -> dict[str, Any]:
    return {"event": "media", "streamSid": stream_sid, "media": {"payload": base64.b64encode(audio).decode()}}


def test_handshake_connected_then_start(server: StreamServer, client: MediaStreamClient) -> None:
    connected, start = (m for m, _ in server.wait_for("connected") + server.wait_for("start"))
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert server.received[0][0]["event"] == "connected"
    assert server.headers["X-Twilio-Signature"] == "c2lnbmF0dXJl"
    assert start["sequenceNumber"] == "1"
    assert re.fullmatch(r"MZ[0-9a-f]{32}", start["streamSid"])
    assert start["start"]["streamSid"] == start["streamSid"] == client.stream_sid
    assert start["start"]["callSid"] == "CA" + "0" * 32
    assert re.fullmatch(r"AC[0-9a-f]{32}", start["start"]["accountSid"])
    assert start["start"]["customParameters"] == {"token": "tok-123", "callId": "call-1"}
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert start["start"]["tracks"] == ["inbound"]


def test_media_frames_paced_without_drift(server: StreamServer, client: MediaStreamClient) -> None:
    audio = speech_like(1.0)
    assert client.play(audio) == 50
    frames = server.wait_for("media", 50)
    messages = [m for m, _ in frames]
    # Wire format: strings for the numbers, 160-byte payloads, order kept.
    assert [m["sequenceNumber"] for m in messages] == [str(n) for n in range(2, 52)]
    assert [m["media"]["chunk"] for m in messages] == [str(n) for n in range(1, 51)]
    assert all(m["media"]["track"] == "inbound" and m["streamSid"] == client.stream_sid for m in messages)
    stamps = [int(m["media"]["timestamp"]) for m in messages]
    assert all(19 <= b - a <= 21 for a, b in itertools.pairwise(stamps))
    payloads = [base64.b64decode(m["media"]["payload"]) for m in messages]
    assert all(len(p) == FRAME_BYTES for p in payloads)
    assert b"".join(payloads) == audio

    # Pacing: each frame is scheduled at its absolute slot (start + n x 20 ms),
    # so lateness cannot add up into drift, and none leaves before its slot.
    # (How late frames leave is a speed figure: benchmarks/media_client.py.)
    sent = client.sent_frames
    assert [f.chunk for f in sent] == list(range(1, 51))
    assert all(f.due == pytest.approx(sent[0].due + i * 0.020, abs=1e-9) for i, f in enumerate(sent))
    assert all(f.sent_at >= f.due for f in sent)
    assert [f.timestamp_ms for f in sent] == stamps
    arrivals = [t for _, t in frames]
    assert arrivals == sorted(arrivals) and arrivals[0] >= sent[0].due


def test_partial_frame_is_padded_with_silence(server: StreamServer, client: MediaStreamClient) -> None:
    assert client.play(b"\x10" * 200) == 2
    (_, _), (last, _) = server.wait_for("media", 2)
    payload = base64.b64decode(last["media"]["payload"])
    assert payload == b"\x10" * 40 + bytes([mulaw.SILENCE]) * 120


def test_mark_echoed_after_queued_audio_plays(server: StreamServer, client: MediaStreamClient) -> None:
    server.wait_for("start")
    sent_at = server.send(media_message(silence(0.4), client.stream_sid))
    server.send({"event": "mark", "streamSid": client.stream_sid, "mark": {"name": "utt-1"}})
    server.send({"event": "mark", "streamSid": client.stream_sid, "mark": {"name": "utt-2"}})
    (echo1, t1), (echo2, t2) = server.wait_for("mark", 2)
    assert echo1["mark"] == {"name": "utt-1"} and echo2["mark"] == {"name": "utt-2"}
    assert echo1["streamSid"] == client.stream_sid and echo1["sequenceNumber"].isdigit()
    assert int(echo1["sequenceNumber"]) < int(echo2["sequenceNumber"])
    # 3200 bytes at 8000 bytes/s: a mark is due when the audio queued before
    # it has played, 0.4 s after that audio arrived, and is echoed then, never before.
    (audio,) = client.received_media
    mark1 = client.wait_for_mark("utt-1")
    mark2 = client.wait_for_mark("utt-2")
    for mark in (mark1, mark2):
        assert mark.play_done == pytest.approx(max(mark.at, audio.at + 0.4))
    assert mark1.echoed_at is not None and mark1.echoed_at >= mark1.play_done
    assert t1 - sent_at >= 0.4 and t2 >= t1
    assert not mark1.cleared and not mark2.cleared
    assert len(client.inbound_audio) == 3200


def test_mark_without_audio_is_echoed_at_once(server: StreamServer, client: MediaStreamClient) -> None:
    server.wait_for("start")
    server.send({"event": "mark", "streamSid": client.stream_sid, "mark": {"name": "now"}})
    ((echo, _),) = server.wait_for("mark")
    assert echo["mark"] == {"name": "now"}
    mark = client.wait_for_mark("now")
    # Nothing queued: due the moment it arrived, not after any playout.
    assert mark.play_done == mark.at and not mark.cleared
    assert client.received_media == []


def test_clear_returns_pending_marks_immediately(server: StreamServer, client: MediaStreamClient) -> None:
    server.wait_for("start")
    # Ten seconds queued: the clear comes long before it could have played out.
    server.send(media_message(silence(10.0), client.stream_sid))
    server.send({"event": "mark", "streamSid": client.stream_sid, "mark": {"name": "long"}})
    assert client.wait_for(lambda: len(client.marks) == 1)
    long = client.marks[0]
    assert long.play_done == pytest.approx(max(long.at, client.received_media[0].at + 10.0))
    server.send({"event": "clear", "streamSid": client.stream_sid})
    ((echo, _),) = server.wait_for("mark")
    assert echo["mark"]["name"] == "long"
    client.wait_for_mark("long")
    # ``cleared``: the echo went out because the clear emptied the queue (a
    # mark already echoed before the clear would not be pending to clear).
    assert long.cleared and len(client.clears) == 1
    assert long.echoed_at is not None and long.echoed_at >= client.clears[0]

    # After a clear the playout queue is empty: new audio plays from its
    # arrival, not after what was left of the cleared 10 s.
    sent_at = server.send(media_message(silence(0.2), client.stream_sid))
    server.send({"event": "mark", "streamSid": client.stream_sid, "mark": {"name": "next"}})
    (_, _), (echo, echoed) = server.wait_for("mark", 2)
    assert echo["mark"]["name"] == "next"
    following = client.wait_for_mark("next")
    assert following.play_done == pytest.approx(max(following.at, client.received_media[1].at + 0.2))
    assert not following.cleared and echoed - sent_at >= 0.2


def test_dtmf_and_stop(server: StreamServer) -> None:
    stream = MediaStreamClient(server.url, call_sid="CA" + "1" * 32)
    stream.connect()
    stream.send_dtmf("5")
    with pytest.raises(ValueError):
        stream.send_dtmf("55")
    stream.stop()
    ((dtmf, _),) = server.wait_for("dtmf")
    assert dtmf["dtmf"] == {"track": "inbound_track", "digit": "5"}
    ((stop, _),) = server.wait_for("stop")
    assert stop["stop"]["callSid"] == "CA" + "1" * 32
    assert stop["stop"]["accountSid"] == stream.account_sid
    numbers = [int(m["sequenceNumber"]) for m, _ in server.received if "sequenceNumber" in m]
    assert numbers == list(range(1, len(numbers) + 1))
    assert server.closed.wait(2)


def test_background_stream_ends_when_server_closes(server: StreamServer) -> None:
    stream = MediaStreamClient(server.url)
    stream.connect()
    try:
        thread = stream.start_streaming_in_background(speech_like(5.0))
        server.wait_for("media", 5)
        server.outbox.put(_CLOSE)
        assert stream.wait_closed(2)
        assert stream.close_code == 1008
        assert stream.wait_streaming(2)
        assert not thread.is_alive()
        assert len(stream.sent_frames) < 100
    finally:
        stream.stop()


def test_signal_helpers() -> None:
    assert silence(0.5) == bytes([mulaw.SILENCE]) * 4000
    voiced = speech_like(1.0)
    assert len(voiced) == 8000
    # The fake VAD (default threshold) hears exactly one utterance in it.
    vad = EnergyVad(8000, threshold=0.5, silence_duration_ms=300, prefix_padding_ms=0)
    events = vad.feed(mulaw.decode(silence(0.2) + voiced + silence(0.5)))
    assert [(e.kind, e.ms) for e in events] == [("start", 200), ("stop", 1500)]
