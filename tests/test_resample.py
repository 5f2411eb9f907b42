"""24 kHz -> 8 kHz decimator: pass band, stop band, streaming equivalence."""

from __future__ import annotations

import array
import itertools
import math
import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicecalld.media.resample import (
    TAPS,
    Decimator,
    decimate_reference,
    design_lowpass,
    downsample_24k_to_8k,
)
from voicecalld.testing._audio_signals import speech_like_pcm

# Output samples to skip before measuring: the filter's span at 8 kHz.
WARMUP = len(TAPS) // 3 + 1


def tone(freq: float, seconds: float, amplitude: float = 12000.0, rate: int = 24000) -> bytes:
    samples = array.array(
        "h", (round(amplitude * math.sin(2 * math.pi * freq * n / rate)) for n in range(int(seconds * rate)))
    )
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


def samples_of(data: bytes) -> list[int]:
    out = array.array("h", data)
    if sys.byteorder == "big":
        out.byteswap()
    return out.tolist()


def rms(values: list[int]) -> float:
    return math.sqrt(sum(v * v for v in values) / len(values))


def gain_db(freq: float) -> float:
    source = tone(freq, 0.25)
    out = samples_of(downsample_24k_to_8k(source))
    # A tone filtered to nothing rounds to all-zero output; floor the ratio
    # so that reads as very quiet rather than a math domain error.
    return 20 * math.log10(max(rms(out[WARMUP:]), 1e-3) / rms(samples_of(source)))


def test_output_length_is_a_third() -> None:
    assert len(downsample_24k_to_8k(bytes(2 * 2400))) == 2 * 800
    # ceil(n / 3): output k is taken at input sample 3k.
    assert len(downsample_24k_to_8k(bytes(2 * 7))) == 2 * 3


@pytest.mark.parametrize("freq", [300.0, 1000.0, 2500.0])
def test_voice_band_passes(freq: float) -> None:
    assert abs(gain_db(freq)) < 1.0


@pytest.mark.parametrize("freq", [5000.0, 7000.0, 11000.0])
def test_alias_band_is_attenuated(freq: float) -> None:
    # 5 kHz would fold to 3 kHz after decimation; it must be >= 30 dB down.
    assert gain_db(freq) < -30.0


def test_output_is_a_tone_at_the_same_frequency() -> None:
    # Zero crossings of a 1 kHz tone at 8 kHz: 2 per cycle.
    out = samples_of(downsample_24k_to_8k(tone(1000.0, 0.5)))[WARMUP:]
    crossings = sum(1 for a, b in itertools.pairwise(out) if (a < 0) != (b < 0))
    seconds = len(out) / 8000
    assert abs(crossings / seconds - 2000) < 20


def test_silence_stays_silent() -> None:
    assert downsample_24k_to_8k(bytes(4800)) == bytes(1600)


def test_full_scale_clips_instead_of_wrapping() -> None:
    # A full-scale square wave overshoots (Gibbs); it must saturate, not wrap.
    square = array.array("h", ([32767] * 12 + [-32768] * 12) * 200)
    if sys.byteorder == "big":
        square.byteswap()
    out = samples_of(downsample_24k_to_8k(square.tobytes()))
    assert max(out) == 32767 and min(out) == -32768


def test_empty_input() -> None:
    assert downsample_24k_to_8k(b"") == b""
    dec = Decimator()
    assert dec.process(b"") == b""
    assert dec.process(b"\x01") == b""  # half a sample waits for its partner


def test_odd_byte_counts_are_carried() -> None:
    source = tone(440.0, 0.05)
    dec = Decimator()
    pieces = [dec.process(source[i : i + 1]) for i in range(len(source))]
    assert b"".join(pieces) == downsample_24k_to_8k(source)


def test_trailing_odd_byte_is_ignored_one_shot() -> None:
    source = tone(440.0, 0.01)
    assert downsample_24k_to_8k(source + b"\x7f") == downsample_24k_to_8k(source)


def test_reset_starts_over() -> None:
    source = tone(700.0, 0.02)
    dec = Decimator()
    first = dec.process(source)
    dec.process(b"\x01\x02\x03")
    dec.reset()
    assert dec.process(source) == first


# Deterministic noise: the interesting variation is in how it is cut up.
NOISE = random.Random(1234).randbytes(2 * 1200 + 1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=700), max_size=12))
def test_chunked_equals_one_shot(cuts: list[int]) -> None:
    source = NOISE
    dec = Decimator()
    out = bytearray()
    pos = 0
    for size in cuts:
        out += dec.process(source[pos : pos + size])
        pos += size
    out += dec.process(source[pos:])
    assert bytes(out) == downsample_24k_to_8k(source)


def test_custom_taps_identity() -> None:
    # A single unit tap makes the decimator pick every third sample, which
    # pins down the output alignment (output k = input 3k).
    values = list(range(-300, 300, 7))
    source = array.array("h", values)
    if sys.byteorder == "big":
        source.byteswap()
    out = samples_of(Decimator(taps=[1.0]).process(source.tobytes()))
    assert out == values[::3]


def test_design_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        design_lowpass(0, 1000, 24000)
    with pytest.raises(ValueError):
        design_lowpass(31, 13000, 24000)
    with pytest.raises(ValueError):
        Decimator(taps=[])


def test_taps_have_unity_dc_gain_and_symmetry() -> None:
    assert abs(sum(TAPS) - 1.0) < 1e-9
    assert all(abs(a - b) < 1e-12 for a, b in zip(TAPS, reversed(TAPS), strict=True))


@pytest.mark.parametrize("source", [
    pytest.param(speech_like_pcm(0.5, 24000), id="speech"),
    pytest.param(NOISE[:-1], id="full-scale-noise"),
    pytest.param(tone(3900.0, 0.1, amplitude=32767.0), id="full-scale-tone"),
])
def test_matches_the_direct_form_filter(source: bytes) -> None:
    # The big-integer polyphase filter computes what the textbook one does,
    # up to the taps' 16-bit quantization.
    fast, reference = samples_of(downsample_24k_to_8k(source)), samples_of(decimate_reference(source))
    assert len(fast) == len(reference)
    bound = Decimator().error_bound
    assert 1 <= bound <= 16
    assert max(abs(a - b) for a, b in zip(fast, reference, strict=True)) <= bound


def test_speech_matches_the_direct_form_to_the_last_place() -> None:
    source = speech_like_pcm(0.5, 24000)
    fast, reference = samples_of(downsample_24k_to_8k(source)), samples_of(decimate_reference(source))
    assert max(abs(a - b) for a, b in zip(fast, reference, strict=True)) <= 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=-32768, max_value=32767), max_size=400),
       st.lists(st.floats(min_value=-0.3, max_value=0.3), min_size=1, max_size=9))
def test_any_taps_match_the_direct_form(values: list[int], taps: list[float]) -> None:
    # Short and odd-length filters too: the phases are padded with zero taps.
    source = array.array("h", values)
    if sys.byteorder == "big":
        source.byteswap()
    dec = Decimator(taps=taps)
    fast = samples_of(dec.process(source.tobytes()))
    reference = samples_of(decimate_reference(source.tobytes(), taps))
    assert len(fast) == len(reference)
    assert all(abs(a - b) <= dec.error_bound for a, b in zip(fast, reference, strict=True))


def test_taps_beyond_the_fixed_point_range_are_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        Decimator(taps=[200.0])
    with pytest.raises(ValueError, match="out of range"):
        Decimator(taps=[-3.0, 1.0])
