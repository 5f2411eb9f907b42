"""End to end: a realtime speech-to-speech conversation (``[realtime]``)
through the real daemon on Telnyx media streaming. FakeTelnyx dials and
opens the call's stream as Telnyx does; FakeOpenAI is the Realtime model."""

from __future__ import annotations

from typing import Any

from test_telnyx_streaming import CALLEE, OURS, transcript

from voicecalld.testing._telnyx_media import silence, speech_like
from voicecalld.testing.fake_openai import FakeOpenAI, VoiceRecord
from voicecalld.testing.fake_telnyx import FakeTelnyx
from voicecalld.testing.ports import free_port


def test_a_realtime_conversation_of_two_turns_on_telnyx(start_daemon: Any) -> None:
    with FakeTelnyx(seed=7, ms_per_char=2.0, answer_after=0.03) as fake, FakeOpenAI(api_key="sk-test") as openai:
        port = free_port()
        d = start_daemon({
            "provider": "telnyx", "fromNumber": OURS, "toNumber": CALLEE, "maxConcurrentCalls": 5,
            "publicUrl": f"http://127.0.0.1:{port}", "serve": {"port": port},
            "telnyx": {"apiKey": fake.api_key, "connectionId": fake.connection_id, "publicKey": fake.public_key_b64,
                       "apiBaseUrl": fake.base_url},
            "streaming": {"enabled": True, "openaiApiKey": "sk-test", "realtimeUrl": openai.realtime_url,
                          "silenceDurationMs": 300},
            "tts": {"baseUrl": openai.base_url}, "realtime": {"enabled": True, "url": openai.voice_url},
            "responder": "llm", "responseBaseUrl": openai.base_url, "transcriptTimeoutMs": 15000})
        openai.voice.replies.put("Sure, I can help with that.")
        openai.voice.replies.put("It is sunny today.")
        openai.transcripts.put("I need some help")
        openai.transcripts.put("What is the weather")
        call_id = d.rpc("voicecall.initiate", {"message": "Hello from Telnyx realtime", "mode": "conversation"})[
            "callId"]
        call = fake.wait_for(lambda: fake.last_call, 10, "the dial")
        client = fake.wait_stream(call.call_control_id, 10)
        d.wait_state(call_id, "listening", timeout=15)
        session = openai.wait_for_session(0, timeout=10)
        assert isinstance(session, VoiceRecord)
        assert session.responses[0]["text"] == "Hello from Telnyx realtime"  # the opening, by the model
        for reply in ("Sure, I can help with that.", "It is sunny today."):
            client.play(speech_like(0.6) + silence(0.5))
            line = ("bot", reply)
            d.wait(lambda: line in transcript(d, call_id), timeout=15, what=f"the reply {reply!r}")  # noqa: B023
        assert transcript(d, call_id) == [
            ("bot", "Hello from Telnyx realtime"), ("user", "I need some help"),
            ("bot", "Sure, I can help with that."), ("user", "What is the weather"), ("bot", "It is sunny today.")]
        # Telnyx neither spoke nor transcribed, and nothing went through the cascade.
        assert call.said == [] and "transcription_start" not in call.command_names
        assert not openai.chat_requests and not openai.speech_requests
        assert any(m.echoed_at for m in client.marks)  # the model's audio was paced with marks, echoed
        d.rpc("voicecall.end", {"callId": call_id})
