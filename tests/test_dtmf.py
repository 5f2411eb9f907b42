"""DTMF digits and tones: which digits are allowed, the tones made for a
streamed call (decoded back by an independent Goertzel detector), and
the player's handling of them: in order with speech, and never cut off by
a barge-in (the far end's voice, an IVR's prompt, must not stop them)."""

from __future__ import annotations

import base64
import threading

import pytest
from dtmf_detect import decode
from test_player_tts import VirtualClock, Wire, make_player, tone

from voicecalld.errors import InvalidParams
from voicecalld.media import dtmf
from voicecalld.testing._wait import wait_until


@pytest.mark.parametrize("digits", ["0123456789*#ABCD", "w", "1w2ww3", "9" * 64])
def test_allowed_digits(digits: str) -> None:
    assert dtmf.check(digits) == digits


@pytest.mark.parametrize(("digits", "why"), [
    ("12x", "not 'x'"), ("abc", "not 'abc'"), ("W", "not 'W'"), ("1 2", "not ' '"), ("", "non-empty"),
    ("1" * 65, "at most 64"), (7, "non-empty string"), (None, "non-empty string"),
])
def test_other_digits_are_refused_naming_the_allowed_set(digits: object, why: str) -> None:
    with pytest.raises(InvalidParams) as info:
        dtmf.check(digits)
    assert why in info.value.message
    if "not" in why:
        assert "0-9, *, #, A-D and w (a 0.5 s pause)" in info.value.message


def test_tones_are_100_ms_each_then_100_ms_of_silence_and_w_is_500_ms() -> None:
    assert len(dtmf.tones("1")) == 1600 and len(dtmf.tones("w")) == 4000 and len(dtmf.tones("1w2")) == 7200
    assert dtmf.duration("1w2") == pytest.approx(0.9)
    assert dtmf.tones("w") == bytes([0xFF]) * 4000  # µ-law silence


def test_tones_decode_back_to_the_digits() -> None:
    assert decode(dtmf.tones("0123456789*#ABCD")) == "0123456789*#ABCD"
    assert decode(dtmf.tones("11w22")) == "1122"  # the same key twice is two presses


# --- the player ---------------------------------------------------------------------------------


def media_audio(wire: Wire) -> bytes:
    return b"".join(base64.b64decode(m["media"]["payload"]) for _, m in wire.of("media"))


def test_tones_play_after_queued_speech_and_report_nothing(clock: VirtualClock) -> None:
    wire, played, failed = Wire(clock), [], []
    p = make_player(clock, wire, played, failed)
    try:
        p.say("u1", "x" * 20)  # 0.2 s of speech first
        p.play_audio("t1", dtmf.tones("42"))
        wait_until(lambda: len(wire.of("mark")) == 2, 5, "both marks")
        assert [m["mark"]["name"] for _, m in wire.of("mark")] == ["u1", "t1"]
        assert decode(media_audio(wire)) == "42"
        p.mark_echoed("u1")
        p.mark_echoed("t1")
        assert played == ["u1"] and not p.speaking  # tones are no utterance: only speech is reported played
    finally:
        p.close()


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


def test_barge_in_does_not_cut_tones(clock: VirtualClock) -> None:
    go_on = threading.Event()

    def synth(text: str):
        yield tone(0.5)
        go_on.wait(5)  # the rest is "still being synthesized" when the caller barges in
        yield tone(2.5)

    wire, played, failed = Wire(clock), [], []
    p = make_player(clock, wire, played, failed, synth=synth)
    try:
        p.play_audio("t1", dtmf.tones("123"))
        wait_until(lambda: wire.of("mark"), 5, "the tones' mark")
        assert p.interrupt() is None  # the tones are still playing at the carrier
        assert wire.of("clear") == []
        p.mark_echoed("t1")
        tones_sent = len(wire.of("media"))
        assert tones_sent == 30  # 3 x (100 ms + 100 ms)
        # Speech with tones queued behind it: a barge-in stops the speech only.
        p.say("long", "x" * 300)
        p.play_audio("t2", dtmf.tones("9"))
        wait_until(lambda: len(wire.of("media")) == tones_sent + 25, 5, "the first half second of the speech")
        assert p.interrupt() is not None
        assert played == ["long"]
        go_on.set()
        wait_until(lambda: [m["mark"]["name"] for _, m in wire.of("mark")] == ["t1", "t2"], 5, "the second tones")
        events = wire.events()
        after_clear = events[events.index("clear") + 1:]
        assert after_clear == ["media"] * 10 + ["mark"]  # 9: 100 ms tone + 100 ms gap, all of it
    finally:
        p.close()
