"""FakeOpenAI's Realtime speech-to-speech session, spoken to with
websocket-client as any client would: it checks the session's shape,
answers caller turns and ``response.create``, and refuses what the real
service refuses (a truncation past the audio it sent, a cancel with no
response under way)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import websocket

from voicecalld.media import realtime_voice_core as core
from voicecalld.media.realtime_stt import turn_detection
from voicecalld.testing.fake_openai import FakeOpenAI, VoiceRecord
from voicecalld.testing.media_client import silence, speech_like


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key="sk-test") as f:
        f.voice.reply_delay_s = 0.0
        yield f


class Conn:
    def __init__(self, fake: FakeOpenAI) -> None:
        self.ws = websocket.create_connection(fake.voice_url + "?model=gpt-realtime", timeout=10,
                                              header=["Authorization: Bearer sk-test"])
        self.events: list[dict[str, Any]] = []

    def send(self, event: dict[str, Any]) -> None:
        self.ws.send(json.dumps(event))

    def until(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while True:  # each recv is bounded by the socket timeout
            event = json.loads(self.ws.recv())
            self.events.append(event)
            if predicate(event):
                return event

    def configure(self, answers: bool = True) -> dict[str, Any]:
        self.send(core.session_update(model="gpt-realtime", voice="marin", prompt="Be brief.",
                                      transcription_model="gpt-4o-transcribe",
                                 detection=turn_detection("server_vad", 0.5, 300, "auto"),
                                      answers=answers, tool_list=core.tools([])))
        return self.until(lambda e: e["type"] in ("session.updated", "error"))


def test_a_valid_session_is_confirmed_and_a_wrong_one_named(fake: FakeOpenAI) -> None:
    conn = Conn(fake)
    assert conn.configure()["type"] == "session.updated"
    conn.send({"type": "session.update", "session": {"type": "realtime", "audio": {"output": {
        "format": "g711_ulaw"}}}})
    error = conn.until(lambda e: e["type"] == "error")["error"]
    assert error["param"] == "session.audio.output.format"
    conn.send({"type": "session.update", "session": {"type": "transcription"}})
    assert conn.until(lambda e: e["type"] == "error")["error"]["param"] == "session.type"
    conn.ws.close()


def test_a_caller_turn_is_transcribed_and_answered_with_mulaw_audio(fake: FakeOpenAI) -> None:
    fake.transcripts.put("hello model")
    fake.voice.replies.put("Hi caller.")
    conn = Conn(fake)
    conn.configure()
    audio = speech_like(0.5) + silence(0.5)
    for offset in range(0, len(audio), 160):
        conn.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(audio[offset:offset + 160]).decode()})
    done = conn.until(lambda e: e["type"] == "response.done")
    kinds = [e["type"] for e in conn.events]
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("input_audio_buffer.speech_stopped")
    assert any(e.get("transcript") == "hello model" for e in conn.events
               if e["type"] == "conversation.item.input_audio_transcription.completed")
    deltas = b"".join(base64.b64decode(e["delta"]) for e in conn.events if e["type"] == "response.output_audio.delta")
    assert len(deltas) == 8 * round(len("Hi caller.") * fake.voice.ms_per_char)  # µ-law, 8 bytes a ms
    assert done["response"]["status"] == "completed"
    assert next(e for e in conn.events if e["type"] == "response.output_audio_transcript.done")["transcript"] \
        == "Hi caller."
    conn.ws.close()


def test_truncate_past_the_audio_sent_and_cancel_without_a_response_are_errors(fake: FakeOpenAI) -> None:
    conn = Conn(fake)
    conn.configure(answers=False)
    conn.send(core.say_exactly("Exactly this.", "u1"))
    created = conn.until(lambda e: e["type"] == "response.created")
    assert created["response"]["metadata"] == {"utterance": "u1"}
    conn.until(lambda e: e["type"] == "response.done")
    item = next(e["item_id"] for e in conn.events if e["type"] == "response.output_audio.delta")
    sent_ms = sum(len(base64.b64decode(e["delta"])) for e in conn.events
                  if e["type"] == "response.output_audio.delta") // 8
    conn.send(core.truncate(item, sent_ms + 20))
    assert conn.until(lambda e: e["type"] in ("error", "conversation.item.truncated"))["type"] == "error"
    conn.send(core.truncate(item, sent_ms - 100))
    assert conn.until(lambda e: e["type"] in ("error", "conversation.item.truncated"))["audio_end_ms"] == sent_ms - 100
    conn.send({"type": "response.cancel"})
    assert conn.until(lambda e: e["type"] == "error")["error"]["code"] == "response_cancel_not_active"
    record = fake.wait_for_session(0)
    assert isinstance(record, VoiceRecord)
    assert [t["accepted"] for t in record.truncations] == [False, True]
    assert record.responses[0]["text"] == "Exactly this."
    conn.ws.close()


def test_a_scripted_tool_is_called_and_its_output_accepted(fake: FakeOpenAI) -> None:
    fake.voice.replies.put({"text": "Bye!", "tool": {"name": "end_call", "arguments": {}}})
    conn = Conn(fake)
    conn.configure(answers=False)
    conn.send({"type": "response.create"})
    call = conn.until(lambda e: e["type"] == "response.function_call_arguments.done")
    assert call["name"] == "end_call" and json.loads(call["arguments"]) == {}
    conn.send(core.function_output(call["call_id"], {"success": True}))
    assert conn.until(lambda e: e["type"] in ("conversation.item.added", "error"))["type"] == "conversation.item.added"
    conn.send(core.function_output("call_unknown", {"success": True}))
    assert conn.until(lambda e: e["type"] in ("conversation.item.added", "error"))["type"] == "error"
    conn.ws.close()
