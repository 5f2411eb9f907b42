"""End to end: Twilio Media Streams through the real daemon.

FakeTwilio places the call and, on ``<Connect><Stream>``, a MediaStreamClient
connects to the daemon's stream endpoint exactly as Twilio would (signed
upgrade, ``start`` with the call's parameters, real-time µ-law). FakeOpenAI
is the Realtime speech-to-text service and the TTS endpoint.
"""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import urlsplit

import pytest
import simple_websocket

from voicecalld.providers.twilio_signature import compute_signature
from voicecalld.testing.fake_openai import FakeOpenAI
from voicecalld.testing.fake_twilio import FakeTwilio, StreamRequest
from voicecalld.testing.media_client import MediaStreamClient, silence, speech_like
from voicecalld.testing.ports import free_port

SID = "AC" + "1" * 32
TOKEN = "twilio-test-token"
FROM, TO = "+15550001111", "+15550002222"


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("Threads:"))


class World:
    def __init__(self, start_daemon, **overrides: Any) -> None:
        self.twilio = FakeTwilio(SID, TOKEN, ms_per_char=2, time_scale=0.05)
        self.twilio.start()
        self.openai = FakeOpenAI(api_key="sk-test", tts_ms_per_char=8)
        self.openai.start()
        self.port = free_port()
        if overrides.pop("llm", False):  # the auto-responder, answered by this world's fake
            overrides = {"responder": "llm", "responseBaseUrl": self.openai.base_url, "responseApiKey": "sk-test",
                         "responseTimeoutMs": 10000, **overrides}
        streaming = {"enabled": True, "openaiApiKey": "sk-test", "realtimeUrl": self.openai.realtime_url,
                     "silenceDurationMs": 300, **overrides.pop("streaming", {})}
        config = {"provider": "twilio", "fromNumber": FROM, "toNumber": TO, "maxConcurrentCalls": 5,
                  "publicUrl": f"http://127.0.0.1:{self.port}", "serve": {"port": self.port},
                  "twilio": {"accountSid": SID, "authToken": TOKEN, "apiBaseUrl": self.twilio.base_url},
                  "streaming": streaming, "tts": {"baseUrl": self.openai.base_url, **overrides.pop("tts", {})},
                  "responder": "off", "transcriptTimeoutMs": 15000, **overrides}
        self.daemon = start_daemon(config)
        self.clients: list[MediaStreamClient] = []
        self.twilio.on_stream = self._on_stream

    def _on_stream(self, req: StreamRequest) -> None:
        # Twilio connects to the URL in the TwiML; the test speaks plain ws://
        # to the same path (the signature still covers the wss:// URL).
        url = f"ws://127.0.0.1:{self.port}{urlsplit(req.url).path}"
        client = MediaStreamClient(url, headers=req.headers, custom_parameters=req.parameters,
                                   call_sid=req.call_sid, stream_sid=req.stream_sid)
        self.clients.append(client)

        def run() -> None:
            client.connect()
            req.ended.wait(60)
            client.stop()

        threading.Thread(target=run, daemon=True).start()

    def client(self, timeout: float = 10.0) -> MediaStreamClient:
        self.daemon.wait(lambda: self.clients and self.clients[-1].connected, timeout, "a media stream")
        return self.clients[-1]

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.twilio.stop()
        self.openai.stop()


@pytest.fixture
def world(start_daemon):
    w = World(start_daemon)
    yield w
    w.close()


def start_call(w: World) -> tuple[str, MediaStreamClient]:
    call_id = w.daemon.rpc("voicecall.initiate", {"message": "Hi, this is the stream test", "mode": "conversation"})[
        "callId"]
    return call_id, w.client()


def test_streamed_conversation_continue_returns_the_transcript(world) -> None:
    d = world.daemon
    call_id, client = start_call(world)
    world.openai.transcripts.put("yes, deploy it")
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(d.rpc("voicecall.continue",
                                                            {"callId": call_id, "message": "Should I deploy?"},
                                                            timeout=30)))
    t.start()
    # The question is spoken over the stream: TTS audio, then its mark.
    mark = client.wait_for(lambda: any(m.echoed_at for m in client.marks), timeout=10)
    assert mark and client.received_media
    client.play(silence(0.2) + speech_like(0.6) + silence(0.6))
    t.join(20)
    assert result == {"callId": call_id, "transcript": "yes, deploy it"}
    record = d.rpc("voicecall.status", {"callId": call_id})
    assert [(e["speaker"], e["text"]) for e in record["transcript"]][-2:] == [
        ("bot", "Should I deploy?"), ("user", "yes, deploy it")]
    session = world.openai.realtime_sessions[0]
    update = next(e for e in session.events if e["type"] == "session.update")["session"]
    assert update["type"] == "transcription" and update["audio"]["input"]["format"]["type"] == "audio/pcmu"
    assert update["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 300
    assert "OpenAI-Beta" not in session.headers
    speech = world.openai.speech_requests[-1]
    assert speech.body["response_format"] == "pcm" and speech.body["input"] == "Should I deploy?"
    assert len(session.audio_bytes) >= 160 * 50  # the caller's audio reached the transcriber
    d.rpc("voicecall.end", {"callId": call_id})


def test_barge_in_clears_and_marks_the_bot_interrupted(world) -> None:
    d = world.daemon
    call_id, client = start_call(world)
    d.wait_state(call_id, "listening", timeout=15)
    world.openai.transcripts.put("stop talking")
    d.rpc("voicecall.speak", {"callId": call_id, "message": "a very long announcement " * 20})
    client.wait_for(lambda: len(client.received_media) > 20, timeout=10)
    client.play(speech_like(0.5) + silence(0.5))  # the caller talks over the bot
    client.wait_for(lambda: client.clears, timeout=10)
    record = d.wait(lambda: (r := d.rpc("voicecall.status", {"callId": call_id}))["transcript"][-1]["text"]
                    == "stop talking" and r, what="the caller's words")
    bot = [e for e in record["transcript"] if e["speaker"] == "bot"][-1]
    assert bot["interrupted"] is True
    # The rest of the announcement was dropped: after the clear come only the
    # next two utterances, the same words, so the same number of frames each.
    for _ in range(2):
        d.rpc("voicecall.speak", {"callId": call_id, "message": "Okay."})

    def after_clear() -> list[str]:
        events = [m.get("event") for m in list(client.received)]
        return events[events.index("clear") + 1:]

    client.wait_for(lambda: after_clear().count("mark") == 2, timeout=15)
    events = after_clear()
    first = events.index("mark")
    assert set(events[:first]) == {"media"} and events[first + 1:-1] == events[:first] and events[-1] == "mark"
    d.rpc("voicecall.end", {"callId": call_id})


def test_dtmf_frames_become_events(world) -> None:
    d = world.daemon
    call_id, client = start_call(world)
    with d.client() as sub:
        sub.call("events.subscribe", {"callId": call_id})
        client.send_dtmf("7")
        for event in sub.events():
            if event["event"] == "call.dtmf":
                assert event["data"] == {"digits": "7", "direction": "received"}
                break
    d.rpc("voicecall.end", {"callId": call_id})


def test_stt_reconnects_mid_call(world) -> None:
    d = world.daemon
    call_id, client = start_call(world)
    world.openai.wait_for_session(0)
    world.openai.transcripts.put("after the drop")
    world.openai.drop_realtime_after(30)
    t = threading.Thread(target=lambda: client.play(silence(0.3) + speech_like(0.6) + silence(0.7)))
    t.start()
    d.wait(lambda: (r := d.rpc("voicecall.status", {"callId": call_id}))["transcript"][-1]["text"]
           == "after the drop" and r, timeout=15, what="a transcript after the reconnect")
    t.join(10)
    assert len(world.openai.realtime_sessions) >= 2
    assert d.rpc("voicecall.status", {"callId": call_id})["state"] not in ("error", "hangup-bot")
    d.rpc("voicecall.end", {"callId": call_id})


def test_frames_that_arrive_together_reach_the_transcriber_as_one_append(world) -> None:
    # A stream that falls behind (or a network that held packets back)
    # delivers many frames in one read: the daemon forwards them as one
    # append, in order and byte for byte, instead of one send per frame.
    d = world.daemon
    call_id, client = start_call(world)
    session = world.openai.wait_for_session(0)
    d.wait(lambda: any(e["type"] == "session.update" for e in session.events), timeout=10, what="the STT session")
    before, appends_before = len(session.audio_bytes), len(session.append_times)
    audio = speech_like(0.5)
    assert client.burst(audio) == 25
    d.wait(lambda: len(session.audio_bytes) >= before + len(audio), timeout=10, what="the burst at the STT")
    assert bytes(session.audio_bytes[before:]) == audio
    appends = len(session.append_times) - appends_before
    assert 1 <= appends <= 3, appends  # one read, one append (a read split by the kernel: a few)
    d.rpc("voicecall.end", {"callId": call_id})


def test_stream_teardown_leaves_no_threads(world) -> None:
    d = world.daemon
    baseline = threads_of(d.proc.pid)  # ready means started: no thread of start-up is still going
    call_id, client = start_call(world)
    client.play(silence(0.3))
    assert threads_of(d.proc.pid) > baseline
    d.rpc("voicecall.end", {"callId": call_id})
    client.wait_closed(10)
    d.wait(lambda: threads_of(d.proc.pid) <= baseline, timeout=10, what="thread count back to baseline")


# --- authentication and limits ----------------------------------------------------------------


def close_quietly(ws: simple_websocket.Client) -> None:
    try:
        ws.close()
    except simple_websocket.ConnectionClosed:
        pass  # the daemon closed it first, as it should


def stream_url(w: World) -> tuple[str, str]:
    path = "/voice/stream"
    return f"ws://127.0.0.1:{w.port}{path}", f"wss://127.0.0.1:{w.port}{path}"


def test_unsigned_or_badly_signed_upgrade_is_refused(world) -> None:
    ws_url, wss_url = stream_url(world)
    for headers in ({}, {"X-Twilio-Signature": compute_signature("wrong-token", wss_url)},
                    {"X-Twilio-Signature": compute_signature(TOKEN, wss_url + "x")}):
        with pytest.raises(simple_websocket.ConnectionError) as info:
            simple_websocket.Client.connect(ws_url, headers=headers)
        assert info.value.status_code == 401


@pytest.mark.parametrize("start", [
    {"event": "start", "start": {"customParameters": {"callId": "nope", "token": "x"}}},
    {"event": "media", "media": {"payload": ""}},
    None,  # says nothing: the 5 s start deadline
])
def test_bad_start_is_closed_with_1008(world, start) -> None:
    ws_url, wss_url = stream_url(world)
    ws = simple_websocket.Client.connect(ws_url, headers={"X-Twilio-Signature": compute_signature(TOKEN, wss_url)})
    try:
        ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        if start is not None:
            ws.send(json.dumps(start))
        with pytest.raises(simple_websocket.ConnectionClosed) as info:
            while True:
                ws.receive(timeout=8)
        assert info.value.reason == 1008
    finally:
        close_quietly(ws)


def second_start(world: World, start: dict[str, Any]) -> None:
    """Open a second stream for a call and send ``start``: it is closed with 1008."""
    ws_url, wss_url = stream_url(world)
    ws = simple_websocket.Client.connect(ws_url, headers={"X-Twilio-Signature": compute_signature(TOKEN, wss_url)})
    try:
        ws.send(json.dumps({"event": "start", "streamSid": "MZ1", "start": {"streamSid": "MZ1", **start}}))
        with pytest.raises(simple_websocket.ConnectionClosed) as info:
            ws.receive(timeout=8)
        assert info.value.reason == 1008
    finally:
        close_quietly(ws)


def test_right_call_wrong_token_is_closed_with_1008(world) -> None:
    d = world.daemon
    call_id, client = start_call(world)
    second_start(world, {"customParameters": {"callId": call_id, "token": "guessed"}})
    assert client.connected  # the real stream is untouched
    d.rpc("voicecall.end", {"callId": call_id})


def test_a_start_in_another_audio_format_is_closed_with_1008(world) -> None:
    d = world.daemon
    call_id, client = start_call(world)
    # The right call and token, but A-law: the daemon speaks µ-law only.
    second_start(world, {"customParameters": client.custom_parameters,
                         "mediaFormat": {"encoding": "audio/x-alaw", "sampleRate": 8000, "channels": 1}})
    assert client.connected  # the real stream is untouched
    assert "media stream closed: unsupported audio format" in d.log()
    d.rpc("voicecall.end", {"callId": call_id})


def test_pending_streams_are_capped_with_503(start_daemon) -> None:
    w = World(start_daemon, streaming={"maxPendingStreams": 1})
    try:
        ws_url, wss_url = stream_url(w)
        headers = {"X-Twilio-Signature": compute_signature(TOKEN, wss_url)}
        first = simple_websocket.Client.connect(ws_url, headers=headers)  # connected, never starts
        with pytest.raises(simple_websocket.ConnectionError) as info:
            simple_websocket.Client.connect(ws_url, headers=headers)
        assert info.value.status_code == 503
        close_quietly(first)
    finally:
        w.close()


def test_without_an_openai_key_calls_fall_back_to_gather(start_daemon) -> None:
    w = World(start_daemon, streaming={"openaiApiKey": ""})
    try:
        d = w.daemon
        assert d.log().count("streaming.openaiApiKey") == 1  # said once, at start
        call_id = d.rpc("voicecall.initiate", {"message": "hello", "mode": "conversation"})["callId"]
        sid = w.twilio.wait_call(to=TO).sid
        w.twilio.wait_listening(sid)
        assert not w.twilio.streams and "<Gather" in w.twilio.calls[sid].twiml[-1]
        d.rpc("voicecall.end", {"callId": call_id})
    finally:
        w.close()


