"""End to end: realtime speech-to-speech (``[realtime]``) through the real
daemon on Twilio. FakeTwilio places the call and a MediaStreamClient plays
Twilio's side of the stream (marks echoed once their audio has played);
FakeOpenAI is the Realtime conversation model (and, for the fallback, the
transcription and TTS services)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from test_responder import Events
from test_streaming import FROM, SID, TO, TOKEN, World

from voicecalld.testing.fake_openai import FakeOpenAI, VoiceRecord
from voicecalld.testing.fake_twilio import FakeTwilio
from voicecalld.testing.media_client import MediaStreamClient, silence, speech_like
from voicecalld.testing.ports import free_port


@pytest.fixture
def world(start_daemon):
    w = make_world(start_daemon)
    yield w
    w.close()


def make_world(start_daemon, responder: str = "llm", extra: dict[str, Any] | None = None, **realtime: Any) -> World:
    w = World.__new__(World)  # test_streaming's Twilio world, with [realtime] on
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
              "responder": responder, "responseBaseUrl": w.openai.base_url, "transcriptTimeoutMs": 15000,
              **(extra or {})}
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
        line = ("bot", expected)
        d.wait(lambda: line in transcript(w, call_id), timeout=15, what=f"reply {n + 1}")  # noqa: B023
    assert transcript(w, call_id) == [
        ("bot", "Hello from the realtime test"), ("user", "I need some help"),
        ("bot", "Sure, I can help with that."), ("user", "What is the weather"), ("bot", "It is sunny today.")]
    record = d.rpc("voicecall.status", {"callId": call_id})
    assert len(record.get("turns") or []) == 2, record.get("turns")
    assert not w.openai.chat_requests and not w.openai.speech_requests  # no cascade anywhere
    d.rpc("voicecall.end", {"callId": call_id})


def converse(w: World, call_id: str, client: MediaStreamClient, reply: str) -> None:
    """One caller turn, and the model's reply in the record."""
    client.play(speech_like(0.6) + silence(0.5))
    w.daemon.wait(lambda: ("bot", reply) in transcript(w, call_id), timeout=15, what=f"the reply {reply!r}")


def start_conversation(w: World, message: str = "Hello there") -> tuple[str, MediaStreamClient, VoiceRecord]:
    call_id = w.daemon.rpc("voicecall.initiate", {"message": message, "mode": "conversation"})["callId"]
    client = w.client()
    w.daemon.wait_state(call_id, "listening", timeout=15)
    return call_id, client, voice_session(w)


def frames_between(client: MediaStreamClient, after_mark: str, mark: str) -> int:
    """Media frames the client received after the mark ``after_mark`` and before ``mark``."""
    names = [m.get("mark", {}).get("name") if m.get("event") == "mark" else None for m in client.received]
    start, end = names.index(after_mark), names.index(mark)
    return sum(1 for m in client.received[start:end] if m.get("event") == "media")


def test_barge_in_clears_and_truncates_at_what_the_caller_heard(world) -> None:
    w, d = world, world.daemon
    w.openai.voice.speed = 2.0  # the reply is still streaming when the caller interrupts
    long_reply = "Let me tell you all about our offers, " * 6
    w.openai.voice.replies.put(long_reply.strip())
    w.openai.transcripts.put("Tell me everything")
    w.openai.transcripts.put("Stop please")
    call_id, client, session = start_conversation(w)
    opening_item = session.responses[0]["item_id"]
    client.play(speech_like(0.6) + silence(0.5))
    d.wait(lambda: len(session.responses) > 1, timeout=15, what="the reply")
    item = session.responses[1]["item_id"]

    def heard_marks() -> list[Any]:
        return [m for m in client.marks if m.name.endswith("|" + item) and m.echoed_at and not m.cleared]

    assert client.wait_for(lambda: len(heard_marks()) >= 3, timeout=15)  # 600 ms heard
    client.play(speech_like(0.5) + silence(0.5))  # the caller talks over the bot
    assert client.wait_for(lambda: client.clears, timeout=10)
    d.wait(lambda: session.truncations, timeout=10, what="a truncation")
    truncation = session.truncations[0]
    assert truncation["accepted"] and truncation["item_id"] == item
    # audio_end_ms is what an echoed mark says was heard: exactly the frames
    # sent before a mark the client echoed because its audio had played
    # (marks the clear returned do not count). Which one depends on how far
    # the daemon got with the echoes in flight when the caller spoke; the
    # first of them was echoed long before.
    opening_end = [m.name for m in client.marks if m.name.endswith("|" + opening_item)][-1]
    offsets = [20 * frames_between(client, opening_end, m.name) for m in heard_marks()]
    assert truncation["audio_end_ms"] in offsets and truncation["audio_end_ms"] >= min(offsets) > 0
    assert truncation["audio_end_ms"] < truncation["sent_ms"]
    record = d.wait(lambda: (r := d.rpc("voicecall.status", {"callId": call_id}))["transcript"][-1]["text"]
                    == "Stop please" and r, what="the caller's words")
    bot = [e for e in record["transcript"] if e["speaker"] == "bot"][-1]
    assert bot["interrupted"] is True and long_reply.startswith(bot["text"])
    d.rpc("voicecall.end", {"callId": call_id})


def session_calls(session: VoiceRecord) -> set[str]:
    return {e["call_id"] for e in session.sent if e["type"] == "response.function_call_arguments.done"}


def test_end_call_tool_hangs_up_after_the_goodbye_played(world) -> None:
    w, d = world, world.daemon
    w.openai.voice.replies.put({"text": "Goodbye, take care!", "tool": {"name": "end_call", "arguments": {}}})
    w.openai.transcripts.put("That is all, bye")
    call_id, client, session = start_conversation(w)
    client.play(speech_like(0.6) + silence(0.5))
    record = d.wait_state(call_id, "hangup-bot", timeout=20)
    assert ("bot", "Goodbye, take care!") in [(e["speaker"], e["text"]) for e in record["transcript"]]
    item = session.responses[1]["item_id"]
    goodbye_marks = [m for m in client.marks if m.name.endswith("|" + item)]
    assert goodbye_marks and all(m.echoed_at and not m.cleared for m in goodbye_marks)  # heard to its end
    outputs = [e for e in session.events if e["type"] == "conversation.item.create"
               and e["item"]["type"] == "function_call_output"]
    assert len(outputs) == 1 and outputs[0]["item"]["call_id"] in session_calls(session)


def test_continue_and_speak_on_a_realtime_call(world) -> None:
    w, d = world, world.daemon
    w.openai.transcripts.put("My name is Ada")
    call_id, client, session = start_conversation(w)
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(d.rpc(
        "voicecall.continue", {"callId": call_id, "message": "What is your name?"}, timeout=30)))
    t.start()
    d.wait(lambda: any(r["text"] == "What is your name?" for r in session.responses), timeout=10,
           what="the question said by the model")
    d.wait(lambda: d.rpc("voicecall.status", {"callId": call_id})["state"] == "listening", timeout=15)
    client.play(speech_like(0.6) + silence(0.5))
    t.join(20)
    assert result == {"callId": call_id, "transcript": "My name is Ada"}
    # The continue's turn went to the agent: the model was told not to answer it.
    updates = [e["session"] for e in session.events if e["type"] == "session.update"]
    assert any(u["audio"]["input"]["turn_detection"]["create_response"] is False for u in updates[1:])
    assert len(session.responses) == 2  # the opening and the question, no reply of its own
    d.rpc("voicecall.speak", {"callId": call_id, "message": "Thank you, Ada."})
    d.wait(lambda: any(r["text"] == "Thank you, Ada." for r in session.responses), timeout=10, what="speak")
    assert transcript(w, call_id)[-3:] == [("bot", "What is your name?"), ("user", "My name is Ada"),
                                           ("bot", "Thank you, Ada.")]
    d.rpc("voicecall.end", {"callId": call_id})


def test_notify_mode_says_the_message_and_hangs_up_once_played(start_daemon) -> None:
    w = make_world(start_daemon)
    try:
        d = w.daemon
        call_id = d.rpc("voicecall.initiate", {"message": "Your parcel arrives today", "mode": "notify"})["callId"]
        client = w.client()
        session = voice_session(w)
        record = d.wait(lambda: (r := d.rpc("voicecall.status", {"callId": call_id}))["state"] in (
            "completed", "hangup-bot") and r, timeout=20, what="the end of the call")
        assert [(e["speaker"], e["text"]) for e in record["transcript"]] == [("bot", "Your parcel arrives today")]
        item = session.responses[0]["item_id"]
        assert session.responses[0]["text"] == "Your parcel arrives today"
        last = [m for m in client.marks if m.name.endswith("|" + item)][-1]
        assert last.echoed_at is not None and not last.cleared
        update = next(e for e in session.events if e["type"] == "session.update")["session"]
        assert update["audio"]["input"]["turn_detection"]["create_response"] is False  # nobody to converse with
    finally:
        w.close()


def test_a_dropped_session_reconnects_with_the_conversation_so_far(world) -> None:
    w, d = world, world.daemon
    w.openai.voice.replies.put("First answer.")
    w.openai.voice.replies.put("Second answer.")
    w.openai.transcripts.put("First question")
    w.openai.transcripts.put("Second question")
    call_id, client, session = start_conversation(w, "Welcome")
    converse(w, call_id, client, "First answer.")
    w.openai.drop_realtime_after(3)
    client.play(silence(0.2))
    d.wait(lambda: session.dropped, timeout=10, what="the dropped session")
    second = voice_session(w, 1)
    d.wait(lambda: len(second.created_items) >= 3, timeout=15, what="the re-seeded conversation")
    seeded = [(i["role"], i["content"][0]["text"]) for i in second.created_items]
    assert seeded == [("assistant", "Welcome"), ("user", "First question"), ("assistant", "First answer.")]
    converse(w, call_id, client, "Second answer.")
    assert "realtime voice session dropped" in d.log()
    d.rpc("voicecall.end", {"callId": call_id})


def test_the_call_falls_back_to_the_cascade_when_the_service_is_unreachable(start_daemon) -> None:
    refused = free_port()  # nothing listens there
    w = make_world(start_daemon, url=f"ws://127.0.0.1:{refused}/v1/realtime")
    try:
        d = w.daemon
        w.openai.transcripts.put("Hello, anyone there?")
        w.openai.chat_replies.put("Yes, I am here.")
        call_id = d.rpc("voicecall.initiate", {"message": "Hi from the fallback", "mode": "conversation"})["callId"]
        client = w.client()
        d.wait_state(call_id, "listening", timeout=20)
        assert [r.body["input"] for r in w.openai.speech_requests] == ["Hi from the fallback"]  # said by TTS
        client.play(speech_like(0.6) + silence(0.5))
        d.wait(lambda: ("bot", "Yes, I am here.") in transcript(w, call_id), timeout=15, what="the LLM's reply")
        assert d.log().count("realtime voice unavailable") == 1
        assert "the call goes on with speech-to-text and text-to-speech" in d.log()
        d.rpc("voicecall.end", {"callId": call_id})
    finally:
        w.close()


def test_inbound_greeting_and_a_socket_agent_on_a_realtime_call(start_daemon) -> None:
    w = make_world(start_daemon, responder="socket",
                   extra={"inboundPolicy": "open", "inboundGreeting": "Thanks for calling the test line",
                          "responseTimeoutMs": 10000})
    agent = Events(w.daemon)
    try:
        d = w.daemon
        w.openai.transcripts.put("What time is it")
        webhook = f"http://127.0.0.1:{w.port}/voice/webhook"
        w.twilio.inbound_call("+15557770000", FROM, webhook, webhook + "?type=status")
        call_id = d.wait(lambda: d.rpc("voicecall.list")["calls"], what="the inbound call")[0]["callId"]
        client = w.client()
        session = voice_session(w)
        d.wait_state(call_id, "listening", timeout=15)
        assert session.responses[0]["text"] == "Thanks for calling the test line"  # the greeting, verbatim
        update = next(e for e in session.events if e["type"] == "session.update")["session"]
        assert update["audio"]["input"]["turn_detection"]["create_response"] is False  # the agent answers
        client.play(speech_like(0.6) + silence(0.5))
        turn = agent.until("call.turn")
        assert turn["callId"] == call_id and turn["data"]["text"] == "What time is it"
        d.rpc("voicecall.speak", {"callId": call_id, "message": "It is noon."})
        d.wait(lambda: ("bot", "It is noon.") in transcript(w, call_id), what="the agent's answer")
        d.wait(lambda: any(r["text"] == "It is noon." for r in session.responses), what="said by the model")
        assert [r["text"] for r in session.responses] == ["Thanks for calling the test line", "It is noon."]
        d.rpc("voicecall.end", {"callId": call_id})
    finally:
        agent.close()
        w.close()


def test_the_transfer_call_tool_hands_the_call_over(start_daemon) -> None:
    target = "+15550009999"
    w = make_world(start_daemon, extra={"transfer": {"allowTo": [target]}})
    try:
        d = w.daemon
        w.openai.voice.replies.put({"text": "Let me put you through.",
                                    "tool": {"name": "transfer_call", "arguments": {"to": target}}})
        w.openai.transcripts.put("I want a person")
        call_id, client, session = start_conversation(w)
        update = next(e for e in session.events if e["type"] == "session.update")["session"]
        assert [t["name"] for t in update["tools"]] == ["end_call", "transfer_call"]
        client.play(speech_like(0.6) + silence(0.5))
        record = d.wait_state(call_id, "transferred", timeout=20)
        assert ("bot", "Let me put you through.") in [(e["speaker"], e["text"]) for e in record["transcript"]]
    finally:
        w.close()


def test_speech_is_not_held_for_a_stream_the_carrier_will_not_open(start_daemon) -> None:
    # Without streaming.openaiApiKey Twilio calls do not stream (realtime has
    # its own key): the opening goes into the first TwiML as <Say> at once,
    # rather than waiting for a stream that never comes.
    w = make_world(start_daemon, apiKey="sk-test", extra={"streaming": {"enabled": True}})
    try:
        d = w.daemon
        call_id = d.rpc("voicecall.initiate", {"message": "No stream today", "mode": "conversation"})["callId"]
        record = d.wait_state(call_id, "listening", timeout=15)
        sid = record["providerCallId"]
        assert "No stream today" in w.twilio.calls[sid].twiml[0] and "<Stream" not in w.twilio.calls[sid].twiml[0]
        assert not w.openai.realtime_sessions
    finally:
        w.close()
