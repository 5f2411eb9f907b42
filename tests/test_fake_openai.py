"""FakeOpenAI driven the way real clients drive OpenAI: websocket-client for
Realtime transcription, requests for TTS and Chat Completions."""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time
import wave
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import websocket
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import Headers

from voicecalld.media import mulaw
from voicecalld.testing._audio_signals import silence_pcm, speech_like_pcm
from voicecalld.testing._openai_chat import build_completion
from voicecalld.testing._openai_chat_stream import stream_events
from voicecalld.testing._openai_vad import EnergyVad, rms_threshold
from voicecalld.testing._wait import wait_until
from voicecalld.testing.fake_openai import FakeOpenAI, RecordedRequest

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
TRANSCRIPTION = "conversation.item.input_audio_transcription"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    before = set(threading.enumerate())
    server = FakeOpenAI(api_key=KEY)
    server.start()
    yield server
    server.stop()

    # stop() must leave nothing running behind it (a joined thread may take a
    # moment to leave threading.enumerate(): wait for that, bounded).
    def leaked() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in before and t.is_alive()]

    wait_until(lambda: not leaked(), 5, "the fake's threads to end", context=lambda: repr(leaked()))


@pytest.fixture
def connect(fake: FakeOpenAI) -> Iterator[Any]:
    sockets: list[websocket.WebSocket] = []

    def open_socket(headers: list[str] | None = None) -> websocket.WebSocket:
        header = [f"Authorization: Bearer {KEY}"] if headers is None else headers
        ws = websocket.create_connection(fake.realtime_url, header=header, timeout=5)
        sockets.append(ws)
        return ws

    yield open_socket
    for ws in sockets:
        ws.close(timeout=1)
        # close() skips sockets whose peer already closed; release those too.
        ws.shutdown()


def recv(ws: websocket.WebSocket) -> dict[str, Any]:
    return json.loads(ws.recv())


def recv_types(ws: websocket.WebSocket, count: int) -> list[dict[str, Any]]:
    return [recv(ws) for _ in range(count)]


def recv_until(ws: websocket.WebSocket, kind: str) -> list[dict[str, Any]]:
    """Events up to and including the first of type ``kind``."""
    events = []
    while True:
        event = recv(ws)
        events.append(event)
        if event["type"] == kind:
            return events


def close_code(ws: websocket.WebSocket) -> int:
    while True:
        opcode, frame = ws.recv_data_frame(True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", frame.data[:2])[0]


def ga_update(**input_overrides: Any) -> dict[str, Any]:
    audio_input: dict[str, Any] = {
        "format": {"type": "audio/pcmu"},
        "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
        "noise_reduction": None,
        "turn_detection": {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 300,
        },
    }
    audio_input.update(input_overrides)
    return {"type": "session.update", "session": {"type": "transcription", "audio": {"input": audio_input}}}


def configure(ws: websocket.WebSocket, update: dict[str, Any] | None = None) -> dict[str, Any]:
    assert recv(ws)["type"] == "session.created"
    ws.send(json.dumps(update or ga_update()))
    answer = recv(ws)
    assert answer["type"] == "session.updated", answer
    return answer


def append(ws: websocket.WebSocket, audio: bytes, chunk: int = 160) -> int:
    frames = 0
    for offset in range(0, len(audio), chunk):
        payload = base64.b64encode(audio[offset : offset + chunk]).decode()
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": payload}))
        frames += 1
    return frames


def utterance(lead: float = 0.5, speech: float = 1.0, tail: float = 0.6) -> bytes:
    return mulaw.encode(silence_pcm(lead) + speech_like_pcm(speech) + silence_pcm(tail))


# -- realtime: happy path ----------------------------------------------------


def test_realtime_turn_events_in_order(fake: FakeOpenAI, connect: Any) -> None:
    fake.transcripts.put("hello there friend")
    ws = connect()
    updated = configure(ws)
    assert updated["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    sent_frames = append(ws, utterance())

    events = recv_until(ws, f"{TRANSCRIPTION}.completed")
    kinds = [e["type"] for e in events]
    assert kinds == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        f"{TRANSCRIPTION}.delta",
        f"{TRANSCRIPTION}.delta",
        f"{TRANSCRIPTION}.delta",
        f"{TRANSCRIPTION}.completed",
    ]
    started, stopped, committed, *deltas, completed = events
    item = started["item_id"]
    assert {stopped["item_id"], committed["item_id"], completed["item_id"]} == {item}
    assert committed["previous_item_id"] is None
    # Speech from 500 ms, padded back by 300 ms; ends after 1500 ms + 300 ms of silence.
    assert started["audio_start_ms"] == 200
    assert stopped["audio_end_ms"] == 1800
    assert "".join(d["delta"] for d in deltas) == "hello there friend"
    assert completed["transcript"] == "hello there friend"
    assert completed["content_index"] == 0
    assert completed["usage"]["total_tokens"] > 0

    # Appends are not acknowledged; a clear's answer proves all were handled.
    ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
    assert recv_until(ws, "input_audio_buffer.cleared")[-1]["type"] == "input_audio_buffer.cleared"
    record = fake.wait_for_session()
    assert record.headers["authorization"] == f"Bearer {KEY}"
    assert "OpenAI-Beta" not in record.headers
    # Nothing lost: every append arrived and the audio is byte-identical.
    assert record.frames == sent_frames == fake.realtime_frames_received
    assert bytes(record.audio_bytes) == utterance()
    assert record.transcripts == [(item, "hello there friend")]


def test_previous_item_id_chains_turns_and_default_transcript(fake: FakeOpenAI, connect: Any) -> None:
    fake.default_transcript = "fallback words"
    fake.transcripts.put("first")
    ws = connect()
    configure(ws)
    append(ws, utterance() + utterance())
    first = recv_until(ws, f"{TRANSCRIPTION}.completed")
    second = recv_until(ws, f"{TRANSCRIPTION}.completed")
    c1 = next(e for e in first if e["type"] == "input_audio_buffer.committed")
    c2 = next(e for e in second if e["type"] == "input_audio_buffer.committed")
    assert c2["previous_item_id"] == c1["item_id"]
    assert first[-1]["transcript"] == "first"
    assert second[-1]["transcript"] == "fallback words"


def test_script_argument_feeds_transcripts() -> None:
    with FakeOpenAI(api_key=KEY, script=["one", "two"]) as fake:
        ws = websocket.create_connection(
            fake.realtime_url, header=[f"Authorization: Bearer {KEY}"], timeout=5
        )
        try:
            configure(ws)
            append(ws, utterance() + utterance())
            texts = [recv_until(ws, f"{TRANSCRIPTION}.completed")[-1]["transcript"] for _ in range(2)]
        finally:
            ws.close(timeout=1)
            ws.shutdown()
    assert texts == ["one", "two"]


def test_completed_out_of_order_can_be_reordered(fake: FakeOpenAI, connect: Any) -> None:
    fake.completed_out_of_order = True
    fake.transcripts.put("turn one")
    fake.transcripts.put("turn two")
    ws = connect()
    configure(ws)
    append(ws, utterance() + utterance())
    events: list[dict[str, Any]] = []
    while sum(e["type"] == f"{TRANSCRIPTION}.completed" for e in events) < 2:
        events.append(recv(ws))
    completed = [e for e in events if e["type"] == f"{TRANSCRIPTION}.completed"]
    assert [c["transcript"] for c in completed] == ["turn two", "turn one"]
    # What a client does: order by the committed chain, not by arrival.
    previous = {
        e["item_id"]: e["previous_item_id"] for e in events if e["type"] == "input_audio_buffer.committed"
    }
    order, cursor = [], None
    following = {prev: item for item, prev in previous.items()}
    while cursor in following:
        cursor = following[cursor]
        order.append(cursor)
    by_item = {c["item_id"]: c["transcript"] for c in completed}
    assert [by_item[item] for item in order] == ["turn one", "turn two"]


def test_pcm24k_format_is_accepted(fake: FakeOpenAI, connect: Any) -> None:
    fake.transcripts.put("wideband")
    ws = connect()
    configure(ws, ga_update(format={"type": "audio/pcm", "rate": 24000}))
    audio = silence_pcm(0.2, 24000) + speech_like_pcm(0.6, 24000) + silence_pcm(0.5, 24000)
    append(ws, audio, chunk=960)
    events = recv_until(ws, f"{TRANSCRIPTION}.completed")
    assert events[0]["type"] == "input_audio_buffer.speech_started"
    assert events[0]["audio_start_ms"] == 0  # 200 ms of lead-in, padded back by 300
    assert events[-1]["transcript"] == "wideband"


def test_reconfiguring_keeps_the_session_audio_clock(fake: FakeOpenAI, connect: Any) -> None:
    ws = connect()
    configure(ws)
    append(ws, mulaw.encode(silence_pcm(1.0)))
    ws.send(json.dumps(ga_update(turn_detection={"type": "server_vad", "silence_duration_ms": 200})))
    assert recv(ws)["type"] == "session.updated"
    append(ws, utterance(lead=0.5, speech=0.5, tail=0.3))
    started, stopped = recv(ws), recv(ws)
    # Times count from the session's first audio, across the update.
    assert started["audio_start_ms"] == 1000 + 500 - 300
    assert stopped["audio_end_ms"] == 1000 + 1000 + 200


def test_manual_commit_when_turn_detection_is_null(fake: FakeOpenAI, connect: Any) -> None:
    fake.transcripts.put("manual")
    ws = connect()
    configure(ws, ga_update(turn_detection=None))
    ws.send(json.dumps({"type": "input_audio_buffer.commit", "event_id": "evt_1"}))
    error = recv(ws)
    assert error["type"] == "error"
    assert error["error"]["code"] == "input_audio_buffer_commit_empty"
    assert error["error"]["event_id"] == "evt_1"
    append(ws, mulaw.encode(speech_like_pcm(0.5)))
    ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
    events = recv_until(ws, f"{TRANSCRIPTION}.completed")
    assert events[0]["type"] == "input_audio_buffer.committed"
    assert events[-1]["transcript"] == "manual"


def test_no_transcription_model_means_no_transcripts(fake: FakeOpenAI, connect: Any) -> None:
    ws = connect()
    configure(ws, ga_update(transcription=None))
    append(ws, utterance())
    events = recv_until(ws, "input_audio_buffer.committed")
    assert events[-1]["type"] == "input_audio_buffer.committed"
    ws.settimeout(0.2)
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv()


def test_scripted_transcription_failure(fake: FakeOpenAI, connect: Any) -> None:
    fake.transcripts.put({"error": {"code": "audio_unintelligible", "message": "Could not transcribe."}})
    ws = connect()
    configure(ws)
    append(ws, utterance())
    failed = recv_until(ws, f"{TRANSCRIPTION}.failed")[-1]
    assert failed["error"]["code"] == "audio_unintelligible"


# -- realtime: rejections and errors -----------------------------------------


@pytest.mark.parametrize(
    "header", [[], ["Authorization: Bearer sk-wrong-key-123"], ["Authorization: Basic abc"]]
)
def test_realtime_rejects_bad_auth_with_401(fake: FakeOpenAI, header: list[str]) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(fake.realtime_url, header=header, timeout=5)
    assert info.value.status_code == 401
    body = json.loads(info.value.resp_body)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "sk-wrong-key-123" not in info.value.resp_body.decode()
    assert fake.realtime_sessions == []


def test_beta_header_gets_error_then_close_4000(fake: FakeOpenAI, connect: Any) -> None:
    ws = connect([f"Authorization: Bearer {KEY}", "OpenAI-Beta: realtime=v1"])
    event = recv(ws)
    assert event["type"] == "error"
    assert event["error"]["code"] == "beta_api_shape_disabled"
    assert event["error"]["type"] == "invalid_request_error"
    assert close_code(ws) == 4000
    record = fake.wait_for_session()
    assert record.wait_closed(2)
    assert record.rejected == "beta" and record.close_code == 4000


@pytest.mark.parametrize(
    ("update", "param", "code"),
    [
        ({"type": "session.update", "session": {"audio": {}}}, "session.type", "missing_required_parameter"),
        ({"type": "session.update", "session": {"type": "realtime"}}, "session.type", "invalid_value"),
        (ga_update(format="g711_ulaw"), "session.audio.input.format", "invalid_type"),
        (
            ga_update(format={"type": "audio/pcm", "rate": 16000}),
            "session.audio.input.format.rate",
            "invalid_value",
        ),
        (
            ga_update(transcription={"model": "gpt-5-ears"}),
            "session.audio.input.transcription.model",
            "invalid_value",
        ),
        (
            ga_update(transcription={}),
            "session.audio.input.transcription.model",
            "missing_required_parameter",
        ),
        (
            ga_update(turn_detection={"type": "server_vad", "threshold": 2}),
            "session.audio.input.turn_detection.threshold",
            "decimal_above_max_value",
        ),
        (
            ga_update(turn_detection={"type": "server_vad", "silence_duration_ms": "800"}),
            "session.audio.input.turn_detection.silence_duration_ms",
            "invalid_type",
        ),
        (
            ga_update(turn_detection={"type": "push_to_talk"}),
            "session.audio.input.turn_detection.type",
            "invalid_value",
        ),
        # The shut-down beta's flat fields:
        (
            {
                "type": "session.update",
                "session": {"type": "transcription", "input_audio_format": "g711_ulaw"},
            },
            "session.input_audio_format",
            "unknown_parameter",
        ),
    ],
)
def test_bad_session_update_names_the_field_and_keeps_socket(
    fake: FakeOpenAI, connect: Any, update: dict[str, Any], param: str, code: str
) -> None:
    ws = connect()
    assert recv(ws)["type"] == "session.created"
    ws.send(json.dumps({**update, "event_id": "evt_cfg"}))
    error = recv(ws)
    assert error["type"] == "error"
    assert error["error"]["param"] == param
    assert error["error"]["code"] == code
    assert error["error"]["event_id"] == "evt_cfg"
    # Still open, like the real service: a correct update now succeeds.
    ws.send(json.dumps(ga_update()))
    assert recv(ws)["type"] == "session.updated"


def test_beta_event_name_is_rejected(fake: FakeOpenAI, connect: Any) -> None:
    ws = connect()
    assert recv(ws)["type"] == "session.created"
    ws.send(
        json.dumps({"type": "transcription_session.update", "session": {"input_audio_format": "g711_ulaw"}})
    )
    error = recv(ws)
    assert error["type"] == "error" and error["error"]["param"] == "type"
    ws.send("not json")
    assert recv(ws)["error"]["code"] == "invalid_json"


def test_drop_realtime_after_cuts_socket_and_counts_frames(fake: FakeOpenAI, connect: Any) -> None:
    fake.drop_realtime_after(10)
    ws = connect()
    configure(ws)
    audio = mulaw.encode(silence_pcm(0.4))  # 20 frames
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError, OSError)):
        append(ws, audio)
        ws.recv()  # EOF, no close frame
    first = fake.wait_for_session(0)
    assert first.wait_closed(2)
    assert first.dropped and first.frames == 10 and first.close_code is None

    # The reconnect is not dropped (one-shot) and every frame is counted.
    ws2 = connect()
    configure(ws2)
    append(ws2, audio[160 * 10 :])
    ws2.send(json.dumps({"type": "input_audio_buffer.clear"}))
    assert recv(ws2)["type"] == "input_audio_buffer.cleared"
    assert fake.realtime_frames_received == 20
    assert bytes(first.audio_bytes) + bytes(fake.realtime_sessions[1].audio_bytes) == audio


def test_session_lifetime_expires_like_the_real_limit(fake: FakeOpenAI, connect: Any) -> None:
    fake.session_lifetime = 0.3
    ws = connect()
    started = time.monotonic()
    configure(ws)
    error = recv(ws)
    assert error["type"] == "error" and error["error"]["code"] == "session_expired"
    assert time.monotonic() - started >= 0.25
    assert close_code(ws) == 1001


def test_injected_realtime_error_refuses_upgrade(fake: FakeOpenAI) -> None:
    fake.inject_error("realtime", status=503, message="Overloaded", code="overloaded")
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(fake.realtime_url, header=[f"Authorization: Bearer {KEY}"], timeout=5)
    assert info.value.status_code == 503


def test_stop_closes_open_sessions(connect: Any, fake: FakeOpenAI) -> None:
    ws = connect()
    configure(ws)
    record = fake.wait_for_session()
    reader = threading.Thread(target=lambda: close_code(ws))
    reader.start()  # answer the closing handshake, as a live client would
    fake.stop()
    reader.join(5)
    assert record.closed and record.close_code == 1001


# -- TTS ---------------------------------------------------------------------


def speech(fake: FakeOpenAI, headers: dict[str, str] | None = AUTH, **body: Any) -> requests.Response:
    payload = {"model": "gpt-4o-mini-tts", "input": "Hello there", "voice": "coral", "response_format": "pcm"}
    payload.update(body)
    return requests.post(f"{fake.base_url}/audio/speech", headers=headers, json=payload, timeout=5)


def test_tts_pcm_length_follows_text(fake: FakeOpenAI) -> None:
    fake.tts_ms_per_char = 50.0
    response = speech(fake, input="x" * 40)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "audio/pcm"
    # 40 chars * 50 ms = 2 s of 24 kHz s16le.
    assert len(response.content) == 2 * 24000 * 2
    assert max(abs(v) for v in memoryview(response.content).cast("h")) > 3000  # not silence
    record = fake.speech_requests[-1]
    assert record.body["voice"] == "coral" and record.status == 200


def test_tts_speed_and_wav(fake: FakeOpenAI) -> None:
    fake.tts_ms_per_char = 50.0
    fast = speech(fake, input="y" * 40, speed=2.0)
    assert len(fast.content) == 24000 * 2
    wav = speech(fake, input="y" * 40, response_format="wav")
    with wave.open(io.BytesIO(wav.content)) as reader:
        assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (24000, 1, 2)
        assert reader.getnframes() == 48000


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"voice": "robot"}, "voice"),
        ({"input": "z" * 4097}, "input"),
        ({"input": ""}, "input"),
        ({"model": "tts-2"}, "model"),
        ({"response_format": "mp3"}, "response_format"),
        ({"speed": 5}, "speed"),
        ({"model": "tts-1", "instructions": "whisper"}, "instructions"),
        ({"volume": 3}, "volume"),
    ],
)
def test_tts_validation(fake: FakeOpenAI, body: dict[str, Any], param: str) -> None:
    response = speech(fake, **body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert set(error) == {"message", "type", "param", "code"}


def test_tts_requires_auth(fake: FakeOpenAI) -> None:
    assert speech(fake, headers=None).status_code == 401
    wrong = speech(fake, headers={"Authorization": "Bearer sk-nope-nope-nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"


def test_tts_delay_and_injected_error(fake: FakeOpenAI) -> None:
    fake.speech_delay_s = 0.2
    started = time.monotonic()
    assert speech(fake).status_code == 200
    assert time.monotonic() - started >= 0.2
    fake.speech_delay_s = 0.0
    fake.inject_error("speech", status=500)
    failed = speech(fake)
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"
    assert speech(fake).status_code == 200  # one-shot


# -- chat --------------------------------------------------------------------


def chat(fake: FakeOpenAI, headers: dict[str, str] | None = AUTH, **body: Any) -> requests.Response:
    payload: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
        "max_completion_tokens": 80,
        "temperature": 0.7,
    }
    payload.update(body)
    return requests.post(f"{fake.base_url}/chat/completions", headers=headers, json=payload, timeout=5)


def test_chat_scripted_reply_and_record(fake: FakeOpenAI) -> None:
    fake.chat_replies.put("Hello, how can I help?")
    response = chat(fake)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "gpt-4o-mini"
    choice = body["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": "Hello, how can I help?",
        "refusal": None,
        "annotations": [],
    }
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert fake.chat_requests[-1].body["messages"][1] == {"role": "user", "content": "Hi!"}
    # An empty queue falls back to the default reply.
    fake.default_chat_reply = "Default."
    assert chat(fake).json()["choices"][0]["message"]["content"] == "Default."


def test_chat_tool_call(fake: FakeOpenAI) -> None:
    fake.chat_replies.put(
        {"tool_call": {"name": "hang_up", "arguments": {"reason": "done"}}, "content": "Goodbye!"}
    )
    tools = [{"type": "function", "function": {"name": "hang_up", "parameters": {"type": "object"}}}]
    choice = chat(fake, tools=tools).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Goodbye!"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "hang_up"
    assert json.loads(call["function"]["arguments"]) == {"reason": "done"}


def test_chat_error_injection(fake: FakeOpenAI) -> None:
    fake.inject_error("chat", status=429, message="Rate limit reached", code="rate_limit_exceeded", times=2)
    for _ in range(2):
        response = chat(fake)
        assert response.status_code == 429
        assert response.json()["error"] == {
            "message": "Rate limit reached",
            "type": "invalid_request_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    # Scripted errors are consumed in turn with the replies.
    fake.chat_replies.put({"error": {"status": 503, "message": "Slow down"}})
    fake.chat_replies.put("after the error")
    assert chat(fake).status_code == 503
    assert chat(fake).json()["choices"][0]["message"]["content"] == "after the error"


def test_chat_delay(fake: FakeOpenAI) -> None:
    fake.chat_delay_s = 0.2
    started = time.monotonic()
    assert chat(fake).status_code == 200
    assert time.monotonic() - started >= 0.2


def test_streamed_tokens_keep_to_their_schedule_from_the_request(fake: FakeOpenAI) -> None:
    """Token n is due first + n * per_token after the request arrived, and
    never goes out before that: the schedule is counted from the arrival,
    not from the previous write (pauses that would add up under load)."""
    fake.chat_first_token_s, fake.chat_token_s = 0.15, 0.02
    fake.chat_replies.put("One two three four five six.")
    with chat(fake, stream=True) as response:
        lines = [line for line in response.iter_lines() if line.startswith(b"data: {")]
    record = fake.chat_requests[-1]
    assert record.stream_finished and record.tokens_sent == len(record.token_at) >= 6
    assert len(lines) >= len(record.token_at)
    for n, at in enumerate(record.token_at):
        assert at >= record.at + 0.15 + n * 0.02
    assert record.first_token_at == record.token_at[0] and record.last_token_at == record.token_at[-1]


def test_tokens_already_due_go_out_at_once() -> None:
    """A stream that fell behind its schedule catches up instead of pausing
    again before every token: with the request 1000 s old, tokens due 30 s
    and then every 10 s after it are all overdue, so the whole reply comes
    at once (paused token by token it would take over a minute)."""
    completion = build_completion({"model": "gpt-4o-mini", "messages": []}, "One two three four five six.")
    record = RecordedRequest(endpoint="chat", method="POST", path="/v1/chat/completions", headers=Headers(), body={})
    started = time.monotonic()
    body = b"".join(stream_events(completion, record, None, 30.0, 10.0, None, threading.Event(),
                                  start=started - 1000))
    assert time.monotonic() - started < 20
    assert record.stream_finished and body.endswith(b"data: [DONE]\n\n") and len(record.token_at) >= 6


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "openai/gpt-4o-mini"}, 404, None),
        ({"model": ""}, 400, "model"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, 400, "messages[0].content"),
        ({"max_token": 5}, 400, "max_token"),
        ({"temperature": 3}, 400, "temperature"),
    ],
)
def test_chat_validation(fake: FakeOpenAI, body: dict[str, Any], status: int, param: str | None) -> None:
    response = chat(fake, **body)
    assert response.status_code == status
    assert response.json()["error"]["param"] == param


def test_chat_requires_auth_and_unknown_paths_404(fake: FakeOpenAI) -> None:
    assert chat(fake, headers=None).status_code == 401
    missing = requests.post(f"{fake.base_url}/embeddings", headers=AUTH, json={}, timeout=5)
    assert missing.status_code == 404 and "error" in missing.json()
    assert requests.get(f"{fake.base_url}/chat/completions", headers=AUTH, timeout=5).status_code == 405


# -- the fake's VAD on its own -------------------------------------------------

VAD_AUDIO = (
    silence_pcm(0.3) + speech_like_pcm(0.5) + silence_pcm(0.4) + speech_like_pcm(0.3) + silence_pcm(0.5)
)


def test_vad_threshold_maps_to_level() -> None:
    assert rms_threshold(0.0) < rms_threshold(0.5) < rms_threshold(1.0)
    # Quiet speech passes a low threshold but not a high one.
    quiet = speech_like_pcm(0.4, level=0.02) + silence_pcm(0.5)
    assert [e.kind for e in EnergyVad(8000, threshold=0.2, silence_duration_ms=200).feed(quiet)] == [
        "start",
        "stop",
    ]
    assert EnergyVad(8000, threshold=0.9, silence_duration_ms=200).feed(quiet) == []


def test_vad_silence_duration_splits_or_joins_utterances() -> None:
    # A 400 ms pause ends the turn with 300 ms of patience, not with 500 ms.
    short = EnergyVad(8000, silence_duration_ms=300, prefix_padding_ms=0).feed(VAD_AUDIO)
    assert [(e.kind, e.ms) for e in short] == [
        ("start", 300),
        ("stop", 1100),
        ("start", 1200),
        ("stop", 1800),
    ]
    long = EnergyVad(8000, silence_duration_ms=500, prefix_padding_ms=0).feed(VAD_AUDIO)
    assert [(e.kind, e.ms) for e in long] == [("start", 300), ("stop", 2000)]


def test_vad_prefix_padding_never_reaches_into_previous_turn() -> None:
    events = EnergyVad(8000, silence_duration_ms=300, prefix_padding_ms=300).feed(VAD_AUDIO)
    assert [(e.kind, e.ms) for e in events] == [("start", 0), ("stop", 1100), ("start", 1100), ("stop", 1800)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=3000), max_size=10))
def test_vad_result_does_not_depend_on_chunking(cuts: list[int]) -> None:
    whole = EnergyVad(8000, silence_duration_ms=300).feed(VAD_AUDIO)
    vad = EnergyVad(8000, silence_duration_ms=300)
    events, pos = [], 0
    for size in cuts:
        events += vad.feed(VAD_AUDIO[pos : pos + size])
        pos += size
    events += vad.feed(VAD_AUDIO[pos:])
    assert events == whole


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 24000, 44100, 11025])
def test_the_speech_signal_is_the_same_sample_for_sample_however_it_is_built(rate: int) -> None:
    """The signal is built over one repeating stretch and tiled (fast
    enough not to stall a loaded fake); it must equal the formula evaluated
    at every sample."""
    import array
    import math

    from voicecalld.testing import _audio_signals as sig

    norm = sum(w for _, w in sig._HARMONICS)
    peak = 0.5 * 32767 / norm
    expected = array.array("h")
    for n in range(rate):
        t = n / rate
        voiced = sum(w * math.sin(2 * math.pi * sig._FUNDAMENTAL_HZ * k * t) for k, w in sig._HARMONICS)
        envelope = sig._ENVELOPE_FLOOR + (1 - sig._ENVELOPE_FLOOR) * (
            0.5 - 0.5 * math.cos(2 * math.pi * sig._SYLLABLE_HZ * t))
        expected.append(round(peak * envelope * voiced))
    got = array.array("h", speech_like_pcm(1.0 + 0.01, rate)[: 2 * rate])  # past the fade-out
    if struct.pack("=h", 1) != struct.pack("<h", 1):
        got.byteswap()
    assert got == expected
