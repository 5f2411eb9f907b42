"""The Realtime speech-to-text client against the fake OpenAI server."""

from __future__ import annotations

import threading
import time

import pytest

from voicecalld.media.realtime_stt import SttEvent, Transcriber, TurnOrder, session_update
from voicecalld.testing.fake_openai import FakeOpenAI
from voicecalld.testing.media_client import silence, speech_like

FRAME = 160


# --- ordering, no I/O -------------------------------------------------------------------------------


def test_turns_are_released_in_commit_order() -> None:
    order = TurnOrder()
    order.committed("a", None)
    order.committed("b", "a")
    order.committed("c", "b")
    assert order.completed("b", "second", 0) == []
    assert order.completed("c", "third", 0) == []
    assert order.completed("a", "first", 0) == ["first", "second", "third"]
    assert order.pending == 0


def test_commit_events_out_of_order_are_linked_by_previous_item() -> None:
    order = TurnOrder()
    order.committed("a", None)
    order.committed("c", "b")  # c's commit seen before b's: appended for now
    order.committed("b", "a")  # b slots in after a, before c
    assert order.completed("c", "3", 0) == []
    assert order.completed("b", "2", 0) == []
    assert order.completed("a", "1", 0) == ["1", "2", "3"]


def test_failed_and_empty_turns_do_not_block() -> None:
    order = TurnOrder()
    for item, prev in (("a", None), ("b", "a"), ("c", "b")):
        order.committed(item, prev)
    assert order.completed("a", None, 0) == []    # failed: nothing to say, but not blocking
    assert order.completed("c", "late", 0) == []
    assert order.completed("b", "", 0) == ["late"]


def test_a_lost_transcript_stops_blocking_after_a_while() -> None:
    order = TurnOrder()
    order.committed("a", None)
    order.committed("b", "a")
    assert order.completed("b", "two", 100.0) == []
    assert order.release(105.0) == []
    assert order.release(111.0) == ["two"]


def test_session_update_is_the_ga_shape() -> None:
    event = session_update("gpt-4o-transcribe", 0.4, 700)
    session = event["session"]
    assert event["type"] == "session.update" and session["type"] == "transcription"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["input"]["turn_detection"] == {
        "type": "server_vad", "threshold": 0.4, "prefix_padding_ms": 300, "silence_duration_ms": 700}


# --- against the fake ---------------------------------------------------------------------------------


@pytest.fixture
def fake():
    with FakeOpenAI(api_key="sk-test") as server:
        yield server


class Collector:
    def __init__(self) -> None:
        self.events: list[SttEvent] = []
        self.lock = threading.Lock()

    def __call__(self, event: SttEvent) -> None:
        with self.lock:
            self.events.append(event)

    def finals(self) -> list[str]:
        with self.lock:
            return [e.text for e in self.events if e.kind == "final"]

    def kinds(self) -> list[str]:
        with self.lock:
            return [e.kind for e in self.events]


def wait(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def transcriber(fake: FakeOpenAI, sink: Collector, **kw) -> Transcriber:
    t = Transcriber("test-call", url=fake.realtime_url, api_key="sk-test", model="gpt-4o-transcribe",
                    threshold=0.5, silence_ms=300, listener=sink, **kw)
    t.start()
    return t


def feed(t: Transcriber, audio: bytes, pace: float = 0.0) -> int:
    frames = 0
    for i in range(0, len(audio), FRAME):
        t.send_audio(audio[i:i + FRAME])
        frames += 1
        if pace:
            time.sleep(pace)
    return frames


def test_speech_becomes_partials_then_a_final(fake) -> None:
    fake.transcripts.put("hello there friend")
    sink = Collector()
    t = transcriber(fake, sink)
    try:
        session = fake.wait_for_session(0)
        feed(t, silence(0.2) + speech_like(0.8) + silence(0.8))
        wait(lambda: sink.finals() == ["hello there friend"], what="the final transcript")
        kinds = sink.kinds()
        assert kinds.index("speech_started") < kinds.index("partial") < kinds.index("final")
        assert "OpenAI-Beta" not in session.headers and session.headers.get("Authorization") == "Bearer sk-test"
    finally:
        t.close()


def numbered(audio: bytes) -> list[bytes]:
    """``audio`` in frames, each frame's first two samples replaced by its
    number in near-silent µ-law codes (0xF0-0xFF, under 0.1 % of full
    scale), so the test can tell which frames arrived."""
    frames = [audio[i:i + FRAME] for i in range(0, len(audio), FRAME)]
    assert len(frames) <= 256 and all(len(f) == FRAME for f in frames)
    return [bytes([0xF0 | n >> 4, 0xF0 | n & 15]) + f[2:] for n, f in enumerate(frames)]


def frame_numbers(audio: bytes) -> list[int]:
    return [(audio[i] & 15) << 4 | audio[i + 1] & 15 for i in range(0, len(audio), FRAME)]


def test_reconnects_after_a_drop_and_loses_no_audio(fake) -> None:
    fake.transcripts.put("before the drop")
    fake.transcripts.put("after the drop")
    sink = Collector()
    t = transcriber(fake, sink)
    try:
        fake.wait_for_session(0)
        audio = silence(0.2) + speech_like(0.6) + silence(0.8)
        fake.drop_realtime_after(60)
        frames = numbered(audio + audio)
        known = []  # per frame: had the transcriber seen the drop when the frame was given to it?
        for frame in frames:
            known.append(t.reconnects > 0)
            t.send_audio(frame)
            time.sleep(0.002)
        wait(lambda: len(sink.finals()) == 2, what="both transcripts")
        assert sink.finals() == ["before the drop", "after the drop"]
        assert t.reconnects == 1 and len(fake.realtime_sessions) == 2
        # The second turn ends (its final comes) before the trailing silence is through.
        wait(lambda: len(fake.realtime_sessions[1].audio_bytes) % FRAME == 0 and
             frame_numbers(bytes(fake.realtime_sessions[1].audio_bytes))[-1:] == [len(frames) - 1],
             what="the last frame")
        first, second = (frame_numbers(bytes(s.audio_bytes)) for s in fake.realtime_sessions)
        # The first session got the audio up to the cut, the second all the
        # audio from some frame on: in order, each frame once.
        assert first == list(range(len(first))) and second
        resumed = second[0]
        assert second == list(range(resumed, len(frames)))
        # Lost, if anything: frames the transcriber had written to the first
        # session's socket before it learnt the service had cut it (in the
        # service's buffers or on the wire; the service acknowledges no
        # audio, so nobody can know to send them again). How many depends on
        # how far the service's reads lag behind, which CPU load stretches.
        # Every frame given to the transcriber once it knew arrived.
        assert not any(known[len(first):resumed])
    finally:
        t.close()


def test_out_of_order_completions_are_reordered(fake) -> None:
    fake.completed_out_of_order = True
    for text in ("first turn", "second turn"):
        fake.transcripts.put(text)
    sink = Collector()
    t = transcriber(fake, sink)
    try:
        fake.wait_for_session(0)
        turn = silence(0.1) + speech_like(0.5) + silence(0.6)
        feed(t, turn + turn)
        wait(lambda: len(sink.finals()) == 2, what="two transcripts")
        assert sink.finals() == ["first turn", "second turn"]
        completed = [e["item_id"] for e in fake.realtime_sessions[0].sent
                     if e["type"].endswith("transcription.completed")]
        committed = [e["item_id"] for e in fake.realtime_sessions[0].sent
                     if e["type"] == "input_audio_buffer.committed"]
        assert completed == committed[::-1]  # the fake really did swap them
    finally:
        t.close()


def test_rotates_to_a_new_session_in_a_pause(fake) -> None:
    fake.transcripts.put("old session")
    fake.transcripts.put("new session")
    sink = Collector()
    t = transcriber(fake, sink, lifetime=0.5)
    try:
        fake.wait_for_session(0)
        feed(t, silence(0.1) + speech_like(0.5) + silence(0.6))
        wait(lambda: t.rotations >= 1, what="a rotation")
        feed(t, silence(0.1) + speech_like(0.5) + silence(0.6))
        wait(lambda: len(sink.finals()) == 2, what="transcripts from both sessions")
        assert sink.finals() == ["old session", "new session"]
        assert t.reconnects == 0
    finally:
        t.close()


def test_close_leaves_no_threads(fake) -> None:
    before = {th.ident for th in threading.enumerate()}
    sink = Collector()
    t = transcriber(fake, sink)
    fake.wait_for_session(0)
    feed(t, silence(0.2))
    t.close()
    wait(lambda: {th.ident for th in threading.enumerate() if th.name.startswith("stt-")} - before == set(),
         what="stt threads to end")


def test_unreachable_service_keeps_retrying_and_buffers(fake) -> None:
    fake.inject_error("realtime", 503, "overloaded", times=2)
    fake.transcripts.put("made it")
    sink = Collector()
    t = transcriber(fake, sink)
    try:
        feed(t, silence(0.1) + speech_like(0.5) + silence(0.6))  # sent while still unconnected
        wait(lambda: sink.finals() == ["made it"], what="the buffered audio to be transcribed")
    finally:
        t.close()


class StallingService:
    """A Realtime endpoint that confirms the session, then reads nothing
    at all until told to go on; it records the audio it gets, in order.

    It must really stop reading its socket: simple-websocket's own reader
    thread would keep draining the socket into memory and the sender would
    never see a full socket. So the socket is read only here, on the
    request thread, through the media loop's ``LoopReader.pump``, and the
    listening socket's small receive buffer is inherited by the connection
    (set after connecting, the window already offered would stay large).
    """

    def __init__(self) -> None:
        import socket as socket_mod

        import simple_websocket
        from werkzeug.serving import make_server

        from voicecalld.media.loop import LoopReader

        self.go_on = threading.Event()
        self.audio = bytearray()
        self.done = threading.Event()

        def next_message(ws: simple_websocket.Server, timeout: float) -> str | bytes | None:
            import select

            deadline = time.monotonic() + timeout
            while True:
                message = ws.receive(timeout=0)
                if message is not None or not ws.connected:
                    return message
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([ws.sock], [], [], left)[0]:
                    return None
                LoopReader.pump(ws)

        def app(environ, start_response):  # noqa: ANN001, ANN202 - WSGI
            import base64
            import json

            sock = environ["werkzeug.socket"]
            ws = simple_websocket.Server.accept(environ, receive_bytes=1024, thread_class=LoopReader)
            next_message(ws, 5)  # session.update
            ws.send(json.dumps({"type": "session.updated", "session": {}}))
            self.go_on.wait(30)
            try:
                while True:
                    raw = next_message(ws, 2)
                    if raw is None:
                        break
                    event = json.loads(raw)
                    if event.get("type") == "input_audio_buffer.append":
                        self.audio += base64.b64decode(event["audio"])
            except simple_websocket.ConnectionClosed:
                pass
            self.done.set()
            sock.shutdown(socket_mod.SHUT_RDWR)
            raise ConnectionError("done")

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.server.socket.setsockopt(socket_mod.SOL_SOCKET, socket_mod.SO_RCVBUF, 4096)
        self.url = f"ws://127.0.0.1:{self.server.server_port}/v1/realtime?intent=transcription"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.go_on.set()
        self.server.shutdown()
        self.thread.join(5)


def test_a_service_that_stops_reading_never_blocks_the_caller_and_loses_nothing() -> None:
    """send_audio runs on the thread that reads every call's media: a full
    socket must queue the audio, not block, and the audio must all arrive
    in order once the service reads again."""
    import socket

    service = StallingService()
    sink = Collector()
    t = Transcriber("stall", url=service.url, api_key="sk-test", model="gpt-4o-transcribe", threshold=0.5,
                    silence_ms=500, listener=sink)
    t.start()
    try:
        wait(lambda: t._active is not None and t._active.ready.is_set(), what="the session")
        t._active.ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # fill up quickly
        frames = [bytes([i % 256]) * 160 for i in range(600)]  # 12 s of audio, within the replay limit
        sender = threading.Thread(target=lambda: [t.send_audio(f) for f in frames])
        sender.start()
        sender.join(10)
        assert not sender.is_alive(), "send_audio blocked on a full socket"
        assert t.congestions > 0
        service.go_on.set()
        wait(lambda: len(service.audio) == 600 * 160, timeout=15, what="all audio at the service")
        assert bytes(service.audio) == b"".join(frames)
        wait(lambda: not t._congested, what="the transcriber to send directly again")
    finally:
        t.close()
        service.stop()
