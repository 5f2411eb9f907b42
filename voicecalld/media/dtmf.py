"""DTMF: which digits a call may send, and the tones themselves.

Digits are ``0-9 * # A-D`` and ``w``, a half-second pause (the set and the
meaning of ``w`` that Twilio's ``<Play digits>`` and Telnyx's ``send_dtmf``
share: https://www.twilio.com/docs/voice/twiml/play#attributes-digits,
https://developers.telnyx.com/api/call-control/send-dtmf), at most
``MAX_DIGITS`` of them.

On a streamed call the tones are made here and played in-band, as µ-law on
the stream: each digit is the sum of its row and column frequency (ITU-T
Q.23) for ``TONE_MS``, followed by ``GAP_MS`` of silence; ``w`` is
``PAUSE_MS`` of silence. Both components are at ``LEVEL`` of full scale,
so their sum never clips and survives µ-law intact.
"""

from __future__ import annotations

import array
import math
import sys
from functools import lru_cache

from ..errors import InvalidParams
from . import mulaw

DIGITS = "0123456789*#ABCD"
PAUSE = "w"
ALLOWED = DIGITS + PAUSE
MAX_DIGITS = 64
#: How the allowed set is named in errors and docs.
ALLOWED_TEXT = "0-9, *, #, A-D and w (a 0.5 s pause)"

RATE = 8000
TONE_MS = 100
GAP_MS = 100
PAUSE_MS = 500
LEVEL = 0.35  # of full scale, per frequency

#: ITU-T Q.23: (row, column) frequency in Hz of each key.
_ROWS = (697, 770, 852, 941)
_COLUMNS = (1209, 1336, 1477, 1633)
_KEYPAD = ("123A", "456B", "789C", "*0#D")
FREQUENCIES: dict[str, tuple[int, int]] = {
    key: (_ROWS[r], _COLUMNS[c]) for r, keys in enumerate(_KEYPAD) for c, key in enumerate(keys)
}


def check(digits: object, name: str = "digits") -> str:
    """``digits`` if it is a valid DTMF string, else ``InvalidParams``
    naming the allowed set."""
    if not isinstance(digits, str) or not digits:
        raise InvalidParams(f"{name} must be a non-empty string of {ALLOWED_TEXT}")
    if len(digits) > MAX_DIGITS:
        raise InvalidParams(f"{name} has {len(digits)} characters; at most {MAX_DIGITS} are allowed")
    bad = sorted({c for c in digits if c not in ALLOWED})
    if bad:
        raise InvalidParams(f"{name} may only contain {ALLOWED_TEXT}; not {''.join(bad)!r}",
                            {"allowed": ALLOWED})
    return digits


def duration(digits: str) -> float:
    """Seconds the tones of ``digits`` take."""
    return sum(PAUSE_MS if c == PAUSE else TONE_MS + GAP_MS for c in digits) / 1000


def _silence(ms: int) -> bytes:
    return bytes([mulaw.SILENCE]) * (RATE * ms // 1000)


@lru_cache(maxsize=len(DIGITS))
def _tone(key: str) -> bytes:
    """One key's tone as µ-law (made once per key: a per-sample loop)."""
    low, high = FREQUENCIES[key]
    peak = LEVEL * 32767
    n = RATE * TONE_MS // 1000
    samples = array.array("h", (round(peak * (math.sin(2 * math.pi * low * i / RATE)
                                              + math.sin(2 * math.pi * high * i / RATE))) for i in range(n)))
    if sys.byteorder == "big":
        samples.byteswap()
    return mulaw.encode(samples.tobytes())


def tones(digits: str) -> bytes:
    """The µ-law audio (8 kHz) that sends ``digits`` (checked already)."""
    out = bytearray()
    for c in digits:
        if c == PAUSE:
            out += _silence(PAUSE_MS)
        else:
            out += _tone(c) + _silence(GAP_MS)
    return bytes(out)
