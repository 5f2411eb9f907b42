"""G.711 µ-law codec: known vectors, audioop parity, error bounds."""

from __future__ import annotations

import array
import sys
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicecalld.media import mulaw

with warnings.catch_warnings():
    # audioop warns on import in 3.11-3.12 and is gone in 3.13.
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:  # pragma: no cover - depends on the interpreter
        audioop = None

needs_audioop = pytest.mark.skipif(audioop is None, reason="audioop is not available")

INT16 = st.integers(min_value=-32768, max_value=32767)


def pcm(*samples: int) -> bytes:
    data = array.array("h", samples)
    if sys.byteorder == "big":
        data.byteswap()
    return data.tobytes()


def samples_of(data: bytes) -> list[int]:
    out = array.array("h", data)
    if sys.byteorder == "big":
        out.byteswap()
    return out.tolist()


# What CPython's audioop.lin2ulaw (the Sun g711.c 14-bit variant) gives.
ENCODE_VECTORS = [
    (0, 0xFF),
    (100, 0xF2),
    (-100, 0x72),
    (1000, 0xCE),
    (-1000, 0x4E),
    (8031, 0xA0),
    (32767, 0x80),
    (-32768, 0x00),
    (-1, 0x7E),  # the 14-bit variant's floor shift; the 16-bit form gives 0x7F
]

DECODE_VECTORS = [(0x80, 32124), (0x00, -32124), (0xFE, 8), (0x7E, -8), (0xFF, 0), (0x7F, 0)]


@pytest.mark.parametrize(("sample", "code"), ENCODE_VECTORS)
def test_encode_vectors(sample: int, code: int) -> None:
    assert mulaw.encode(pcm(sample)) == bytes([code])
    assert mulaw.encode_sample(sample) == code


@pytest.mark.parametrize(("code", "sample"), DECODE_VECTORS)
def test_decode_vectors(code: int, sample: int) -> None:
    assert samples_of(mulaw.decode(bytes([code]))) == [sample]
    assert mulaw.decode_sample(code) == sample


def test_silence_constant() -> None:
    assert mulaw.SILENCE == 0xFF
    assert mulaw.encode(pcm(0, 0, 0)) == bytes([mulaw.SILENCE]) * 3
    assert mulaw.decode(bytes([mulaw.SILENCE]) * 4) == bytes(8)


def test_vectors_in_one_buffer_keep_order() -> None:
    samples = [s for s, _ in ENCODE_VECTORS]
    assert mulaw.encode(pcm(*samples)) == bytes(c for _, c in ENCODE_VECTORS)


def test_table_matches_reference_for_every_input() -> None:
    every = pcm(*range(-32768, 32768))
    assert mulaw.encode(every) == bytes(mulaw.encode_sample(s) for s in range(-32768, 32768))


def test_decode_every_code_and_range() -> None:
    decoded = samples_of(mulaw.decode(bytes(range(256))))
    assert decoded == [mulaw.decode_sample(c) for c in range(256)]
    assert max(decoded) == 32124 and min(decoded) == -32124


@needs_audioop
def test_encode_matches_audioop_exhaustively() -> None:
    every = pcm(*range(-32768, 32768))
    assert mulaw.encode(every) == audioop.lin2ulaw(every, 2)


@needs_audioop
def test_decode_matches_audioop_exhaustively() -> None:
    codes = bytes(range(256))
    assert mulaw.decode(codes) == audioop.ulaw2lin(codes, 2)


def test_empty_and_single_sample() -> None:
    assert mulaw.encode(b"") == b""
    assert mulaw.decode(b"") == b""
    assert mulaw.encode(pcm(1000)) == b"\xce"


def test_odd_length_pcm_is_rejected() -> None:
    with pytest.raises(ValueError, match="even"):
        mulaw.encode(b"\x00\x01\x02")


def test_accepts_bytearray_and_memoryview() -> None:
    data = pcm(100, -100, 1000)
    expected = mulaw.encode(data)
    assert mulaw.encode(bytearray(data)) == expected
    assert mulaw.encode(memoryview(data)) == expected
    assert mulaw.encode(memoryview(array.array("h", samples_of(data)))) == expected
    assert mulaw.decode(bytearray(expected)) == mulaw.decode(memoryview(expected))


def max_roundtrip_error(sample: int) -> int:
    """Half the quantization step of the segment ``sample`` encodes into,
    plus the 14-bit domain's dropped bits, plus clipping beyond 32124.

    Segments are defined on the biased 14-bit magnitude (G.711: segment s
    holds 2**(s+5) <= v < 2**(s+6)), and a step there is 2**(s+3) in the
    16-bit domain.
    """
    magnitude14 = -(sample >> 2) if sample < 0 else sample >> 2
    biased = min(magnitude14, 8159) + 33
    segment = min(max(biased.bit_length() - 6, 0), 7)
    step = 8 << segment
    clipping = max(abs(sample) - 32124, 0)
    return step // 2 + 4 + clipping


@given(INT16)
def test_roundtrip_error_bounded_by_segment(sample: int) -> None:
    back = samples_of(mulaw.decode(mulaw.encode(pcm(sample))))[0]
    assert abs(back - sample) <= max_roundtrip_error(sample)


def test_roundtrip_error_bounded_for_every_input() -> None:
    every = range(-32768, 32768)
    back = samples_of(mulaw.decode(mulaw.encode(pcm(*every))))
    worst = [(s, b) for s, b in zip(every, back, strict=True) if abs(b - s) > max_roundtrip_error(s)]
    assert worst == []


def test_roundtrip_relative_error_for_loud_samples() -> None:
    # Logarithmic companding: above the first segments the error is a
    # roughly constant fraction of the amplitude. Half a step over the
    # segment's lowest magnitude is 1/32 (~3 %); the bias and the 14-bit
    # floor push it to at most 1/25 (4 %) plus a few LSBs.
    loud = [s for s in range(-32124, 32125) if abs(s) >= 256]
    back = samples_of(mulaw.decode(mulaw.encode(pcm(*loud))))
    worst = max((abs(b - s) - 4) / abs(s) for s, b in zip(loud, back, strict=True))
    assert worst <= 1 / 25


@given(st.binary(max_size=400))
def test_decode_encode_is_identity_on_codes(codes: bytes) -> None:
    # Every code but 0x7F (negative zero, which decodes to 0 like 0xFF)
    # survives decode -> encode unchanged.
    codes = codes.replace(b"\x7f", b"\xff")
    assert mulaw.encode(mulaw.decode(codes)) == codes


@given(st.lists(INT16, max_size=300))
def test_buffer_encode_equals_per_sample(samples: list[int]) -> None:
    assert mulaw.encode(pcm(*samples)) == bytes(mulaw.encode_sample(s) for s in samples)


@given(INT16, INT16)
def test_encode_is_monotonic(a: int, b: int) -> None:
    # Larger samples never decode smaller: the companding curve is monotonic.
    lo, hi = sorted((a, b))
    dlo, dhi = samples_of(mulaw.decode(mulaw.encode(pcm(lo, hi))))
    assert dlo <= dhi


@given(st.lists(INT16, min_size=1, max_size=200))
def test_sign_symmetry_of_decode(samples: list[int]) -> None:
    codes = mulaw.encode(pcm(*samples))
    flipped = bytes(c ^ 0x80 for c in codes)
    assert samples_of(mulaw.decode(flipped)) == [-v for v in samples_of(mulaw.decode(codes))]
