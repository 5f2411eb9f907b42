"""A DTMF detector for tests: µ-law audio back to the digits it sends.

Written from the standard (ITU-T Q.23 frequencies), not from the daemon's
tone generator, so that it checks the tones independently. The audio is
cut into 20 ms blocks; in each, the Goertzel algorithm measures the power
at the eight DTMF frequencies. A block is a key when the strongest row and
the strongest column frequency together hold most of the block's energy
and each stands well above the other frequencies of its group; a key
pressed over consecutive blocks counts once, and it must be released (a
block that is no key) before the same key counts again.
"""

from __future__ import annotations

import array
import math

from voicecalld.media import mulaw

RATE = 8000
BLOCK = 160  # 20 ms
ROWS = (697, 770, 852, 941)
COLUMNS = (1209, 1336, 1477, 1633)
KEYS = ("123A", "456B", "789C", "*0#D")


def _goertzel(samples: list[float], freq: float) -> float:
    coeff = 2 * math.cos(2 * math.pi * freq / RATE)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    return s1 * s1 + s2 * s2 - coeff * s1 * s2


def block_key(samples: list[float]) -> str | None:
    """The key a block of samples holds, if any."""
    energy = sum(x * x for x in samples)
    if energy < len(samples) * 1e5:  # about -50 dBFS: silence
        return None
    rows = [_goertzel(samples, f) for f in ROWS]
    cols = [_goertzel(samples, f) for f in COLUMNS]
    r, c = max(range(4), key=rows.__getitem__), max(range(4), key=cols.__getitem__)
    # For a sinusoid of amplitude A over N samples the Goertzel power is about
    # (A N / 2)^2 and its energy A^2 N / 2: power * 2 / N is its energy.
    tone_power = (rows[r] + cols[c]) * 2 / len(samples)
    if tone_power < 0.7 * energy:
        return None
    if any(p * 10 > rows[r] for i, p in enumerate(rows) if i != r):
        return None
    if any(p * 10 > cols[c] for i, p in enumerate(cols) if i != c):
        return None
    return KEYS[r][c]


def decode(ulaw: bytes) -> str:
    """The digits µ-law audio sends, in order."""
    pcm = array.array("h", mulaw.decode(ulaw))
    out: list[str] = []
    previous: str | None = None
    for start in range(0, len(pcm) - BLOCK + 1, BLOCK):
        key = block_key([float(x) for x in pcm[start:start + BLOCK]])
        if key is not None and key != previous:
            out.append(key)
        previous = key
    return "".join(out)
