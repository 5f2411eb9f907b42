"""G.711 µ-law: 16-bit signed little-endian PCM <-> one byte per sample.

The encoder is the Sun g711.c 14-bit variant that CPython's ``audioop``
used (drop the two low bits, clip at 8159, bias 33). The textbook 16-bit
form (clip 32635, bias 0x84) rounds differently on a few hundred negative
inputs, and byte-exact agreement with ``audioop`` matters: ``audioop`` is
gone in Python 3.13, and recordings and tests made with it must still
match. Both forms share one decoder.

Everything is table-driven. Per-sample work in Python costs about a
microsecond, which is a whole millisecond per second of audio per call
direction; table lookups done by C loops (``bytes.translate``,
``operator.itemgetter``) keep a second of audio well under a millisecond.
"""

from __future__ import annotations

import array
import operator
import sys
from collections.abc import Callable

__all__ = ["SILENCE", "decode", "decode_sample", "encode", "encode_sample"]

#: The µ-law byte for a zero sample. Padding with it is inaudible.
SILENCE = 0xFF

# Upper bounds (inclusive, on the biased 14-bit magnitude) of the eight
# exponent segments; each segment doubles the quantization step.
_SEGMENT_ENDS = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_CLIP = 8159
_BIAS = 33  # 0x84 scaled down to the 14-bit domain


def _magnitude_code(magnitude: int) -> int:
    """Segment and mantissa bits (before inversion) for a 14-bit magnitude."""
    value = min(magnitude, _CLIP) + _BIAS
    for segment, end in enumerate(_SEGMENT_ENDS):
        if value <= end:
            return (segment << 4) | ((value >> (segment + 1)) & 0x0F)
    # Clipped full scale (8159 + 33 = 0x2000) overflows the last segment;
    # it saturates to the largest code, as in the C original.
    return 0x7F


def encode_sample(sample: int) -> int:
    """Encode one int16 sample (the reference the fast table must equal)."""
    # Floor shift, not truncation towards zero, exactly as the C code does
    # on a two's-complement int: this is what makes -1 encode to 0x7E.
    value = sample >> 2
    if value < 0:
        # Inverting all bits but the sign bit leaves the sign bit clear.
        return _magnitude_code(-value) ^ 0x7F
    return _magnitude_code(value) ^ 0xFF


def decode_sample(code: int) -> int:
    """Decode one µ-law byte to an int16 sample."""
    code = ~code & 0xFF
    exponent = (code >> 4) & 0x07
    magnitude = (((code & 0x0F) << 3) + 0x84) << exponent
    return 0x84 - magnitude if code & 0x80 else magnitude - 0x84


def _build_encode_table() -> bytes:
    # Calling encode_sample 65536 times costs ~30 ms of import time. Every
    # 14-bit magnitude covers four consecutive int16 inputs, so compute the
    # 8193 magnitude codes once and spread them with strided slice
    # assignment, then invert with translate: a few milliseconds.
    magnitudes = bytes(_magnitude_code(m) for m in range(8193))
    flip_positive = bytes(c ^ 0xFF for c in range(256))
    flip_negative = bytes(c ^ 0x7F for c in range(256))
    # Unsigned index u: 0..32767 are samples 0..32767 (magnitude u >> 2);
    # 32768..65535 are samples -32768..-1, whose magnitudes -(s >> 2) run
    # from 8192 down to 1, four inputs each.
    positive = bytearray(0x8000)
    negative = bytearray(0x8000)
    for offset in range(4):
        positive[offset::4] = magnitudes[:8192]
        negative[offset::4] = magnitudes[8192:0:-1]
    return bytes(positive.translate(flip_positive) + negative.translate(flip_negative))


# Index = the sample's 16 bits read as unsigned, so a native-order 'H' view
# of the input indexes it directly with no sign fix-up per sample.
_ENCODE_TABLE = _build_encode_table()


def decode_tables(sample: Callable[[int], int]) -> tuple[bytes, bytes]:
    """The two 256-byte translate tables of a G.711 decoder (the low and the
    high byte of each code's 16-bit sample)."""
    decoded = [sample(c) & 0xFFFF for c in range(256)]
    return bytes(v & 0xFF for v in decoded), bytes(v >> 8 for v in decoded)


def decode_with(tables: tuple[bytes, bytes], codes: bytes | bytearray | memoryview) -> bytes:
    """Decode G.711 ``codes`` to 16-bit signed little-endian PCM with
    ``decode_tables``: two translates interleaved by slice assignment, all C
    loops, no per-sample Python bytecode."""
    data = bytes(codes)
    out = bytearray(2 * len(data))
    out[0::2] = data.translate(tables[0])
    out[1::2] = data.translate(tables[1])
    return bytes(out)


_DECODE = decode_tables(decode_sample)

_LITTLE_ENDIAN = sys.byteorder == "little"


def _samples_unsigned(pcm: bytes | bytearray | memoryview) -> memoryview | array.array[int]:
    """The samples of little-endian s16 ``pcm`` as unsigned 16-bit ints."""
    if _LITTLE_ENDIAN:
        # Zero-copy view; the cast to bytes first accepts views of any format.
        return memoryview(pcm).cast("B").cast("H")
    samples = array.array("H", bytes(pcm))
    samples.byteswap()
    return samples


def encode(pcm: bytes | bytearray | memoryview) -> bytes:
    """Encode 16-bit signed little-endian mono PCM to µ-law, one byte per sample.

    Raises ValueError for an odd byte count: half a sample means the caller
    split a buffer in the wrong place, and silently dropping it would shift
    every later sample by one byte.
    """
    nbytes = memoryview(pcm).nbytes
    if nbytes % 2:
        raise ValueError(f"PCM length must be even (16-bit samples), got {nbytes} bytes")
    samples = _samples_unsigned(pcm)
    if len(samples) < 2:
        # itemgetter with fewer than two keys does not return a tuple.
        return bytes(_ENCODE_TABLE[s] for s in samples)
    # itemgetter(*keys) gathers in C; about twice as fast as map(getitem).
    return bytes(operator.itemgetter(*samples)(_ENCODE_TABLE))


def decode(ulaw: bytes | bytearray | memoryview) -> bytes:
    """Decode µ-law bytes to 16-bit signed little-endian mono PCM."""
    return decode_with(_DECODE, ulaw)
