"""The I/O-free parts of realtime voice (what the session is told, what the
caller heard) and the pacer that sends the model's audio to the carrier."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from voicecalld.calls import CallRecord, Direction, Mode
from voicecalld.config import Config
from voicecalld.media import realtime_voice_core as core
from voicecalld.media.realtime_stt import turn_detection
from voicecalld.media.realtime_voice import RealtimeVoice, with_model
from voicecalld.media.voice_out import MARK_EVERY, Pacer
from voicecalld.testing._wait import wait_until
from voicecalld.testing.fake_openai import FakeOpenAI


@pytest.mark.parametrize(("steps", "heard"), [
    # (what happens, in order) -> ms of item "a" the caller heard
    ([("audio", 1600), ("mark", "m1"), ("echo", "m1")], 200),
    ([("audio", 1600), ("mark", "m1"), ("audio", 1600), ("mark", "m2"), ("echo", "m1")], 200),
    ([("audio", 1600), ("mark", "m1"), ("audio", 1600), ("mark", "m2"), ("echo", "m2"), ("echo", "m1")], 400),
    # a clear returns the outstanding marks at once: they say nothing was heard
    ([("audio", 1600), ("mark", "m1"), ("echo", "m1"), ("audio", 1600), ("mark", "m2"), ("clear", None),
      ("echo", "m2")], 200),
    ([("audio", 1600), ("mark", "m1"), ("clear", None), ("echo", "m1")], 0),
    ([("echo", "unknown")], 0),
])
def test_heard_audio_counts_only_marks_echoed_for_their_audio(steps: list[tuple[str, Any]], heard: int) -> None:
    audio = core.HeardAudio()
    for step, arg in steps:
        if step == "audio":
            audio.sent_audio("a", arg)
        elif step == "mark":
            audio.sent_mark(arg, "a")
        elif step == "echo":
            audio.echoed(arg)
        else:
            audio.cleared()
    assert audio.heard_ms("a") == heard
    assert audio.heard_ms("a") <= audio.sent_ms("a")


def test_the_session_is_a_realtime_mulaw_conversation_with_its_tools() -> None:
    update = core.session_update(model="gpt-realtime", voice="marin", prompt="Be brief.",
                                 transcription_model="gpt-4o-transcribe",
                                 detection=turn_detection("server_vad", 0.5, 500, "auto"),
                                 answers=True, tool_list=core.tools(["+15550003333"]))
    session = update["session"]
    assert update["type"] == "session.update" and session["type"] == "realtime"
    assert session["audio"]["input"]["format"] == session["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["input"]["turn_detection"]["create_response"] is True
    assert [t["name"] for t in session["tools"]] == ["end_call", "transfer_call"]
    assert session["tools"][1]["parameters"]["properties"]["to"]["enum"] == ["+15550003333"]
    assert [t["name"] for t in core.tools([])] == ["end_call"]  # transfers off: no transfer_call


def test_instructions_fall_back_in_order() -> None:
    record = {"direction": "inbound", "from": "+15550001111"}
    assert core.instructions("Hi {caller}", "other", record) == "Hi +15550001111"
    assert core.instructions(None, "Prompt for {caller}", record) == "Prompt for +15550001111"
    assert "end_call" in core.instructions(None, None, record) and "+15550001111" in core.instructions(
        None, None, record)


def test_say_exactly_carries_the_text_and_the_utterance() -> None:
    event = core.say_exactly('Say "hi" now', "u3")
    assert event["response"]["metadata"] == {"utterance": "u3"}
    assert event["response"]["instructions"].endswith('"Say \'hi\' now"')


def test_seed_items_replay_the_final_transcript() -> None:
    transcript = [{"speaker": "bot", "text": "Welcome"}, {"speaker": "user", "text": "Hi", "isFinal": True},
                  {"speaker": "user", "text": "partial", "isFinal": False}, {"speaker": "user", "text": "there"},
                  {"speaker": "bot", "text": "Hello!"}]
    items = [(e["item"]["role"], e["item"]["content"]) for e in core.seed_items(transcript)]
    assert items == [("assistant", [{"type": "output_text", "text": "Welcome"}]),
                     ("user", [{"type": "input_text", "text": "Hi there"}]),
                     ("assistant", [{"type": "output_text", "text": "Hello!"}])]


def test_function_output_and_truncate_events() -> None:
    out = core.function_output("call_1", {"success": True})
    assert out["item"] == {"type": "function_call_output", "call_id": "call_1", "output": '{"success": true}'}
    assert core.truncate("item_1", 340) == {"type": "conversation.item.truncate", "item_id": "item_1",
                                            "content_index": 0, "audio_end_ms": 340}


@pytest.mark.parametrize(("url", "expected"), [
    ("wss://api.openai.com/v1/realtime", "wss://api.openai.com/v1/realtime?model=gpt-realtime"),
    ("wss://api.openai.com/v1/realtime?intent=transcription", "wss://api.openai.com/v1/realtime?model=gpt-realtime"),
    ("ws://127.0.0.1:9/v1/realtime?model=old&x=1", "ws://127.0.0.1:9/v1/realtime?x=1&model=gpt-realtime"),
])
def test_the_model_rides_in_the_url(url: str, expected: str) -> None:
    assert with_model(url, "gpt-realtime") == expected


class Recorder:
    """A framing and a send that keep the frames, in order."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.changed = threading.Condition()

    def media(self, payload: bytes) -> str:
        return json.dumps({"event": "media", "size": len(payload)})

    def mark(self, name: str) -> str:
        return json.dumps({"event": "mark", "name": name})

    def clear(self) -> str:
        return json.dumps({"event": "clear"})

    def send(self, frame: str) -> None:
        with self.changed:
            self.frames.append(json.loads(frame))
            self.changed.notify_all()

    def wait(self, predicate: Any, timeout: float = 10.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self.frames), timeout)


def test_the_pacer_marks_every_200_ms_and_after_the_last_frame() -> None:
    rec = Recorder()
    heard = threading.Event()
    pacer = Pacer(rec.send, rec, name="t")
    try:
        pacer.audio("a", b"\xff" * (160 * 25 + 80))  # 25.5 frames
        pacer.end("a", heard.set)
        assert rec.wait(lambda f: sum(1 for x in f if x["event"] == "mark") == 3)
        events = [x["event"] for x in rec.frames]
        assert events.count("media") == 26 and all(x.get("size", 160) == 160 for x in rec.frames)
        marks = [i for i, e in enumerate(events) if e == "mark"]
        assert marks == [MARK_EVERY, 2 * MARK_EVERY + 1, 28]  # after frames 10 and 20, and after the last
        names = [x["name"] for x in rec.frames if x["event"] == "mark"]
        assert not heard.is_set()
        for name in names:
            pacer.mark_echoed(name)
        assert heard.is_set() and pacer.heard_ms("a") == 520 and not pacer.speaking
    finally:
        pacer.close()


def test_a_clear_drops_the_queue_and_reports_what_was_heard() -> None:
    rec = Recorder()
    dropped = threading.Event()
    pacer = Pacer(rec.send, rec, name="t")
    try:
        pacer.audio("a", b"\xff" * 160 * 200)  # four seconds
        pacer.end("a", dropped.set)
        assert rec.wait(lambda f: sum(1 for x in f if x["event"] == "mark") >= 2)
        first = next(x["name"] for x in rec.frames if x["event"] == "mark")
        pacer.mark_echoed(first)
        cleared = pacer.clear()
        assert cleared is not None and cleared.item_id == "a" and cleared.heard_ms == 200
        for callback in cleared.dropped:
            callback()
        assert dropped.is_set()
        sent = len(rec.frames)
        assert rec.frames[-1] == {"event": "clear"}
        pacer.audio("b", b"\xff" * 160)
        pacer.end("b")
        assert rec.wait(lambda f: len(f) >= sent + 2)
        assert [x["event"] for x in rec.frames[sent:]] == ["media", "mark"]  # nothing of "a" after the clear
        assert pacer.clear() is not None and pacer.clear() is None  # the second: nothing is being said
    finally:
        pacer.close()


# --- a RealtimeVoice against FakeOpenAI, without the daemon -----------------------------------------


class Engine:
    """The engine side a session needs: a record, and what it was told."""

    def __init__(self) -> None:
        self.record = CallRecord(callId="c1", provider="twilio", direction=Direction.INBOUND,
                                 mode=Mode.CONVERSATION, to="+15550002222", from_="+15550001111")
        self.record.transcript = [{"speaker": "bot", "text": "Hello", "isFinal": True},
                                  {"speaker": "user", "text": "Hi", "isFinal": True}]
        self.turns: list[float] = []

    def live_record(self, call_id: str) -> CallRecord | None:
        return self.record

    def note_turn(self, call_id: str, latency_ms: float) -> bool:
        self.turns.append(latency_ms)
        return True

    def end(self, call_id: object) -> dict[str, Any]:
        return {}

    def transfer(self, call_id: object, to: object, message: object = None) -> dict[str, Any]:
        return {}


def test_a_session_past_its_lifetime_is_rotated_at_a_pause_and_reseeded() -> None:
    rec = Recorder()
    unreachable: list[str] = []
    with FakeOpenAI(api_key="sk-test") as fake:
        cfg = Config().replace({"realtime.enabled": True, "realtime.url": fake.voice_url,
                                "streaming.openaiApiKey": "sk-test"})
        voice = RealtimeVoice("c1", cfg, framing=rec, send=rec.send, emit=lambda *a, **k: None, engine=Engine(),
                              submit=lambda work: work(), on_unreachable=lambda why, b, s: unreachable.append(why),
                              lifetime=0.5)
        voice.start()
        try:
            second = fake.wait_for_session(1, timeout=10)
            wait_until(lambda: len(second.created_items) >= 2, timeout=10, what="the re-seeded conversation")
            assert [(i["role"], i["content"][0]["text"]) for i in second.created_items] == [
                ("assistant", "Hello"), ("user", "Hi")]
            assert voice.rotations >= 1 and not unreachable
            assert second.session is not None and second.session["type"] == "realtime"
        finally:
            voice.close()
