"""Text-to-speech conversion and paced playback with marks and barge-in.

The player runs on a virtual clock (its ``clock`` and ``sleep``): pacing is
checked against the schedule exactly, with no wall-clock assertion (how
punctual it is on a real machine is measured by benchmarks/media.py)."""

from __future__ import annotations

import base64
import json
import math
import struct
import threading

import pytest

from voicecalld.errors import ProviderError
from voicecalld.media import mulaw
from voicecalld.media.player import FRAME_BYTES, LEAD_FRAMES, Interruption, Player
from voicecalld.media.tts import Synthesizer
from voicecalld.providers.twilio_media import TwilioFraming
from voicecalld.testing._wait import wait_until
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


class VirtualClock:
    """Time that passes only when the player sleeps (or a test says so)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += max(0.0, seconds)


class Wire:
    """Records what the player sends (Twilio's frames, parsed), with the
    (virtual) time it was sent."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.messages: list[tuple[float, dict]] = []
        self.lock = threading.Lock()

    def __call__(self, frame: str) -> None:
        with self.lock:
            self.messages.append((self.clock(), json.loads(frame)))

    def of(self, event: str) -> list[tuple[float, dict]]:
        with self.lock:
            return [(t, m) for t, m in self.messages if m["event"] == event]

    def events(self) -> list[str]:
        with self.lock:
            return [m["event"] for _, m in self.messages]


def tone(seconds: float) -> bytes:
    n = int(8000 * seconds)
    pcm = struct.pack(f"<{n}h", *(int(8000 * math.sin(2 * math.pi * 440 * i / 8000)) for i in range(n)))
    return mulaw.encode(pcm)


def make_player(clock: VirtualClock, wire: Wire, played: list, failed: list, synth=None) -> Player:
    synthesize = synth or (lambda text: [tone(len(text) / 100)])  # 100 chars per second
    return Player(wire, TwilioFraming("MZ123"), synthesize, on_played=played.append,
                  on_failed=lambda u, t, m: failed.append((u, t, m)), name="t", clock=clock, sleep=clock.sleep)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


def test_frames_are_paced_without_drift_and_followed_by_a_mark(clock: VirtualClock) -> None:
    wire, played, failed = Wire(clock), [], []
    p = make_player(clock, wire, played, failed)
    try:
        p.say("u1", "x" * 100)  # one second: 50 frames
        wait_until(lambda: wire.of("mark"), 5, "the mark")
        media = wire.of("media")
        assert len(media) == 50
        assert all(len(base64.b64decode(m["media"]["payload"])) == FRAME_BYTES for _, m in media)
        assert all(m["streamSid"] == "MZ123" for _, m in media)
        start = media[0][0]
        # Frame n leaves at start + (n - lead) * 20 ms: computed from the
        # clock, so no drift; the lead goes out at once, then no bursts.
        for n, (t, _) in enumerate(media):
            assert t - start == pytest.approx(max(0, n - LEAD_FRAMES) * 0.02, abs=1e-9), n
        (t_mark, mark) = wire.of("mark")[0]
        assert mark == {"event": "mark", "streamSid": "MZ123", "mark": {"name": "u1"}} and t_mark >= media[-1][0]
        assert played == [] and p.speaking  # played only once the carrier echoes the mark
        p.mark_echoed("u1")
        assert played == ["u1"] and not p.speaking
    finally:
        p.close()


def test_utterances_play_in_order(clock: VirtualClock) -> None:
    wire, played, failed = Wire(clock), [], []
    p = make_player(clock, wire, played, failed)
    try:
        for i in range(3):
            p.say(f"u{i}", "x" * 10)
        wait_until(lambda: len(wire.of("mark")) == 3, 5, "three marks")
        assert [m["mark"]["name"] for _, m in wire.of("mark")] == ["u0", "u1", "u2"]
        assert len(wire.of("media")) == 15
    finally:
        p.close()


def test_barge_in_clears_drops_the_queue_and_reports_them_played(clock: VirtualClock) -> None:
    go_on = threading.Event()

    def synth(text: str):
        if text.startswith("long"):
            yield tone(0.5)
            go_on.wait(5)  # the rest is "still being synthesized" when the caller barges in
            yield tone(2.5)
        else:
            yield tone(len(text) / 100)

    wire, played, failed = Wire(clock), [], []
    p = make_player(clock, wire, played, failed, synth=synth)
    try:
        p.say("long", "long" + "x" * 296)
        p.say("next", "x" * 50)
        wait_until(lambda: len(wire.of("media")) == 25, 5, "the first half second")
        # "long" was being heard; "next" never started.
        assert p.interrupt() == Interruption("long", ("next",))
        assert wire.of("clear")[0][1] == {"event": "clear", "streamSid": "MZ123"}
        assert played == ["long", "next"]
        go_on.set()  # the dropped utterance's audio arrives, too late to be sent
        assert p.interrupt() is None  # nothing to interrupt now
        p.say("after", "x" * 10)
        wait_until(lambda: wire.of("mark"), 5, "the next utterance's mark")
        # Everything after the clear is the next utterance: 5 frames, then its mark.
        events = wire.events()
        assert events[events.index("clear") + 1:] == ["media"] * 5 + ["mark"]
        assert wire.of("mark")[0][1]["mark"]["name"] == "after"
        assert not failed and played == ["long", "next"]
    finally:
        p.close()


def test_slow_synthesis_reanchors_instead_of_bursting(clock: VirtualClock) -> None:
    def slow(text):
        yield tone(0.2)
        clock.sleep(0.3)  # synthesis stalls
        yield tone(0.2)

    wire, played, failed = Wire(clock), [], []
    p = make_player(clock, wire, played, failed, synth=slow)
    try:
        p.say("u", "ignored")
        wait_until(lambda: wire.of("mark"), 5, "the mark")
        times = [t for t, _ in wire.of("media")]
        assert len(times) == 20
        restart = times[10]  # first frame after the stall
        assert restart - times[9] > 0.2
        # After the stall only the small lead goes out at once; the rest is
        # paced from the restart, never dumped to catch up with lost time.
        for k, t in enumerate(times[10:]):
            assert t - restart == pytest.approx(max(0, k - LEAD_FRAMES) * 0.02, abs=1e-9), k
    finally:
        p.close()


def test_synthesis_failure_is_tried_once_more_then_reported_with_the_text(clock: VirtualClock) -> None:
    attempts: list[str] = []

    def broken(text):
        attempts.append(text)
        raise ProviderError("text-to-speech refused (500): boom")

    wire, played, failed = Wire(clock), [], []
    p = make_player(clock, wire, played, failed, synth=broken)
    try:
        p.say("u", "hello")
        wait_until(lambda: failed, 5, "the failure")
        assert failed == [("u", "hello", "text-to-speech refused (500): boom")] and played == []
        assert attempts == ["hello", "hello"]
        assert not p.speaking
    finally:
        p.close()


def test_a_second_attempt_that_works_plays_the_utterance(clock: VirtualClock) -> None:
    attempts: list[str] = []

    def flaky(text):
        attempts.append(text)
        if len(attempts) == 1:
            raise ProviderError("text-to-speech refused (429): slow down")
        return [tone(0.1)]

    wire, played, failed = Wire(clock), [], []
    p = make_player(clock, wire, played, failed, synth=flaky)
    try:
        p.say("u", "hello")
        wait_until(lambda: wire.of("mark"), 5, "the mark")
        assert len(wire.of("media")) == 5 and not failed and attempts == ["hello", "hello"]
    finally:
        p.close()


def test_a_failure_after_audio_went_out_is_not_retried(clock: VirtualClock) -> None:
    attempts: list[str] = []

    def breaks_off(text):
        attempts.append(text)
        yield tone(0.1)
        raise ProviderError("text-to-speech stream broke off: ReadTimeout")

    wire, played, failed = Wire(clock), [], []
    p = make_player(clock, wire, played, failed, synth=breaks_off)
    try:
        p.say("u", "hello")
        wait_until(lambda: failed, 5, "the failure")
        assert attempts == ["hello"] and len(wire.of("media")) == 5  # not said twice over the stream
        assert failed == [("u", "hello", "text-to-speech stream broke off: ReadTimeout")]
    finally:
        p.close()
