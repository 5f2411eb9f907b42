"""``/v1/audio/speech`` for the fake: validation and synthesis
(https://platform.openai.com/docs/api-reference/audio/createSpeech).

Only ``pcm`` (raw 24 kHz s16le mono, what the daemon asks for) and ``wav``
are synthesized. The compressed formats are refused with a 400 that says
so: handing back bytes that merely pretend to be MP3 would let a client bug
(forgetting ``response_format: "pcm"``) pass its tests.
"""

from __future__ import annotations

import io
import wave
from typing import Any

from ._audio_signals import speech_like_pcm

__all__ = ["VOICES", "SpeechRequestError", "synthesize", "validate_speech_request"]

RATE = 24000
MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "onyx",
    "nova",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
CONTENT_TYPES = {"pcm": "audio/pcm", "wav": "audio/wav"}
_ARGUMENTS = {"model", "input", "voice", "response_format", "speed", "instructions", "stream_format"}
MAX_INPUT = 4096


class SpeechRequestError(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def _model_known(model: str) -> bool:
    # Dated snapshots ("gpt-4o-mini-tts-2025-03-20") are valid too.
    return any(model == name or model.startswith(name + "-20") for name in MODELS)


def validate_speech_request(body: Any) -> None:
    """Raise SpeechRequestError (a 400) for anything the real endpoint refuses."""
    if not isinstance(body, dict):
        raise SpeechRequestError("The request body must be a JSON object.")
    for key in body:
        if key not in _ARGUMENTS:
            raise SpeechRequestError(f"Unrecognized request argument supplied: {key}", key)
    model = body.get("model")
    if not isinstance(model, str) or not _model_known(model):
        raise SpeechRequestError(_choices(model, MODELS), "model", "invalid_value")
    text = body.get("input")
    if not isinstance(text, str) or not text:
        raise SpeechRequestError(
            "Missing required parameter: 'input'.", "input", "missing_required_parameter"
        )
    if len(text) > MAX_INPUT:
        raise SpeechRequestError(
            f"Invalid 'input': string too long. Expected a string with maximum length {MAX_INPUT}, "
            f"but got a string with length {len(text)} instead.",
            "input",
            "string_above_max_length",
        )
    voice = body.get("voice")
    if voice not in VOICES:
        raise SpeechRequestError(_choices(voice, VOICES), "voice", "invalid_value")
    fmt = body.get("response_format", "mp3")
    if fmt not in FORMATS:
        raise SpeechRequestError(_choices(fmt, FORMATS), "response_format", "invalid_value")
    if fmt not in CONTENT_TYPES:
        raise SpeechRequestError(
            f"FakeOpenAI only synthesizes 'pcm' and 'wav', not {fmt!r}.", "response_format", "invalid_value"
        )
    speed = body.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4.0:
        raise SpeechRequestError(
            "Invalid 'speed': expected a number between 0.25 and 4.0.", "speed", "invalid_value"
        )
    if "instructions" in body and model.startswith("tts-1"):
        raise SpeechRequestError(
            f"Instructions are not supported for {model}.", "instructions", "unsupported_parameter"
        )
    stream_format = body.get("stream_format", "audio")
    if stream_format != "audio":
        raise SpeechRequestError(
            f"FakeOpenAI only streams raw audio, not {stream_format!r}.", "stream_format", "invalid_value"
        )


def prepare() -> None:
    """Build the cached signal now, so that the first speech request costs
    no more than any other (a fake under load must not hiccup on it)."""
    speech_like_pcm(0.02, RATE)


def synthesize(body: dict[str, Any], ms_per_char: float) -> tuple[bytes, str]:
    """Speech-like audio for a validated request: (body bytes, content type).

    Duration is proportional to the text (``ms_per_char`` at speed 1.0), so
    tests can predict how long playback takes.
    """
    seconds = len(body["input"]) * ms_per_char / 1000.0 / float(body.get("speed", 1.0))
    pcm = speech_like_pcm(seconds, RATE)
    fmt = body.get("response_format", "mp3")
    if fmt == "wav":
        out = io.BytesIO()
        with wave.open(out, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(RATE)
            wav.writeframes(pcm)
        return out.getvalue(), CONTENT_TYPES[fmt]
    return pcm, CONTENT_TYPES[fmt]


def _choices(value: Any, allowed: tuple[str, ...]) -> str:
    return f"Invalid value: {value!r}. Supported values are: {', '.join(repr(a) for a in allowed)}."
