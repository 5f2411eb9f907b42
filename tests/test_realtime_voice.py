"""End to end: realtime speech-to-speech (``[realtime]``) through the real
daemon on Twilio. FakeTwilio places the call and a MediaStreamClient plays
Twilio's side of the stream (marks echoed once their audio has played);
FakeOpenAI is the Realtime conversation model (and, for the fallback, the
transcription and TTS services)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from voicecalld.testing.fake_openai import FakeOpenAI, VoiceRecord
from voicecalld.testing.media_client import MediaStreamClient, silence, speech_like
from voicecalld.testing.ports import free_port

from test_streaming import FROM, SID, TO, TOKEN, World  # noqa: F401  (the Twilio world)


@pytest.fixture
def world(start_daemon):
    w = make_world(start_daemon)
    yield w
    w.close()


def make_world(start_daemon, responder: str = "llm", **realtime: Any) -> World:
    w = World.__new__(World)
    from voicecalld.testing.fake_twilio import FakeTwilio
    w.twilio = FakeTwilio(SID, TOKEN, ms_per_char=2, time_scale=0.05)
    w.twilio.start()
    w.openai = FakeOpenAI(api_key="sk-test", tts_ms_per_char=8)
    w.openai.start()
    w.port = free_port()
    rt = {"enabled": True, "url": w.openai.voice_url, **realtime}
    config = {"provider": "twilio", "fromNumber": FROM, "toNumber": TO, "maxConcurrentCalls": 5,
              "publicUrl": f"http://127.0.0.1:{w.port}", "serve": {"port": w.port},
              "twilio": {"accountSid": SID, "authToken": TOKEN, "apiBaseUrl": w.twilio.base_url},
              "streaming": {"enabled": True, "openaiApiKey": "sk-test", "realtimeUrl": w.openai.realtime_url,
                            "silenceDurationMs": 300},
              "tts": {"baseUrl": w.openai.base_url}, "realtime": rt,
              "responder": responder, "responseBaseUrl": w.openai.base_url, "transcriptTimeoutMs": 15000}
    w.daemon = start_daemon(config)
    w.clients = []
    w.twilio.on_stream = w._on_stream
    return w


def voice_session(w: World, index: int = 0) -> VoiceRecord:
    record = w.openai.wait_for_session(index, timeout=10)
    assert isinstance(record, VoiceRecord)
    return record


def transcript(w: World, call_id: str) -> list[tuple[str, str]]:
    record = w.daemon.rpc("voicecall.status", {"callId": call_id})
    return [(e["speaker"], e["text"]) for e in record["transcript"]]


def test_a_realtime_conversation_of_two_turns(world) -> None:
    w, d = world, world.daemon
    w.openai.voice.replies.put("Sure, I can help with that.")
    w.openai.voice.replies.put("It is sunny today.")
    w.openai.transcripts.put("I need some help")
    w.openai.transcripts.put("What is the weather")
    call_id = d.rpc("voicecall.initiate", {"message": "Hello from the realtime test", "mode": "conversation"})[
        "callId"]
    client = w.client()
    session = voice_session(w)
    # The opening is said verbatim by the model, over the stream.
    d.wait_state(call_id, "listening", timeout=15)
    update = next(e for e in session.events if e["type"] == "session.update")["session"]
    assert update["type"] == "realtime" and update["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert update["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "marin"}
    assert [t["name"] for t in update["tools"]] == ["end_call"]
    assert "OpenAI-Beta" not in session.headers
    assert session.responses[0]["text"] == "Hello from the realtime test"
    for n, expected in enumerate(["Sure, I can help with that.", "It is sunny today."]):
        client.play(speech_like(0.6) + silence(0.5))
        d.wait(lambda: ("bot", expected) in transcript(w, call_id), timeout=15, what=f"reply {n + 1}")
        client.wait_for(lambda: sum(1 for m in client.marks if m.echoed_at) >= 1, timeout=10)
    assert transcript(w, call_id) == [
        ("bot", "Hello from the realtime test"), ("user", "I need some help"),
        ("bot", "Sure, I can help with that."), ("user", "What is the weather"), ("bot", "It is sunny today.")]
    record = d.rpc("voicecall.status", {"callId": call_id})
    assert len(record.get("turns") or []) == 2, record.get("turns")
    assert not w.openai.chat_requests and not w.openai.speech_requests  # no cascade anywhere
    d.rpc("voicecall.end", {"callId": call_id})
