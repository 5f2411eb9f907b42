"""Synthetic audio for tests: a voiced, syllabic signal and silence.

Real recordings would bloat the repository and random noise does not look
like speech to an energy VAD with hangover, so tests use a buzz: a 120 Hz
fundamental with a few falling harmonics (all well inside the telephone
band), shaped by a 4 Hz syllable envelope that never quite reaches zero.
It is deterministic, so tests that measure it are repeatable.
"""

from __future__ import annotations

import array
import math
import sys
from collections.abc import Callable
from functools import lru_cache

__all__ = ["silence_pcm", "speech_like_pcm"]

_FUNDAMENTAL_HZ = 120.0
_HARMONICS = ((1, 1.0), (2, 0.6), (3, 0.45), (5, 0.3), (8, 0.15))
_SYLLABLE_HZ = 4.0
# The envelope's floor keeps every 20 ms frame of an utterance voiced, so a
# VAD does not split one utterance into several.
_ENVELOPE_FLOOR = 0.35


@lru_cache(maxsize=8)
def _one_second(rate: int, level: float) -> bytes:
    # One second holds whole cycles of both the fundamental and the syllable
    # envelope, so tiling it is seamless; cache it because building it is
    # the only per-sample Python loop here.
    norm = sum(weight for _, weight in _HARMONICS)
    peak = level * 32767 / norm
    voiced = _one_second_of(rate, _FUNDAMENTAL_HZ, lambda t: sum(
        w * math.sin(2 * math.pi * _FUNDAMENTAL_HZ * k * t) for k, w in _HARMONICS))
    envelope = _one_second_of(rate, _SYLLABLE_HZ, lambda t: _ENVELOPE_FLOOR + (1 - _ENVELOPE_FLOOR) * (
        0.5 - 0.5 * math.cos(2 * math.pi * _SYLLABLE_HZ * t)))
    samples = array.array("h", [round(peak * e * v) for e, v in zip(envelope, voiced, strict=True)])
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


def _one_second_of(rate: int, hz: float, wave: Callable[[float], float]) -> list[float]:
    """``wave(t)``, periodic at ``hz``, at each of one second's sample times.
    Computed over the shortest whole number of samples that holds whole
    periods, then repeated: building the fake's 24 kHz speech one sample at
    a time took ~20 ms of CPU, enough to stall a fake serving a hundred
    streams while it answered its first speech request."""
    repeat = rate // math.gcd(rate, int(hz)) if hz.is_integer() and hz > 0 else rate
    cycle = [wave(n / rate) for n in range(repeat)]
    return (cycle * (rate // len(cycle) + 1))[:rate]


def speech_like_pcm(seconds: float, rate: int = 8000, level: float = 0.5) -> bytes:
    """``seconds`` of a speech-like signal as s16le mono PCM at ``rate``.

    ``level`` is the peak as a fraction of full scale; the default keeps the
    RMS around -16 dBFS, a normal telephone speaking level.
    """
    if seconds <= 0:
        return b""
    if not 0 < level <= 1:
        raise ValueError("level must be in (0, 1]")
    total = round(seconds * rate) * 2
    second = _one_second(rate, level)
    repeats = -(-total // len(second))
    data = (second * repeats)[:total]
    # A 5 ms fade-out avoids a click at the cut, which would be a burst of
    # broadband energy in an otherwise clean test signal.
    fade = min(total // 2, rate // 200)
    if fade:
        tail = array.array("h", data[total - 2 * fade :])
        if sys.byteorder == "big":
            tail.byteswap()
        for i in range(fade):
            tail[i] = round(tail[i] * (fade - 1 - i) / fade)
        if sys.byteorder == "big":
            tail.byteswap()
        data = data[: total - 2 * fade] + tail.tobytes()
    return data


def silence_pcm(seconds: float, rate: int = 8000) -> bytes:
    """``seconds`` of digital silence as s16le mono PCM at ``rate``."""
    return bytes(2 * max(0, round(seconds * rate)))
