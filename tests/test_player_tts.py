"""Text-to-speech conversion and paced playback with marks and barge-in."""

from __future__ import annotations

import base64
import math
import struct
import threading
import time

import pytest

from voicecalld.errors import ProviderError
from voicecalld.media import mulaw
from voicecalld.media.player import FRAME_BYTES, LEAD_FRAMES, Player
from voicecalld.media.tts import Synthesizer
from voicecalld.testing.fake_openai import FakeOpenAI


@pytest.fixture
def fake():
    with FakeOpenAI(api_key="sk-test", tts_ms_per_char=20.0) as server:
        yield server


def test_tts_returns_8k_mulaw_of_the_right_length(fake) -> None:
    synth = Synthesizer(fake.base_url, "sk-test", model="gpt-4o-mini-tts", voice="coral")
    try:
        audio = b"".join(synth.stream("x" * 50))  # 50 chars x 20 ms = 1 s
        assert abs(len(audio) - 8000) <= 8 * 5  # one byte per 8 kHz sample, within a few ms
        pcm = mulaw.decode(audio)
        samples = struct.unpack(f"<{len(pcm) // 2}h", pcm)
        assert max(abs(s) for s in samples) > 1000  # it is audible speech-like signal, not silence
        (request,) = fake.speech_requests
        assert request.body["response_format"] == "pcm" and request.body["voice"] == "coral"
        assert request.headers["Authorization"] == "Bearer sk-test"
    finally:
        synth.close()


def test_tts_error_is_a_provider_error(fake) -> None:
    fake.inject_error("speech", 429, "Rate limit reached", type="rate_limit_error", code="rate_limit_exceeded")
    synth = Synthesizer(fake.base_url, "sk-test", model="gpt-4o-mini-tts", voice="coral")
    with pytest.raises(ProviderError, match="Rate limit reached"):
        synth.stream("hello")
    synth.close()


def test_tts_times_out(fake) -> None:
    fake.speech_delay_s = 2.0
    synth = Synthesizer(fake.base_url, "sk-test", model="gpt-4o-mini-tts", voice="coral", timeout=(1.0, 0.3))
    with pytest.raises(ProviderError, match="failed|broke off"):
        b"".join(synth.stream("hello"))
    synth.close()


# --- the player -----------------------------------------------------------------------------------


class Wire:
    """Records what the player sends, with timestamps."""

    def __init__(self) -> None:
        self.messages: list[tuple[float, dict]] = []
        self.lock = threading.Lock()

    def __call__(self, message: dict) -> None:
        with self.lock:
            self.messages.append((time.monotonic(), message))

    def of(self, event: str) -> list[tuple[float, dict]]:
        with self.lock:
            return [(t, m) for t, m in self.messages if m["event"] == event]


def tone(seconds: float) -> bytes:
    n = int(8000 * seconds)
    pcm = struct.pack(f"<{n}h", *(int(8000 * math.sin(2 * math.pi * 440 * i / 8000)) for i in range(n)))
    return mulaw.encode(pcm)


def make_player(wire: Wire, played: list, failed: list, synth=None) -> Player:
    synthesize = synth or (lambda text: [tone(len(text) / 100)])  # 100 chars per second
    return Player(wire, "MZ123", synthesize, on_played=played.append,
                  on_failed=lambda u, m: failed.append((u, m)), name="t")


def wait(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError("timed out")


def test_frames_are_paced_without_drift_and_followed_by_a_mark() -> None:
    wire, played, failed = Wire(), [], []
    p = make_player(wire, played, failed)
    try:
        p.say("u1", "x" * 100)  # one second: 50 frames
        wait(lambda: wire.of("mark"))
        media = wire.of("media")
        assert len(media) == 50
        assert all(len(base64.b64decode(m["media"]["payload"])) == FRAME_BYTES for _, m in media)
        assert all(m["streamSid"] == "MZ123" for _, m in media)
        start = media[0][0]
        # Frame n leaves at start + (n - lead) * 20 ms: no cumulative drift, no bursts.
        for n, (t, _) in enumerate(media[LEAD_FRAMES:], start=LEAD_FRAMES):
            assert abs((t - start) - (n - LEAD_FRAMES) * 0.02) < 0.015, n
        total = media[-1][0] - start
        assert 0.9 <= total <= 1.05
        (t_mark, mark) = wire.of("mark")[0]
        assert mark == {"event": "mark", "streamSid": "MZ123", "mark": {"name": "u1"}} and t_mark >= media[-1][0]
        assert played == [] and p.speaking  # played only once the carrier echoes the mark
        p.mark_echoed("u1")
        assert played == ["u1"] and not p.speaking
    finally:
        p.close()


def test_utterances_play_in_order() -> None:
    wire, played, failed = Wire(), [], []
    p = make_player(wire, played, failed)
    try:
        for i in range(3):
            p.say(f"u{i}", "x" * 10)
        wait(lambda: len(wire.of("mark")) == 3)
        assert [m["mark"]["name"] for _, m in wire.of("mark")] == ["u0", "u1", "u2"]
        assert len(wire.of("media")) == 15
    finally:
        p.close()


def test_barge_in_clears_drops_the_queue_and_reports_them_played() -> None:
    wire, played, failed = Wire(), [], []
    p = make_player(wire, played, failed)
    try:
        p.say("long", "x" * 300)
        p.say("next", "x" * 50)
        wait(lambda: len(wire.of("media")) > 10)
        assert p.interrupt() is True
        assert wire.of("clear")[0][1] == {"event": "clear", "streamSid": "MZ123"}
        assert played == ["long", "next"]
        sent = len(wire.of("media"))
        time.sleep(0.2)
        assert len(wire.of("media")) == sent  # nothing more of the dropped speech
        assert wire.of("mark") == [] and not p.speaking
        assert p.interrupt() is False  # nothing to interrupt now
        p.say("after", "x" * 10)
        wait(lambda: wire.of("mark"))
        assert wire.of("mark")[0][1]["mark"]["name"] == "after"
    finally:
        p.close()


def test_slow_synthesis_reanchors_instead_of_bursting() -> None:
    def slow(text):
        yield tone(0.2)
        time.sleep(0.3)  # synthesis stalls
        yield tone(0.2)

    wire, played, failed = Wire(), [], []
    p = make_player(wire, played, failed, synth=slow)
    try:
        p.say("u", "ignored")
        wait(lambda: wire.of("mark"))
        times = [t for t, _ in wire.of("media")]
        assert len(times) == 20
        restart = times[10]  # first frame after the stall
        assert restart - times[9] > 0.2
        # After the stall only the small lead goes out at once; the rest is
        # paced from the restart, never dumped to catch up with lost time.
        for k, t in enumerate(times[10:]):
            assert t - restart >= max(0, k - LEAD_FRAMES) * 0.02 - 0.005, k
    finally:
        p.close()


def test_synthesis_failure_is_reported() -> None:
    def broken(text):
        raise ProviderError("text-to-speech refused (500): boom")

    wire, played, failed = Wire(), [], []
    p = make_player(wire, played, failed, synth=broken)
    try:
        p.say("u", "hello")
        wait(lambda: failed)
        assert failed == [("u", "text-to-speech refused (500): boom")] and played == []
    finally:
        p.close()
