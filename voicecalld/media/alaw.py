"""G.711 A-law: 16-bit signed little-endian PCM <-> one byte per sample, and
A-law -> µ-law transcoding.

A-law is what many European and UK phone legs carry (ITU-T G.711, Tables
1a/1b; "PCMA" in RTP, RFC 3551). A carrier that cannot transcode hands
its media stream over in the leg's codec, while the media layer speaks
µ-law to speech-to-text; ``to_mulaw`` bridges the two with one
``bytes.translate`` per frame.

The coder is the Sun g711.c form that CPython's ``audioop`` used
(``alaw2lin``/``lin2alaw``): the 13-bit magnitude (``sample >> 3``) in eight
segments (the first two with the same step), the even bits of every code inverted
(XOR 0x55) on the wire. Its decoder yields the midpoints of G.711's
decision intervals scaled to 16 bits (G.711's 1..4032 become 8..32256), so
0xD5 is +8, 0x55 is -8, 0xAA is +32256 and 0x2A is -32256.
"""

from __future__ import annotations

from . import mulaw

__all__ = ["SILENCE", "decode", "decode_sample", "encode", "encode_sample", "to_mulaw"]

#: The A-law byte for a zero sample (the smallest positive step, +8).
SILENCE = 0xD5

# Upper bounds (inclusive) of the eight segments of the 13-bit magnitude.
_SEGMENT_ENDS = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def encode_sample(sample: int) -> int:
    """Encode one int16 sample."""
    value = sample >> 3  # floor, as the C original does on two's complement
    if value >= 0:
        mask = 0xD5  # sign bit set (positive), even bits inverted
    else:
        mask = 0x55
        value = -value - 1  # one's complement: -1 is the smallest negative step
    for segment, end in enumerate(_SEGMENT_ENDS):
        if value <= end:
            shift = 1 if segment < 2 else segment
            return ((segment << 4) | ((value >> shift) & 0x0F)) ^ mask
    return 0x7F ^ mask  # beyond full scale: the largest code


def decode_sample(code: int) -> int:
    """Decode one A-law byte to an int16 sample."""
    code ^= 0x55
    magnitude = (code & 0x0F) << 4
    segment = (code >> 4) & 0x07
    if segment == 0:
        magnitude += 8
    else:
        magnitude = (magnitude + 0x108) << (segment - 1)
    return magnitude if code & 0x80 else -magnitude


_DECODE = mulaw.decode_tables(decode_sample)
#: A-law byte -> the µ-law byte of the same sample value.
_TO_MULAW = bytes(mulaw.encode_sample(decode_sample(c)) for c in range(256))
# Encoding: every 13-bit magnitude covers eight consecutive int16 inputs.
_ENCODE_TABLE = bytes(encode_sample(s - 0x10000 if s >= 0x8000 else s) for s in range(0, 0x10000, 8))


def encode(pcm: bytes | bytearray | memoryview) -> bytes:
    """Encode 16-bit signed little-endian mono PCM to A-law, one byte per sample."""
    data = memoryview(pcm).cast("B")
    if data.nbytes % 2:
        raise ValueError(f"PCM length must be even (16-bit samples), got {data.nbytes} bytes")
    # The high byte and the top five bits of the low byte pick the 13-bit
    # magnitude: index = unsigned sample >> 3. (Tests and the fake use this;
    # the daemon only decodes, so clarity beats speed here.)
    table = _ENCODE_TABLE
    return bytes(table[(data[i] | (data[i + 1] << 8)) >> 3] for i in range(0, data.nbytes, 2))


def decode(alaw: bytes | bytearray | memoryview) -> bytes:
    """Decode A-law bytes to 16-bit signed little-endian mono PCM."""
    return mulaw.decode_with(_DECODE, alaw)


def to_mulaw(alaw: bytes) -> bytes:
    """The same audio as µ-law (one table lookup per byte, in C)."""
    return alaw.translate(_TO_MULAW)
