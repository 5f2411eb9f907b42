"""Pipelined replies end to end: the real daemon, a simulated Twilio media
stream (FakeTwilio + MediaStreamClient), FakeOpenAI streaming its chat
replies token by token. The reply is heard while the model is still
writing it; a barge-in stops it, cancels the model's stream, and the
transcript keeps only what was heard; the opening is spoken over the
stream in the TTS voice."""

from __future__ import annotations

from typing import Any

import pytest
from test_responder import inbound, llm_config, wait_log
from test_streaming import FROM, TO, World

from voicecalld.testing.fake_openai import FakeOpenAI
from voicecalld.testing.media_client import MediaStreamClient, silence, speech_like

OPENING = "Hi, this is the pipeline test"


@pytest.fixture
def world(start_daemon: Any) -> Any:
    w = World(start_daemon, llm=True)
    yield w
    w.close()


def call(world: World) -> tuple[str, MediaStreamClient]:
    d = world.daemon
    call_id = d.rpc("voicecall.initiate", {"message": OPENING, "mode": "conversation"})["callId"]
    client = world.client()
    d.wait_state(call_id, "listening", timeout=20)  # the opening has played (its mark came back)
    return call_id, client


def status(world: World, call_id: str) -> dict[str, Any]:
    return world.daemon.rpc("voicecall.status", {"callId": call_id})


def bot_lines(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in record["transcript"] if e["speaker"] == "bot"]


def test_the_reply_is_heard_before_the_model_has_finished_writing_it(world: World) -> None:
    d, openai = world.daemon, world.openai
    reply = "Sure, I can help with that. " + " ".join(f"word{i}" for i in range(40)) + "."
    openai.chat_replies.put({"content": reply, "token_s": 0.15})  # some six seconds of generation
    call_id, client = call(world)
    before = len(client.received_media)
    openai.transcripts.put("can you help me")
    client.play(silence(0.2) + speech_like(0.6) + silence(0.6))
    # The first sentence's audio reaches the caller while the model is still writing.
    client.wait_for(lambda: len(client.received_media) > before + 5, timeout=20)
    request = openai.chat_requests[-1]
    assert request.body["stream"] is True
    assert not request.stream_finished and request.tokens_sent < 40
    # All of it is said, as one line of the transcript; the turn was measured.
    assert request.finished.wait(30) and request.stream_finished
    record = d.wait(lambda: (r := status(world, call_id))["state"] == "listening"
                    and bot_lines(r)[-1]["text"].endswith("word39.") and r, 30, "the whole reply")
    assert [e["text"] for e in bot_lines(record)] == [OPENING, reply]
    assert len(record["turns"]) == 1 and record["turns"][0]["latencyMs"] > 0
    speech = [r.body["input"] for r in openai.speech_requests]
    assert speech[:2] == [OPENING, "Sure, I can help with that."]
    d.rpc("voicecall.end", {"callId": call_id})


def test_barge_in_cancels_the_stream_and_keeps_only_what_was_heard(world: World) -> None:
    d, openai = world.daemon, world.openai
    openai.tts_ms_per_char = 60  # the first sentence plays for about three seconds
    first = "Let me tell you about our opening hours today."
    second = "We open at nine."
    # Two sentences at once, then the model goes on slowly (the stream stays
    # open for half a minute unless it is cancelled).
    rest = " ".join(["and on Sundays we open later"] * 5) + "."
    openai.chat_replies.put({"content": f"{first} {second} {rest}", "slow_after": 15, "slow_token_s": 1.0})
    call_id, client = call(world)
    openai.transcripts.put("what are your hours")
    client.play(silence(0.2) + speech_like(0.6) + silence(0.6))
    d.wait(lambda: len(openai.chat_requests) == 1, 20, "the request")
    before = len(client.received_media)
    client.wait_for(lambda: len(client.received_media) > before + 25, timeout=20)  # half a second heard
    openai.transcripts.put("")  # (a cough: no words, so no new turn cancels anything)
    client.play(speech_like(0.5) + silence(0.6))  # the caller talks over the bot
    client.wait_for(lambda: client.clears, timeout=10)
    request = openai.chat_requests[0]
    assert request.finished.wait(10) and request.client_left and not request.stream_finished
    # The next request carries exactly what was heard, marked in the record.
    openai.transcripts.put("wait a moment")
    client.play(silence(0.2) + speech_like(0.6) + silence(0.6))
    d.wait(lambda: len(openai.chat_requests) == 2, 20, "the request for the caller's next words")
    messages = openai.chat_requests[1].body["messages"]
    assert messages[-2:] == [{"role": "assistant", "content": first}, {"role": "user", "content": "wait a moment"}]
    record = status(world, call_id)
    heard = [e for e in bot_lines(record) if e["text"] == first]
    assert heard and heard[0]["interrupted"] is True
    assert not any(second in e["text"] for e in record["transcript"])
    assert [r.body["input"] for r in openai.speech_requests].count(second) <= 1  # synthesized ahead, never played
    d.rpc("voicecall.end", {"callId": call_id})


def test_the_opening_is_spoken_over_the_stream_in_the_tts_voice(start_daemon: Any) -> None:
    w = World(start_daemon, tts={"voice": "coral"})
    try:
        call_id, client = call(w)
        speech = w.openai.speech_requests[0].body
        assert speech["input"] == OPENING and speech["voice"] == "coral"
        assert client.marks and client.marks[0].echoed_at is not None
        twilio_call = w.twilio.wait_call(to=TO)
        assert twilio_call.said == []  # never the carrier's voice
        w.daemon.rpc("voicecall.end", {"callId": call_id})
    finally:
        w.close()


# -- on the mock carrier (the carrier speaks: first sentence, then the rest) --

@pytest.fixture
def fake() -> Any:
    with FakeOpenAI(api_key="sk-test") as f:
        yield f


def test_a_server_that_does_not_stream_still_works(start_daemon: Any, fake: FakeOpenAI) -> None:
    fake.chat_streaming = False  # answers "stream": true with one JSON body
    fake.chat_replies.put("Of course. Your table is booked.")
    d = start_daemon(llm_config(fake))
    call_id = inbound(d)
    d.rpc("mock.say", {"callId": call_id, "text": "book a table"})
    record = d.wait(lambda: (r := d.rpc("voicecall.status", {"callId": call_id}))["state"] == "listening"
                    and r["transcript"][-1]["speaker"] == "bot" and len(r["transcript"]) == 3 and r,
                    what="the reply")
    # Said as the carrier speaks: the first sentence, then the rest; one line.
    assert record["transcript"][-1]["text"] == "Of course. Your table is booked."
    assert fake.chat_requests[0].body["stream"] is True


def test_a_stream_that_stalls_keeps_what_was_said(start_daemon: Any, fake: FakeOpenAI) -> None:
    # One sentence, then nothing more: the model's stream stalls mid-reply.
    fake.chat_replies.put({"content": "Let me check that. The answer is forty two.", "stall_after": 5})
    d = start_daemon(llm_config(fake, responseTimeoutMs=1500), args=["-v"])
    call_id = inbound(d)
    d.rpc("mock.say", {"callId": call_id, "text": "what is the answer"})
    wait_log(d, f"call {call_id}: the reply ended early (the reply stalled); keeping what was said")
    request = fake.chat_requests[0]
    assert request.finished.wait(10) and request.client_left and request.tokens_sent == 5
    record = d.wait_state(call_id, "listening")
    assert [(e["speaker"], e["text"]) for e in record["transcript"]][-2:] == [
        ("user", "what is the answer"), ("bot", "Let me check that.")]
    # The call goes on: the next turn is answered.
    fake.chat_replies.put("Forty two.")
    d.rpc("mock.say", {"callId": call_id, "text": "well?"})
    d.wait(lambda: d.rpc("voicecall.status", {"callId": call_id})["transcript"][-1]["text"] == "Forty two.",
           what="the next reply")


def test_hang_up_in_the_stream_comes_after_the_words_before_it(start_daemon: Any, fake: FakeOpenAI) -> None:
    fake.chat_replies.put({"content": "Glad I could help. Goodbye!",
                           "tool_call": {"name": "hang_up", "arguments": {"goodbye": "Bye."}}})
    d = start_daemon(llm_config(fake))
    call_id = inbound(d)
    d.rpc("mock.say", {"callId": call_id, "text": "that's all, thanks"})
    record = d.wait_state(call_id, "hangup-bot", timeout=20)
    last = record["transcript"][-1]
    assert (last["speaker"], last["text"]) == ("bot", "Glad I could help. Goodbye!")
    assert "Bye." not in [e["text"] for e in record["transcript"]]  # the words said win, as without streaming


def test_the_first_token_histogram_is_observed_at_the_first_token(make_engine: Any, fake: FakeOpenAI,
                                                                  monkeypatch: Any) -> None:
    import uuid

    from voicecalld import metrics
    from voicecalld.calls import CallEvent, EventType
    from voicecalld.responder import Responder

    seen: list[tuple[float, int]] = []
    real = metrics.LLM_FIRST_TOKEN.observe
    monkeypatch.setattr(metrics.LLM_FIRST_TOKEN, "observe",
                        lambda v: (seen.append((v, fake.chat_requests[-1].tokens_sent)), real(v)))
    fake.chat_first_token_s = 0.3  # the role chunk comes at once, the first token later
    fake.chat_replies.put({"content": "Hello there, friend of mine.", "stall_after": 1})
    e = make_engine(inboundPolicy="open", responseBaseUrl=fake.base_url, responseApiKey="sk-test",
                    responseTimeoutMs=1500)
    responder = Responder(e.manager, e.bus)
    try:
        call_id = e.provider.inbound("+15550002222", None)["callId"]
        e.wait_state(call_id, "listening")
        e.manager.handle_event(CallEvent(EventType.SPEECH, uuid.uuid4().hex, call_id=call_id, transcript="hi"))
        e.wait(lambda: seen, what="the first token")
        value, tokens = seen[0]
        assert tokens == 1 and value >= 0.3  # at the first token: not the role chunk, not the whole reply
        assert fake.chat_requests[0].finished.wait(10)  # the stalled request is given up
    finally:
        responder.stop()


def test_the_inbound_greeting_is_spoken_over_the_stream(start_daemon: Any) -> None:
    greeting = "Welcome to the test line, how can I help?"
    w = World(start_daemon, inboundPolicy="open", inboundGreeting=greeting, tts={"voice": "marin"})
    try:
        base = f"http://127.0.0.1:{w.port}/voice/webhook"
        sid = w.twilio.inbound_call("+15550003333", FROM, base, base + "?type=status")
        client = w.client()
        client.wait_for(lambda: any(m.echoed_at for m in client.marks), timeout=15)  # the greeting played
        speech = w.openai.speech_requests[0].body
        assert speech["input"] == greeting and speech["voice"] == "marin"
        assert w.twilio.calls[sid].said == []  # the stream opened at once; no <Say>
        call_id = w.daemon.rpc("voicecall.list")["calls"][0]["callId"]
        w.daemon.wait_state(call_id, "listening")
    finally:
        w.close()


def test_semantic_turn_detection_is_passed_to_the_realtime_session(start_daemon: Any) -> None:
    w = World(start_daemon, streaming={"turnDetection": "semantic_vad", "eagerness": "high"})
    try:
        call_id, client = call(w)
        session = w.openai.wait_for_session(0)
        update = next(e for e in session.events if e["type"] == "session.update")["session"]
        assert update["audio"]["input"]["turn_detection"] == {"type": "semantic_vad", "eagerness": "high"}
        w.daemon.rpc("voicecall.end", {"callId": call_id})
    finally:
        w.close()
