"""G.711 A-law against the reference: ITU-T G.711 Table 1a/1b's decoder
output values, the wire's even-bit inversion, and (where the interpreter
still has it) CPython's audioop, byte for byte over every int16."""

from __future__ import annotations

import struct
import warnings

import pytest

from voicecalld.media import alaw, mulaw


def itu_decoder_values() -> list[int]:
    """G.711's A-law decoder outputs for the positive codes, in its 12-bit
    units (the midpoints of the decision intervals): segments 1 and 2 in
    steps of 2 from 1 (1, 3, ... 63), then each segment doubles the step:
    66..126 by 4, 132..252 by 8, ..., 2112..4032 by 128."""
    values = [1 + 2 * i for i in range(32)]
    for segment in range(2, 8):
        step = 2 << (segment - 1)
        base = 32 << (segment - 1)
        values += [base + step // 2 + step * i for i in range(16)]
    return values


def test_decoder_yields_the_itu_values_scaled_to_16_bits() -> None:
    # Character signals (before the even-bit inversion) 0x80..0xFF are the
    # positive ones, in increasing order of magnitude.
    positive = [alaw.decode_sample(0x80 + i ^ 0x55) for i in range(128)]
    assert positive == [8 * v for v in itu_decoder_values()]
    negative = [alaw.decode_sample(i ^ 0x55) for i in range(128)]
    assert negative == [-8 * v for v in itu_decoder_values()]


@pytest.mark.parametrize(("code", "sample"), [
    (0xD5, 8), (0x55, -8),          # the smallest steps (character signal 0x80 / 0x00 after inversion)
    (0xAA, 32256), (0x2A, -32256),  # full scale: G.711's 4032
    (0xD4, 24), (0x80, 5504), (0x00, -5504), (0xFF, 848),
])
def test_decode_vectors(code: int, sample: int) -> None:
    assert alaw.decode_sample(code) == sample
    assert alaw.decode(bytes([code])) == struct.pack("<h", sample)


@pytest.mark.parametrize(("sample", "code"), [
    (0, 0xD5), (-1, 0x55), (15, 0xD5), (16, 0xD4), (32767, 0xAA), (-32768, 0x2A), (1000, 0xFA), (-1000, 0x7A),
])
def test_encode_vectors(sample: int, code: int) -> None:
    assert alaw.encode_sample(sample) == code
    assert alaw.encode(struct.pack("<h", sample)) == bytes([code])


def test_every_code_survives_decode_then_encode() -> None:
    codes = bytes(range(256))
    assert alaw.encode(alaw.decode(codes)) == codes


def test_to_mulaw_is_the_same_sound() -> None:
    codes = bytes(range(256))
    assert alaw.to_mulaw(codes) == mulaw.encode(alaw.decode(codes))
    for a, u in zip(codes, alaw.to_mulaw(codes), strict=True):
        target, got = alaw.decode_sample(a), mulaw.decode_sample(u)
        # Within µ-law's quantization step at that level (about 1/16 of it, at least 16).
        assert abs(got - target) <= max(16, abs(target) // 16), (hex(a), target, got)
    assert alaw.to_mulaw(bytes([alaw.SILENCE])) == bytes([mulaw.encode_sample(8)])


def test_odd_pcm_is_refused() -> None:
    with pytest.raises(ValueError):
        alaw.encode(b"\x00\x01\x02")


def test_matches_audioop_where_it_exists() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # gone in Python 3.13 (PEP 594)
    pcm = struct.pack("<65536h", *range(-32768, 32768))
    assert alaw.encode(pcm) == audioop.lin2alaw(pcm, 2)
    assert alaw.decode(bytes(range(256))) == audioop.alaw2lin(bytes(range(256)), 2)
