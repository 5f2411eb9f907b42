"""A deliberately simple energy VAD standing in for OpenAI's server_vad.

The real service uses a trained model; a test fake needs something
predictable instead, so that a test can say "one second of speech, then a
second of silence" and know exactly which events follow and with which
``audio_start_ms``/``audio_end_ms``. The rules:

- audio is judged in 20 ms frames by RMS against a level derived from the
  session's ``threshold`` (0..1 maps to -60..-15 dBFS);
- the first loud frame starts speech; ``audio_start_ms`` reaches back by
  ``prefix_padding_ms`` like the real one (never before 0 or before the
  end of the previous turn);
- speech stops once ``silence_duration_ms`` of consecutive quiet frames
  have passed; ``audio_end_ms`` is the end of that silence, again like the
  real service, whose end time includes the silence it waited for.

Pure: no threads, no clock. Time is the amount of audio fed in.
"""

from __future__ import annotations

import array
import math
import operator
import sys
from dataclasses import dataclass
from typing import Literal

__all__ = ["EnergyVad", "VadEvent", "rms_threshold"]

FRAME_MS = 20


def rms_threshold(threshold: float) -> float:
    """The frame RMS (int16 units) that counts as speech for a VAD threshold."""
    # Linear in dB, so the knob behaves the same at both ends: 0.5 lands at
    # -37.5 dBFS, above line noise and far below any talker.
    dbfs = -60.0 + 45.0 * min(max(threshold, 0.0), 1.0)
    return 32768.0 * 10 ** (dbfs / 20)


@dataclass(frozen=True)
class VadEvent:
    kind: Literal["start", "stop"]
    ms: int


class EnergyVad:
    """Frame-energy speech detector over s16le mono PCM at ``rate`` Hz."""

    def __init__(
        self,
        rate: int,
        threshold: float = 0.5,
        silence_duration_ms: int = 500,
        prefix_padding_ms: int = 300,
        start_ms: int = 0,
    ) -> None:
        self.rate = rate
        self.level = rms_threshold(threshold)
        self.silence_duration_ms = silence_duration_ms
        self.prefix_padding_ms = prefix_padding_ms
        self._frame_bytes = 2 * rate * FRAME_MS // 1000
        self._pending = b""
        # Audio judged so far. A session that is reconfigured mid-stream
        # passes its clock on, because event times count from the start of
        # the session's audio, not from the last configuration change.
        self._elapsed_ms = start_ms
        self._quiet_ms = 0
        self._floor_ms = start_ms  # no turn may reach back before this
        self.speaking = False

    @property
    def elapsed_ms(self) -> int:
        return self._elapsed_ms

    def feed(self, pcm: bytes) -> list[VadEvent]:
        """Judge ``pcm`` (appended to any partial frame); return the transitions."""
        data = self._pending + pcm
        usable = len(data) - len(data) % self._frame_bytes
        self._pending = data[usable:]
        events: list[VadEvent] = []
        for offset in range(0, usable, self._frame_bytes):
            loud = self._frame_rms(data[offset : offset + self._frame_bytes]) >= self.level
            start_ms = self._elapsed_ms
            self._elapsed_ms += FRAME_MS
            if not self.speaking:
                if loud:
                    self.speaking = True
                    self._quiet_ms = 0
                    padded = max(self._floor_ms, start_ms - self.prefix_padding_ms)
                    events.append(VadEvent("start", padded))
                continue
            if loud:
                self._quiet_ms = 0
                continue
            self._quiet_ms += FRAME_MS
            if self._quiet_ms >= self.silence_duration_ms:
                self.speaking = False
                self._floor_ms = self._elapsed_ms
                events.append(VadEvent("stop", self._elapsed_ms))
        return events

    def reset_floor(self) -> None:
        """Start the next turn's padding no earlier than now (after a manual commit or clear)."""
        self._floor_ms = self._elapsed_ms

    @staticmethod
    def _frame_rms(frame: bytes) -> float:
        samples = array.array("h", frame)
        if sys.byteorder == "big":
            samples.byteswap()
        return math.sqrt(sum(map(operator.mul, samples, samples)) / len(samples))
