"""End to end: Telnyx media streaming through the real daemon.

FakeTelnyx places (or delivers) the call and, as Telnyx does for a dial or
answer with ``stream_url``, opens the WebSocket to the daemon's stream
endpoint once the call is answered: ``connected``, ``start`` with the
call's ``call_control_id`` and ``media_format``, then real-time µ-law (or
A-law) frames. FakeOpenAI is the Realtime speech-to-text service and the
TTS endpoint.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import simple_websocket
from daemon import Daemon

from voicecalld.media import alaw, mulaw
from voicecalld.testing._telnyx_media import silence, speech_like
from voicecalld.testing.fake_openai import FakeOpenAI
from voicecalld.testing.fake_telnyx import FakeCall, FakeTelnyx, MediaStreamClient
from voicecalld.testing.ports import free_port

OURS, CALLEE, CALLER = "+15550009999", "+15550001111", "+15557770000"


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("Threads:"))


class World:
    def __init__(self, start_daemon: Any, fake: FakeTelnyx, **overrides: Any) -> None:
        self.fake = fake
        self.openai = FakeOpenAI(api_key="sk-test", tts_ms_per_char=8)
        self.openai.start()
        self.port = free_port()
        streaming = {"enabled": True, "openaiApiKey": "sk-test", "realtimeUrl": self.openai.realtime_url,
                     "silenceDurationMs": 300, **overrides.pop("streaming", {})}
        config = {"provider": "telnyx", "fromNumber": OURS, "toNumber": CALLEE, "maxConcurrentCalls": 5,
                  "publicUrl": f"http://127.0.0.1:{self.port}", "serve": {"port": self.port},
                  "telnyx": {"apiKey": fake.api_key, "connectionId": fake.connection_id,
                             "publicKey": fake.public_key_b64, "apiBaseUrl": fake.base_url},
                  "outbound": {"notifyHangupDelaySec": 0.05},
                  "streaming": streaming, "tts": {"baseUrl": self.openai.base_url},
                  "responseBaseUrl": self.openai.base_url, "responseApiKey": "sk-test",
                  "responder": "off", "transcriptTimeoutMs": 15000, **overrides}
        self.daemon: Daemon = start_daemon(config)
        self.webhook_url = f"http://127.0.0.1:{self.port}/voice/webhook"

    def close(self) -> None:
        self.openai.stop()


@contextmanager
def make_world(start_daemon: Any, fake_options: dict[str, Any] | None = None, **overrides: Any) -> Iterator[World]:
    with FakeTelnyx(seed=7, ms_per_char=2.0, answer_after=0.03, **(fake_options or {})) as fake:
        world = World(start_daemon, fake, **overrides)
        try:
            yield world
        finally:
            world.close()


@pytest.fixture
def world(start_daemon: Any) -> Iterator[World]:
    with make_world(start_daemon) as w:
        yield w


def opened(w: World, call_id: str) -> None:
    """The daemon bridged the call's stream."""
    d = w.daemon
    d.wait(lambda: d.rpc("daemon.status")["media"]["openStreams"] >= 1, 10, "the stream to be bridged")


def dial(w: World, message: str = "Hi, this is the stream test", mode: str = "conversation",
         *, stream_first: bool = True) -> tuple[str, FakeCall, MediaStreamClient]:
    """Place a call; with ``stream_first`` the daemon hears of the answer
    only once the stream is bridged, so its first words go over the stream."""
    if stream_first:
        w.fake.hold_webhook("call.answered")
    call_id = w.daemon.rpc("voicecall.initiate", {"message": message, "mode": mode})["callId"]
    call = w.fake.wait_for(lambda: w.fake.last_call, 10, "the dial")
    client = w.fake.wait_stream(call.call_control_id, 10)
    if stream_first:
        opened(w, call_id)
        assert w.fake.release_webhook("call.answered") == 1
    return call_id, call, client


def transcript(d: Daemon, call_id: str) -> list[tuple[str, str]]:
    return [(e["speaker"], e["text"]) for e in d.rpc("voicecall.status", {"callId": call_id})["transcript"]]


def test_the_dial_asks_for_a_bidirectional_pcmu_stream_with_a_token(world: World) -> None:
    call_id, call, client = dial(world)
    body = next(r for r in world.fake.requests if r.path == "/v2/calls").json
    url = urlsplit(body["stream_url"])
    assert (url.scheme, url.netloc, url.path) == ("wss", f"127.0.0.1:{world.port}", "/voice/stream")
    query = parse_qs(url.query)
    assert query["call"] == [call_id] and len(query["token"][0]) >= 32
    assert (body["stream_track"], body["stream_bidirectional_mode"], body["stream_bidirectional_codec"]) == (
        "inbound_track", "rtp", "PCMU")
    start = client.sent[1]  # after connected
    assert start["event"] == "start" and start["start"]["call_control_id"] == call.call_control_id
    world.fake.wait_event(call.call_control_id, "streaming.started", 10)
    world.daemon.rpc("voicecall.end", {"callId": call_id})


def test_streamed_conversation_continue_returns_the_transcript(world: World) -> None:
    d, fake = world.daemon, world.fake
    call_id, call, client = dial(world)
    # The opening message is spoken over the stream: TTS audio, then its mark, echoed once played.
    client.wait_for(lambda: any(m.echoed_at for m in client.marks), timeout=10)
    d.wait_state(call_id, "listening", timeout=15)
    world.openai.transcripts.put("yes, deploy it")
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(d.rpc("voicecall.continue",
                                                            {"callId": call_id, "message": "Should I deploy?"},
                                                            timeout=30)))
    t.start()
    client.wait_for(lambda: sum(1 for m in client.marks if m.echoed_at) >= 2, timeout=10)
    assert fake.callee_says(call.call_control_id, "yes, deploy it")
    t.join(20)
    assert result == {"callId": call_id, "transcript": "yes, deploy it"}
    assert transcript(d, call_id)[-2:] == [("bot", "Should I deploy?"), ("user", "yes, deploy it")]
    # Telnyx neither spoke nor transcribed: the stream did both.
    assert call.said == [] and "transcription_start" not in call.command_names
    speech = [r.body["input"] for r in world.openai.speech_requests]
    assert speech[:2] == ["Hi, this is the stream test", "Should I deploy?"]
    assert len(world.openai.realtime_sessions[0].audio_bytes) >= 160 * 30  # the caller reached the transcriber
    d.rpc("voicecall.end", {"callId": call_id})
    fake.wait_event(call.call_control_id, "streaming.stopped", 10)


def test_a_stream_that_comes_after_the_opening_takes_over_listening(world: World) -> None:
    """The usual order on real Telnyx: call.answered first (the opening is
    Telnyx's speak, listening starts with transcription), then the stream:
    transcription is stopped and the stream hears the caller from then on."""
    d, fake = world.daemon, world.fake
    call_id, call, client = dial(world, stream_first=False)
    d.wait_state(call_id, "listening", timeout=15)
    opened(world, call_id)
    # Transcription, if it started before the stream was bridged, is stopped.
    fake.wait_for(lambda: not call.transcribing, 10, "transcription to stop")
    world.openai.transcripts.put("over the stream")
    assert fake.callee_says(call.call_control_id, "over the stream")
    d.wait(lambda: transcript(d, call_id)[-1] == ("user", "over the stream"), 15, "the streamed transcript")
    d.rpc("voicecall.end", {"callId": call_id})


def test_notify_hangs_up_once_the_message_has_played(world: World) -> None:
    d = world.daemon
    call_id, call, client = dial(world, "Your build is green", mode="notify")
    mark = client.wait_for(lambda: any(m.echoed_at for m in client.marks), timeout=10)
    assert mark
    record = d.wait_state(call_id, "completed", timeout=15)
    echoed = next(m for m in client.marks if m.echoed_at)
    hangup = next(c for c in call.commands if c.name == "hangup")
    assert hangup.accepted and call.said == [] and echoed.play_done <= (call.ended_at or 0)
    assert record["transcript"][0]["text"] == "Your build is green"


def test_barge_in_sends_clear_and_marks_the_bot_interrupted(world: World) -> None:
    d, fake = world.daemon, world.fake
    call_id, call, client = dial(world)
    d.wait_state(call_id, "listening", timeout=15)
    world.openai.transcripts.put("stop talking")
    d.rpc("voicecall.speak", {"callId": call_id, "message": "a very long announcement " * 20})
    client.wait_for(lambda: len(client.received_media) > 20, timeout=10)
    assert fake.stream_audio(call.call_control_id, speech_like(0.5) + silence(0.5))  # the caller talks over it
    client.wait_for(lambda: client.clears, timeout=10)
    assert {"event": "clear"} in client.received
    d.wait(lambda: transcript(d, call_id)[-1] == ("user", "stop talking"), 15, "the caller's words")
    bot = [e for e in d.rpc("voicecall.status", {"callId": call_id})["transcript"] if e["speaker"] == "bot"][-1]
    assert bot["interrupted"] is True
    d.rpc("voicecall.end", {"callId": call_id})


def test_dtmf_frames_become_events_once(world: World) -> None:
    d, fake = world.daemon, world.fake
    call_id, call, client = dial(world)
    with d.client() as sub:
        sub.call("events.subscribe", {"callId": call_id})
        fake.callee_presses(call.call_control_id, "7")  # a dtmf frame, and call.dtmf.received too
        names: list[str] = []
        for event in sub.events():
            names.append(event["event"])
            if event["event"] == "call.dtmf":
                assert event["data"] == {"digits": "7", "direction": "received"}
                # Telnyx's webhook for the same key has been processed: it adds nothing.
                fake.wait_event(call.call_control_id, "call.dtmf.received", 10, ok=True)
                d.wait(lambda: (c := d.rpc("daemon.status")["carrier"])["processedEvents"] == c["acceptedEvents"],
                       10, "the webhooks to be processed")
                d.rpc("voicecall.end", {"callId": call_id})
            if event["event"] == "call.ended":
                break
    assert names.count("call.dtmf") == 1


def test_an_inbound_call_is_answered_with_a_stream(start_daemon: Any) -> None:
    with make_world(start_daemon, inboundPolicy="open") as world:
        inbound(world)


def inbound(world: World) -> None:
    d, fake = world.daemon, world.fake
    ccid = fake.inbound_call(CALLER, OURS, world.webhook_url)
    client = fake.wait_stream(ccid, 10)
    answer = next(c for c in fake.calls[ccid].commands if c.name == "answer")
    query = parse_qs(urlsplit(answer.params["stream_url"]).query)
    assert answer.params["stream_bidirectional_mode"] == "rtp" and answer.params["stream_track"] == "inbound_track"
    call_id = query["call"][0]
    opened(world, call_id)
    assert client.connected
    d.rpc("voicecall.end", {"callId": call_id})
    fake.wait_event(ccid, "call.hangup", 10)


def test_a_law_and_out_of_order_frames_reach_speech_to_text_as_ordered_mu_law(start_daemon: Any) -> None:
    with make_world(start_daemon, {"stream_encoding": "PCMA", "stream_out_of_order": 4}) as world:
        a_law_out_of_order(world)


def a_law_out_of_order(world: World) -> None:
    d = world.daemon
    call_id, call, client = dial(world)
    assert client.sent[1]["start"]["media_format"] == {"encoding": "PCMA", "sample_rate": 8000, "channels": 1}
    d.wait_state(call_id, "listening", timeout=15)
    world.openai.transcripts.put("bonjour")
    # A ramp: each frame's samples say where it belongs, so order is checkable after transcoding.
    frames = 40
    pcm = b"".join(int(-20000 + 1000 * i).to_bytes(2, "little", signed=True) * 160 for i in range(frames))
    session = world.openai.wait_for_session(0)
    before = len(session.audio_bytes)
    assert client.play(alaw.encode(pcm)) == frames
    assert client.play(speech_like(0.6, "PCMA") + silence(0.8, "PCMA")) > 0
    d.wait(lambda: transcript(d, call_id)[-1] == ("user", "bonjour"), 15, "the transcript")
    got = bytes(session.audio_bytes[before:before + 160 * frames])
    expected = mulaw.encode(alaw.decode(alaw.encode(pcm)))
    assert got == expected  # in order, nothing lost, transcoded to µ-law
    chunks = [int(m["media"]["chunk"]) for m in client.sent if m["event"] == "media"]
    assert chunks != sorted(chunks)  # they really were sent out of order
    d.rpc("voicecall.end", {"callId": call_id})
    client.wait_closed(10)
    assert "caller frames came too late" not in d.log()


@pytest.mark.parametrize("behaviour", ["fail", "silent"])
def test_without_a_stream_the_call_goes_on_with_transcription_and_speak(start_daemon: Any, behaviour: str) -> None:
    with make_world(start_daemon, {"stream_behaviour": behaviour}) as world:
        without_a_stream(world, behaviour)


def without_a_stream(world: World, behaviour: str) -> None:
    d, fake = world.daemon, world.fake
    call_id = d.rpc("voicecall.initiate", {"message": "Can you hear me?", "mode": "conversation"})["callId"]
    call = fake.wait_for(lambda: fake.last_call, 10, "the dial")
    if behaviour == "fail":
        fake.wait_event(call.call_control_id, "streaming.failed", 10)
    d.wait_state(call_id, "listening", timeout=15)
    fake.wait_for(lambda: call.transcribing, 10, "transcription to start")
    assert call.said == ["Can you hear me?"]  # Telnyx's own speech
    assert fake.callee_says(call.call_control_id, "loud and clear")
    d.wait(lambda: transcript(d, call_id)[-1] == ("user", "loud and clear"), 15, "the transcript")
    d.rpc("voicecall.speak", {"callId": call_id, "message": "Good."})
    fake.wait_for(lambda: call.said[-1:] == ["Good."], 10, "speak")
    if behaviour == "fail":
        assert "the Telnyx media stream failed (connection_failed)" in d.log()
    d.rpc("voicecall.end", {"callId": call_id})


def test_a_stream_that_stops_mid_call_hands_listening_back_to_transcription(world: World) -> None:
    d, fake = world.daemon, world.fake
    call_id, call, client = dial(world)
    d.wait_state(call_id, "listening", timeout=15)
    assert "transcription_start" not in call.command_names
    client.close()  # Telnyx's side goes away: streaming.stopped follows
    fake.wait_event(call.call_control_id, "streaming.stopped", 10)
    fake.wait_for(lambda: call.transcribing, 10, "transcription to take over")
    assert fake.callee_says(call.call_control_id, "still here")
    d.wait(lambda: transcript(d, call_id)[-1] == ("user", "still here"), 15, "the transcript")
    d.rpc("voicecall.end", {"callId": call_id})


def test_stream_teardown_leaves_no_threads(world: World) -> None:
    d = world.daemon

    def threads() -> int:
        """The daemon's threads, less Telnyx's webhook workers (which stay
        a while, idle, once a call's webhooks have made them)."""
        return threads_of(d.proc.pid) - d.rpc("daemon.status")["carrier"]["eventWorkers"]

    baseline = threads()
    call_id, call, client = dial(world)
    client.play(silence(0.3))
    assert threads() > baseline
    d.rpc("voicecall.end", {"callId": call_id})
    assert client.wait_closed(10)  # the carrier's socket ...
    # ... and speech-to-text's are closed, and the stream's threads are gone.
    d.wait(lambda: all(session.closed for session in world.openai.realtime_sessions), 10, "STT sockets closed")
    d.wait(lambda: threads() <= baseline, timeout=10, what="thread count back to baseline")
    assert d.rpc("daemon.status")["media"]["openStreams"] == 0


# --- admission ----------------------------------------------------------------------------


def raw_start(w: World, query: str, start: dict[str, Any] | None) -> int | None:
    """Connect as Telnyx would, send ``start`` (or nothing); the close code."""
    ws = simple_websocket.Client.connect(f"ws://127.0.0.1:{w.port}/voice/stream{query}")
    try:
        ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
        if start is not None:
            ws.send(json.dumps({"event": "start", "sequence_number": "1", "stream_id": "s-1", "start": {
                "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}, **start}}))
        with pytest.raises(simple_websocket.ConnectionClosed) as info:
            while True:
                ws.receive(timeout=8)
        return info.value.reason
    finally:
        try:
            ws.close()
        except simple_websocket.ConnectionClosed:
            pass


def test_streams_without_the_right_token_or_call_are_closed_with_1008_and_change_nothing(world: World) -> None:
    d, fake = world.daemon, world.fake
    call_id, call, client = dial(world)
    body = next(r for r in fake.requests if r.path == "/v2/calls").json
    token = parse_qs(urlsplit(body["stream_url"]).query)["token"][0]
    ccid = call.call_control_id
    before = d.wait_state(call_id, "listening", timeout=15)
    cases = [
        (f"?call={call_id}&token=guessed", {"call_control_id": ccid}),            # wrong token
        (f"?call={call_id}&token={token}", {"call_control_id": "v3:someone-else"}),  # wrong call
        (f"?call={call_id}&token={token}", {}),                                    # no call id at all
        (f"?call=nope&token={token}", {"call_control_id": ccid}),                  # another call's token
        ("", {"call_control_id": ccid}),                                           # no token
        (f"?call={call_id}&token={token}", None),                                  # no start: the 5 s deadline
    ]
    for query, start in cases:
        assert raw_start(world, query, start) == 1008, (query, start)
    assert client.connected  # the real stream is untouched ...
    assert d.rpc("daemon.status")["media"]["openStreams"] == 1
    after = d.rpc("voicecall.status", {"callId": call_id})
    assert after["state"] == before["state"] and after["transcript"] == before["transcript"]
    assert "transcription_start" not in call.command_names  # ... and it still listens
    d.rpc("voicecall.end", {"callId": call_id})


def test_the_auto_responder_answers_an_inbound_caller_over_the_stream(start_daemon: Any) -> None:
    with make_world(start_daemon, inboundPolicy="open", inboundGreeting="Hello, how can I help?",
                    responder="llm") as world:
        auto_responder(world)


def auto_responder(world: World) -> None:
    d, fake, openai = world.daemon, world.fake, world.openai
    fake.hold_webhook("call.answered")
    ccid = fake.inbound_call(CALLER, OURS, world.webhook_url)
    client = fake.wait_stream(ccid, 10)
    call_id = parse_qs(urlsplit(next(c for c in fake.calls[ccid].commands if c.name == "answer")
                                .params["stream_url"]).query)["call"][0]
    opened(world, call_id)
    assert fake.release_webhook("call.answered") == 1
    d.wait_state(call_id, "listening", timeout=15)
    openai.transcripts.put("what time is it")
    openai.chat_replies.put("It is noon.")
    assert fake.callee_says(ccid, "what time is it")
    d.wait(lambda: transcript(d, call_id)[-1] == ("bot", "It is noon."), 15, "the responder's reply")
    assert transcript(d, call_id) == [("bot", "Hello, how can I help?"), ("user", "what time is it"),
                                      ("bot", "It is noon.")]
    client.wait_for(lambda: sum(1 for m in client.marks if m.echoed_at) >= 2, timeout=10)  # both said over the stream
    assert fake.calls[ccid].said == []
    assert [r.body["input"] for r in openai.speech_requests][-1] == "It is noon."
    d.rpc("voicecall.end", {"callId": call_id})


def test_a_transfer_message_on_a_streamed_call_is_telnyx_speech_then_the_transfer(start_daemon: Any) -> None:
    """The transfer waits for the message's call.speak.ended, so that
    message is Telnyx's speak even while the stream speaks everything else."""
    with make_world(start_daemon, transfer={"allowTo": ["+15550004444"]}) as world:
        d = world.daemon
        call_id, call, client = dial(world)
        d.wait_state(call_id, "listening", timeout=15)
        result = d.rpc("voicecall.transfer", {"callId": call_id, "to": "+15550004444",
                                              "message": "Putting you through"}, timeout=30)
        assert result["endReason"] == "transferred"
        names = [c.name for c in call.commands if c.accepted]
        assert names[-2:] == ["speak", "transfer"] and call.said == ["Putting you through"]


def test_dtmf_sent_on_a_streamed_call_is_tones_on_the_stream(world: World) -> None:
    d = world.daemon
    call_id, call, client = dial(world)
    d.wait_state(call_id, "listening", timeout=15)
    before = len(client.received_media)
    d.rpc("voicecall.dtmf", {"callId": call_id, "digits": "1"})
    client.wait_for(lambda: len(client.received_media) > before and any(
        m.get("event") == "mark" and str(m.get("mark", {}).get("name", "")).startswith("dtmf-")
        for m in client.received), timeout=10)
    assert "send_dtmf" not in call.command_names
    d.rpc("voicecall.end", {"callId": call_id})


def test_failed_text_to_speech_is_said_with_telnyx_speak_and_the_stream_keeps_listening(world: World) -> None:
    d, fake = world.daemon, world.fake
    call_id, call, client = dial(world)
    d.wait_state(call_id, "listening", timeout=15)
    world.openai.inject_error("speech", 503, "The engine is currently overloaded", times=2)
    world.openai.transcripts.put("yes, deploy it")
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(d.rpc("voicecall.continue",
                                                            {"callId": call_id, "message": "Should I deploy?"},
                                                            timeout=30)))
    t.start()
    # Refused twice (the request and its one retry): Telnyx's speak says it instead.
    fake.wait_for(lambda: "Should I deploy?" in call.said, 15, "Telnyx speak of the question")
    fake.wait_event(call.call_control_id, "call.speak.ended", 10, ok=True)
    assert fake.callee_says(call.call_control_id, "yes, deploy it")  # heard through the stream
    t.join(30)
    assert result == {"callId": call_id, "transcript": "yes, deploy it"}
    assert client.connected and "transcription_start" not in call.command_names
    assert "the carrier says utterance" in d.log()
    d.rpc("voicecall.end", {"callId": call_id})
