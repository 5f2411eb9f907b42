"""24 kHz -> 8 kHz decimation for OpenAI TTS audio bound for a phone line.

OpenAI's ``pcm`` speech is 24 kHz s16le; telephone µ-law is 8 kHz. Taking
every third sample would fold everything between 4 and 12 kHz back into
the voice band as audible aliasing (sibilants turn into whistles), so a
low-pass FIR runs first. Its cutoff sits a little under the new 4 kHz
Nyquist: telephone channels only carry ~300-3400 Hz anyway, and the
transition band has to finish before 4 kHz-ish to keep aliases out.

The filter is evaluated only at the input positions that survive
decimation, as three polyphase convolutions done by big-integer
multiplication (see ``Decimator``): about a millisecond of CPU per second
of audio, a twentieth of the direct form (``benchmarks/codec.py``), which matters because a busy media
daemon synthesizes speech at several times real time for many calls at
once, and every millisecond here is one the thread reading the callers'
audio waits for the interpreter lock.
"""

from __future__ import annotations

import array
import math
import operator
import sys

__all__ = ["FACTOR", "TAPS", "Decimator", "decimate_reference", "design_lowpass", "downsample_24k_to_8k"]

FACTOR = 3
INPUT_RATE = 24000
OUTPUT_RATE = INPUT_RATE // FACTOR

# 48 taps with a Kaiser window (beta 5) around a 3.6 kHz cutoff: within
# 0.5 dB up to 3 kHz and -3 dB at the 3.4 kHz edge of the telephone band,
# while everything that would alias back into the band (4.4 kHz and up)
# is down by more than 45 dB, and 5 kHz by about 59 dB. Twice the taps buy
# only stop-band depth nobody hears on a phone line, at twice the CPU: on
# a busy media daemon the filter is the main cost of speaking.
_NUM_TAPS = 48
_CUTOFF_HZ = 3600.0
_KAISER_BETA = 5.0

_LITTLE_ENDIAN = sys.byteorder == "little"


def _bessel_i0(x: float) -> float:
    # Power series of the modified Bessel function; converges quickly for
    # the small arguments a Kaiser window needs (beta <= ~10).
    total = term = 1.0
    k = 0
    while term > 1e-12 * total:
        k += 1
        term *= (x / (2.0 * k)) ** 2
        total += term
    return total


def design_lowpass(
    num_taps: int, cutoff_hz: float, rate_hz: float, beta: float = _KAISER_BETA
) -> list[float]:
    """Kaiser-windowed sinc low-pass taps, normalized to unity DC gain."""
    if num_taps < 1:
        raise ValueError("num_taps must be positive")
    if not 0 < cutoff_hz < rate_hz / 2:
        raise ValueError("cutoff must lie between 0 and the Nyquist frequency")
    fc = cutoff_hz / rate_hz  # cycles per sample
    centre = (num_taps - 1) / 2
    norm = _bessel_i0(beta)
    taps = []
    for n in range(num_taps):
        t = n - centre
        ideal = 2 * fc if t == 0 else math.sin(2 * math.pi * fc * t) / (math.pi * t)
        ratio = t / centre if centre else 0.0
        window = _bessel_i0(beta * math.sqrt(max(0.0, 1 - ratio * ratio))) / norm
        taps.append(ideal * window)
    gain = sum(taps)
    return [tap / gain for tap in taps]


#: The filter taps, in time order (symmetric, so order rarely matters).
TAPS: tuple[float, ...] = tuple(design_lowpass(_NUM_TAPS, _CUTOFF_HZ, INPUT_RATE))


#: Fixed-point scale of the quantized taps (taps * 2**16, rounded). The
#: rounding error is ~1e-5 of full scale per tap, far below what µ-law keeps.
_TAP_BITS = 16
#: Each sample occupies a 40-bit field of the big integers below: wide enough
#: for a whole window's sum plus the offset that keeps it non-negative.
_FIELD_BYTES = 5
_FIELD_BITS = 8 * _FIELD_BYTES
#: Added to every field: makes each sum non-negative (so no field borrows
#: from the next) and puts the rounded output sample, offset by 98304, in
#: the field's bits 16-39, i.e. its bytes 2-4.
_OUTPUT_OFFSET = 98304  # 65536 + 32768: the field's top byte is 1 for every in-range sample
_SIGN_FLIP = bytes(b ^ 0x80 for b in range(256))


def _quantize(taps: tuple[float, ...]) -> tuple[int, ...]:
    return tuple(round(t * (1 << _TAP_BITS)) for t in taps)


class Decimator:
    """Stateful 24 kHz -> 8 kHz low-pass decimator for s16le mono PCM.

    Feeding a stream in arbitrary chunks (odd byte counts included) gives
    exactly the same bytes as feeding it in one piece: the filter's history
    and any half sample are carried across calls. Output sample k is the
    filter evaluated at input sample 3k, so the output is delayed by the
    filter's group delay (about 1.5 ms) and the first ~4 ms warm up from
    silence. Not thread-safe: use one per stream.

    How, without a per-sample Python loop: a convolution is a polynomial
    product, and Python's big integers multiply polynomials for us when the
    samples are packed into fixed-width bit fields (Kronecker substitution).
    Only every third output is wanted, so the filter is split into its three
    phases (taps 0, 3, 6...; 1, 4, 7...; 2, 5, 8...), each convolved with the
    input samples of the matching phase: three products a third of the
    size, summed, and every field of the sum is an output sample. Packing
    and unpacking are byte slicing; the multiply runs in C. Integer
    arithmetic makes the result exact and chunking-invariant; it differs
    from the direct-form float filter (``decimate_reference``) only by the
    taps' quantization to 16 bits: on speech, by one in the last place at
    most, and never by more than ``error_bound``.
    """

    def __init__(self, taps: tuple[float, ...] | list[float] = TAPS) -> None:
        if not taps:
            raise ValueError("need at least one tap")
        quantized = _quantize(tuple(taps))
        self._span = len(quantized)
        #: Taps per phase; the filter is padded with zero taps to 3 phases of this.
        self._per_phase = -(-self._span // FACTOR)
        padded = quantized + (0,) * (FACTOR * self._per_phase - self._span)
        #: Phase r's taps as one integer: tap 3m+r in field m.
        self._phases = tuple(
            sum(tap << (_FIELD_BITS * m) for m, tap in enumerate(padded[r::FACTOR])) for r in range(FACTOR))
        # A field holds sum(q * (x + 32768)) = 2**16 * y + 32768 * sum(q);
        # this makes it 2**16 * (y + 98304) + 2**15 (the 2**15 rounds).
        self._offset = (_OUTPUT_OFFSET << _TAP_BITS) - 32768 * sum(quantized) + (1 << (_TAP_BITS - 1))
        # Every field, even a window that only partly overlaps the input,
        # must stay within [0, 2**40): one that did not would carry into or
        # borrow from its neighbour.
        lowest = self._offset + 65535 * sum(q for q in quantized if q < 0)
        highest = self._offset + 65535 * sum(q for q in quantized if q > 0)
        if lowest < 0 or highest >= 1 << _FIELD_BITS:
            raise ValueError("taps out of range for the fixed-point filter (keep their gain near 1)")
        self._offsets: dict[int, int] = {}  # offset in every one of n fields, by n
        #: The most an output sample can differ from ``decimate_reference``
        #: (full-scale input, every quantization error adding up, plus rounding).
        error = sum(abs(t - q / (1 << _TAP_BITS)) for t, q in zip(taps, quantized, strict=True))
        self.error_bound = math.ceil(32768 * error) + 1
        self.reset()

    def reset(self) -> None:
        """Forget all history, as if the stream started again."""
        # Zeros stand in for the samples before the stream began. History is
        # kept as s16le bytes, so enough of it for every phase's first window.
        keep = FACTOR * self._per_phase
        self._history = bytes(2 * keep)
        # Index, within history + new samples, of the newest sample of the
        # next output's window.
        self._next = keep
        self._odd_byte = b""

    def process(self, pcm24k: bytes | bytearray | memoryview) -> bytes:
        """Filter and decimate a chunk; returns the 8 kHz s16le samples it completes."""
        data = self._odd_byte + bytes(pcm24k)
        if len(data) % 2:
            data, self._odd_byte = data[:-1], data[-1:]
        else:
            self._odd_byte = b""
        if not data:
            return b""
        buf = self._history + data
        total = len(buf) // 2
        count = len(range(self._next, total, FACTOR))  # outputs this chunk completes
        out = self._filter(buf, count) if count else b""
        following = self._next + FACTOR * count
        keep = len(self._history) // 2
        self._history = buf[len(buf) - 2 * keep:]
        self._next = following - (total - keep)
        return out

    def _filter(self, buf: bytes, count: int) -> bytes:
        per_phase = self._per_phase
        # The input as unsigned samples (x + 32768): low bytes, and high
        # bytes with the sign bit flipped.
        low, high = buf[0::2], buf[1::2].translate(_SIGN_FLIP)
        fields = count + per_phase - 1  # samples each phase's product takes
        total = self._offset_in(fields + per_phase - 1)
        for r, phase in enumerate(self._phases):
            # Phase r reads samples next - r - 3m: start where its oldest tap looks.
            start = self._next - r - FACTOR * (per_phase - 1)
            packed = bytearray(_FIELD_BYTES * fields)
            packed[0::_FIELD_BYTES] = low[start::FACTOR][:fields]
            packed[1::_FIELD_BYTES] = high[start::FACTOR][:fields]
            total += int.from_bytes(packed, "little") * phase
        first = per_phase - 1  # the first field whose window lies wholly in buf
        sums = total.to_bytes(_FIELD_BYTES * (fields + per_phase), "little")[
            _FIELD_BYTES * first:_FIELD_BYTES * (first + count)]
        # Output k is field per_phase - 1 + k: bytes 2-4 hold y + 98304.
        out = bytearray(2 * count)
        out[0::2] = sums[2::_FIELD_BYTES]
        out[1::2] = sums[3::_FIELD_BYTES].translate(_SIGN_FLIP)
        tops = sums[4::_FIELD_BYTES]
        if tops.count(1) != count:
            _clip(out, tops)
        return bytes(out)

    def _offset_in(self, fields: int) -> int:
        offset = self._offsets.get(fields)
        if offset is None:
            if len(self._offsets) > 16:
                self._offsets.clear()  # chunk sizes repeat; a stream of odd ones must not grow this
            ones = int.from_bytes((b"\x01" + bytes(_FIELD_BYTES - 1)) * fields, "little")  # 1 in every field
            offset = self._offsets[fields] = ones * self._offset
        return offset


def _clip(out: bytearray, tops: bytes) -> None:
    """Saturate the samples whose sum left the 16-bit range (top byte 0:
    below -32768; 2 or more: above 32767), instead of letting them wrap."""
    for k, top in enumerate(tops):
        if top == 0:
            out[2 * k:2 * k + 2] = b"\x00\x80"
        elif top > 1:
            out[2 * k:2 * k + 2] = b"\xff\x7f"


def decimate_reference(pcm: bytes, taps: tuple[float, ...] | list[float] = TAPS) -> bytes:
    """The direct-form float filter, one output at a time: the definition
    ``Decimator`` is tested and benchmarked against (about twenty times slower)."""
    samples = array.array("h", pcm[: len(pcm) - len(pcm) % 2])
    if not _LITTLE_ENDIAN:
        samples.byteswap()
    span = len(taps)
    buf = [0.0] * (span - 1) + [float(s) for s in samples]
    reverse = tuple(reversed(taps))
    values = [sum(map(operator.mul, reverse, buf[p - span + 1:p + 1])) for p in range(span - 1, len(buf), FACTOR)]
    out = array.array("h", [max(-32768, min(32767, math.floor(v + 0.5))) for v in values])
    if not _LITTLE_ENDIAN:
        out.byteswap()
    return out.tobytes()


def downsample_24k_to_8k(pcm: bytes | bytearray | memoryview) -> bytes:
    """One-shot conversion of a whole 24 kHz s16le buffer to 8 kHz.

    A trailing odd byte is ignored. Identical to one ``Decimator.process``
    call, so chunked streaming and one-shot conversion agree.
    """
    return Decimator().process(pcm)
