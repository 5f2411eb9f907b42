"""End to end: faults on Twilio Media Streams cost at most the one request
they hit. The real daemon, FakeTwilio and FakeOpenAI (see test_streaming);
a stalled or refused stream, a failed text-to-speech request, a flood of
refused upgrades."""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import simple_websocket
from test_media_faults import flood_until_stalled_or_cut, open_stalled_websocket
from test_streaming import TO, TOKEN, World, start_call, stream_url

from voicecalld.providers.twilio_signature import compute_signature
from voicecalld.testing.fake_twilio import StreamRequest
from voicecalld.testing.media_client import MediaStreamClient, silence, speech_like


@pytest.fixture
def world(start_daemon):
    w = World(start_daemon)
    yield w
    w.close()


def continue_in_background(w: World, call_id: str, message: str) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result.update(w.daemon.rpc("voicecall.continue", {"callId": call_id, "message": message}, timeout=40))
        except Exception as exc:  # noqa: BLE001 - reported by the test's assertion
            result["error"] = repr(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def next_client(w: World, after: int, timeout: float = 15.0) -> MediaStreamClient:
    """The media stream the call opens after ``after`` earlier ones."""
    return w.daemon.wait(lambda: len(w.clients) > after and w.clients[-1].connected and w.clients[-1], timeout,
                         "a new media stream")


def test_a_stream_peer_that_stops_reading_does_not_stall_other_calls(world: World) -> None:
    d = world.daemon
    call_id, client = start_call(world)
    session = world.openai.wait_for_session(0)
    ws_url, wss_url = stream_url(world)
    # Twilio-signed but never started, and never reading: every stream's
    # socket is read by one loop, which answers this one's pings.
    stalled = open_stalled_websocket(world.port, urlsplit(ws_url).path,
                                     {"X-Twilio-Signature": compute_signature(TOKEN, wss_url)})
    try:
        outcome = flood_until_stalled_or_cut(stalled)
        before = len(session.audio_bytes)
        client.play(silence(0.5))
        d.wait(lambda: len(session.audio_bytes) >= before + 25 * 160, 10, "the other call's audio at speech-to-text")
        assert outcome == "cut"
        assert "bytes unread; cutting it off" in d.log()
        assert requests.get(f"http://127.0.0.1:{world.port}/healthz", timeout=5).json()["status"] == "ok"
    finally:
        stalled.close()
    assert d.rpc("voicecall.status", {"callId": call_id})["state"] == "listening"
    d.rpc("voicecall.end", {"callId": call_id})


def test_failed_text_to_speech_is_said_with_say_and_the_call_goes_on(world: World) -> None:
    d = world.daemon
    call_id, client = start_call(world)
    d.wait_state(call_id, "listening", timeout=15)
    call = world.twilio.wait_call(to=TO)
    streams = len(world.clients)
    world.openai.inject_error("speech", 503, "The engine is currently overloaded", times=2)
    world.openai.transcripts.put("yes, deploy it")
    thread, result = continue_in_background(world, call_id, "Should I deploy?")
    # Refused twice (the request and its one retry), the question is said
    # with <Say>, which replaces the stream; the call streams again after it.
    world.twilio.wait_for(lambda: "Should I deploy?" in call.said, 15, message="<Say> of the question")
    # (The first request was the greeting, spoken over the stream.)
    assert [r.status for r in world.openai.speech_requests] == [200, 503, 503]
    again = next_client(world, streams)
    again.play(silence(0.2) + speech_like(0.6) + silence(0.6))
    thread.join(30)
    assert result == {"callId": call_id, "transcript": "yes, deploy it"}
    record = d.rpc("voicecall.status", {"callId": call_id})
    assert record["state"] == "listening" and record["error"] is None
    assert "the carrier says utterance u2 instead" in d.log()

    # The next turn speaks over the stream again.
    world.openai.transcripts.put("no, that's all")
    thread, result = continue_in_background(world, call_id, "Anything else?")
    again.wait_for(lambda: any(m.echoed_at for m in again.marks), timeout=15)
    again.play(silence(0.2) + speech_like(0.6) + silence(0.6))
    thread.join(30)
    assert result == {"callId": call_id, "transcript": "no, that's all"}
    assert "Anything else?" not in call.said
    assert world.openai.speech_requests[-1].body["input"] == "Anything else?"
    d.rpc("voicecall.end", {"callId": call_id})
    assert d.wait_state(call_id, "hangup-bot")["error"] is None


def test_text_to_speech_refused_once_is_retried_over_the_stream(world: World) -> None:
    d = world.daemon
    call_id, client = start_call(world)
    d.wait_state(call_id, "listening", timeout=15)
    call = world.twilio.wait_call(to=TO)
    world.openai.inject_error("speech", 429, "Rate limit reached", code="rate_limit_exceeded")
    d.rpc("voicecall.speak", {"callId": call_id, "message": "One moment please"})
    mark = client.wait_for(lambda: sum(1 for m in client.marks if m.echoed_at) >= 2, timeout=15)
    assert mark
    # The greeting, then the refused request and its retry, all over the stream.
    assert [r.status for r in world.openai.speech_requests] == [200, 429, 200]
    assert call.said == []  # one voice: nothing was said with <Say>
    d.wait_state(call_id, "listening")
    d.rpc("voicecall.end", {"callId": call_id})


def test_streams_opened_together_up_to_the_call_limit_are_all_admitted(start_daemon) -> None:
    w = World(start_daemon, maxConcurrentCalls=40)
    try:
        ws_url, wss_url = stream_url(w)
        headers = {"X-Twilio-Signature": compute_signature(TOKEN, wss_url)}
        go = threading.Barrier(32, timeout=10)
        outcomes: list[Any] = []
        lock = threading.Lock()

        def open_one() -> None:
            go.wait()
            try:
                outcome: Any = simple_websocket.Client.connect(ws_url, headers=headers)
            except simple_websocket.ConnectionError as exc:
                outcome = exc.status_code
            with lock:
                outcomes.append(outcome)

        threads = [threading.Thread(target=open_one, daemon=True) for _ in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        try:
            refused = [o for o in outcomes if not isinstance(o, simple_websocket.Client)]
            assert len(outcomes) == 32 and refused == []
        finally:
            for o in outcomes:
                if isinstance(o, simple_websocket.Client):
                    try:
                        o.close()
                    except simple_websocket.ConnectionClosed:
                        pass
    finally:
        w.close()


def test_a_call_whose_stream_is_refused_listens_with_gather(start_daemon) -> None:
    w = World(start_daemon, maxConcurrentCalls=2, streaming={"maxStreams": 1})
    try:
        d = w.daemon

        def connect_like_twilio(req: StreamRequest) -> None:
            # Twilio gives up on a stream whose upgrade is refused and goes on
            # to the <Connect> action: the fake does so when this raises.
            url = f"ws://127.0.0.1:{w.port}{urlsplit(req.url).path}"
            client = MediaStreamClient(url, headers=req.headers, custom_parameters=req.parameters,
                                       call_sid=req.call_sid, stream_sid=req.stream_sid)
            client.connect()
            w.clients.append(client)
            threading.Thread(target=lambda: (req.ended.wait(60), client.stop()), daemon=True).start()

        w.twilio.on_stream = connect_like_twilio
        first = d.rpc("voicecall.initiate", {"message": "First call", "mode": "conversation"})["callId"]
        w.client()
        d.wait_state(first, "listening", timeout=15)
        second = d.rpc("voicecall.initiate", {"message": "Second call", "mode": "conversation"})["callId"]
        call = w.twilio.wait_call(to=TO, count=2)
        w.twilio.wait_listening(call.sid, timeout=15)
        assert "<Gather" in call.twiml[-1] and "<Stream" not in call.twiml[-1]
        w.twilio.callee_says(call.sid, "heard without a stream")
        d.wait(lambda: d.rpc("voicecall.status", {"callId": second})["transcript"][-1]["text"]
               == "heard without a stream", 10, "the second caller's words")
        log = d.log()
        assert log.count("media stream refused: 1 open, 0 starting (limits: streaming.maxStreams 1") == 1
        assert log.count(f"call {second}: the media stream ended") == 1
        assert d.rpc("voicecall.status", {"callId": first})["state"] == "listening"
        for call_id in (first, second):
            d.rpc("voicecall.end", {"callId": call_id})
    finally:
        w.close()


def test_refused_upgrades_are_logged_at_a_bounded_rate(world: World) -> None:
    d = world.daemon
    ws_url, wss_url = stream_url(world)
    for _ in range(20):
        with pytest.raises(simple_websocket.ConnectionError) as info:
            simple_websocket.Client.connect(ws_url, headers={"X-Twilio-Signature": "forged"})
        assert info.value.status_code == 401
    for _ in range(3):
        ws = simple_websocket.Client.connect(ws_url, headers={"X-Twilio-Signature": compute_signature(TOKEN,
                                                                                                      wss_url)})
        ws.send('{"event": "start", "start": {"customParameters": {"callId": "nope", "token": "x"}}}')
        with pytest.raises(simple_websocket.ConnectionClosed):
            while True:
                ws.receive(timeout=8)
    log = d.log()
    # The first refusal of each kind is logged; the rest within the interval only counted.
    assert log.count("refused: invalid X-Twilio-Signature") == 1
    assert log.count("media stream closed: unknown call or wrong stream token") == 1
