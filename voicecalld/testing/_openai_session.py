"""Validation of GA Realtime ``session.update`` for transcription sessions.

The fake is only useful if it refuses what the real service refuses: the
shut-down beta shape (flat ``input_audio_format`` and friends), formats as
strings instead of objects, a missing ``session.type``. So this checks the
GA shape field by field (openai-python ``types/realtime``) and names the
offending field the way the service does (``param``, ``code``).

Updates merge into the current configuration: a field left out keeps its
value, ``null`` clears the nullable ones (``turn_detection: null`` means
manual commits).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_MODELS",
    "ConfigError",
    "InputSettings",
    "apply_session_update",
    "default_session",
    "input_settings",
]

DEFAULT_MODELS = frozenset(
    {
        "whisper-1",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
        "gpt-4o-transcribe-diarize",
        "gpt-realtime-whisper",
        "gpt-live-transcribe",
    }
)

_SESSION_KEYS = {"type", "audio", "include"}
_AUDIO_KEYS = {"input"}
_INPUT_KEYS = {"format", "transcription", "noise_reduction", "turn_detection"}
_TRANSCRIPTION_KEYS = {"model", "language", "prompt"}
_NOISE_TYPES = ("near_field", "far_field")
_FORMAT_KEYS = {"audio/pcm": {"type", "rate"}, "audio/pcmu": {"type"}, "audio/pcma": {"type"}}
# A-law is valid on the real service, but this fake cannot hear it.
_SUPPORTED_FORMATS = ("audio/pcm", "audio/pcmu")
_SERVER_VAD_KEYS = {
    "type",
    "threshold",
    "prefix_padding_ms",
    "silence_duration_ms",
    "idle_timeout_ms",
    "create_response",
    "interrupt_response",
}
_SEMANTIC_VAD_KEYS = {"type", "eagerness", "create_response", "interrupt_response"}
_EAGERNESS = ("low", "medium", "high", "auto")
_INCLUDE_VALUES = ("item.input_audio_transcription.logprobs",)

SERVER_VAD_DEFAULTS = {"threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}


class ConfigError(Exception):
    """A rejected update; fields map onto the error event's ``error`` object."""

    def __init__(self, code: str, message: str, param: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@dataclass(frozen=True)
class InputSettings:
    """What the fake needs from a session to process audio."""

    format: str
    rate: int
    model: str | None
    vad: dict[str, Any] | None  # threshold, prefix_padding_ms, silence_duration_ms
    logprobs: bool


def default_session(session_id: str, expires_at: int) -> dict[str, Any]:
    """The configuration a fresh ``?intent=transcription`` session starts with."""
    return {
        "type": "transcription",
        "id": session_id,
        "object": "realtime.transcription_session",
        "expires_at": expires_at,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {"type": "server_vad", **SERVER_VAD_DEFAULTS},
            }
        },
        "include": None,
    }


def input_settings(session: dict[str, Any]) -> InputSettings:
    audio_in = session["audio"]["input"]
    fmt = audio_in["format"]
    transcription = audio_in["transcription"]
    detection = audio_in["turn_detection"]
    vad = None
    if detection is not None:
        # semantic_vad has no energy knobs; the fake hears it as server_vad
        # with the defaults.
        vad = {key: detection.get(key, default) for key, default in SERVER_VAD_DEFAULTS.items()}
    return InputSettings(
        format=fmt["type"],
        rate=8000 if fmt["type"] == "audio/pcmu" else fmt.get("rate", 24000),
        model=transcription.get("model") if transcription else None,
        vad=vad,
        logprobs="item.input_audio_transcription.logprobs" in (session.get("include") or []),
    )


def apply_session_update(
    current: dict[str, Any], event: dict[str, Any], models: frozenset[str] | set[str]
) -> dict[str, Any]:
    """Validate a ``session.update`` event; return the merged session or raise ConfigError."""
    session = _require_object(event.get("session"), "session")
    _reject_unknown(session, _SESSION_KEYS, "session")
    if "type" not in session:
        raise ConfigError(
            "missing_required_parameter", "Missing required parameter: 'session.type'.", "session.type"
        )
    if session["type"] != "transcription":
        # A transcription-intent socket cannot become a conversation.
        raise _invalid_value(session["type"], ("transcription",), "session.type")

    merged = copy.deepcopy(current)
    target = merged["audio"]["input"]
    if "audio" in session:
        audio = _require_object(session["audio"], "session.audio")
        _reject_unknown(audio, _AUDIO_KEYS, "session.audio")
        if "input" in audio:
            audio_in = _require_object(audio["input"], "session.audio.input")
            _reject_unknown(audio_in, _INPUT_KEYS, "session.audio.input")
            if "format" in audio_in:
                target["format"] = _check_format(audio_in["format"])
            if "transcription" in audio_in:
                target["transcription"] = _check_transcription(audio_in["transcription"], models)
            if "noise_reduction" in audio_in:
                target["noise_reduction"] = _check_noise(audio_in["noise_reduction"])
            if "turn_detection" in audio_in:
                target["turn_detection"] = _check_turn_detection(audio_in["turn_detection"])
    if "include" in session:
        merged["include"] = _check_include(session["include"])
    return merged


def _check_format(fmt: Any) -> dict[str, Any]:
    param = "session.audio.input.format"
    if isinstance(fmt, str):
        # The beta took "g711_ulaw"/"pcm16" strings; GA needs objects.
        raise ConfigError(
            "invalid_type",
            f"Invalid type for '{param}': expected an object, but got a string instead.",
            param,
        )
    _require_object(fmt, param)
    kind = fmt.get("type")
    if kind is None:
        raise ConfigError(
            "missing_required_parameter", f"Missing required parameter: '{param}.type'.", f"{param}.type"
        )
    if kind not in _FORMAT_KEYS:
        raise _invalid_value(kind, tuple(_FORMAT_KEYS), f"{param}.type")
    if kind not in _SUPPORTED_FORMATS:
        raise ConfigError(
            "invalid_value",
            f"FakeOpenAI does not decode {kind!r}; use 'audio/pcmu' or 'audio/pcm'.",
            f"{param}.type",
        )
    _reject_unknown(fmt, _FORMAT_KEYS[kind], param)
    if kind == "audio/pcm":
        rate = fmt.get("rate", 24000)
        if rate != 24000 or isinstance(rate, bool):
            raise _invalid_value(rate, (24000,), f"{param}.rate")
        return {"type": kind, "rate": 24000}
    return {"type": kind}


def _check_transcription(value: Any, models: frozenset[str] | set[str]) -> dict[str, Any] | None:
    param = "session.audio.input.transcription"
    if value is None:
        return None
    _require_object(value, param)
    _reject_unknown(value, _TRANSCRIPTION_KEYS, param)
    model = value.get("model")
    if model is None:
        raise ConfigError(
            "missing_required_parameter", f"Missing required parameter: '{param}.model'.", f"{param}.model"
        )
    _require_type(model, str, "a string", f"{param}.model")
    if model not in models:
        raise _invalid_value(model, tuple(sorted(models)), f"{param}.model")
    for key in ("language", "prompt"):
        if key in value and value[key] is not None:
            _require_type(value[key], str, "a string", f"{param}.{key}")
    return dict(value)


def _check_noise(value: Any) -> dict[str, Any] | None:
    param = "session.audio.input.noise_reduction"
    if value is None:
        return None
    _require_object(value, param)
    _reject_unknown(value, {"type"}, param)
    if value.get("type") not in _NOISE_TYPES:
        raise _invalid_value(value.get("type"), _NOISE_TYPES, f"{param}.type")
    return dict(value)


def _check_turn_detection(value: Any) -> dict[str, Any] | None:
    param = "session.audio.input.turn_detection"
    if value is None:
        return None
    _require_object(value, param)
    kind = value.get("type")
    if kind == "semantic_vad":
        _reject_unknown(value, _SEMANTIC_VAD_KEYS, param)
        if "eagerness" in value and value["eagerness"] not in _EAGERNESS:
            raise _invalid_value(value["eagerness"], _EAGERNESS, f"{param}.eagerness")
        return dict(value)
    if kind != "server_vad":
        raise _invalid_value(kind, ("server_vad", "semantic_vad"), f"{param}.type")
    _reject_unknown(value, _SERVER_VAD_KEYS, param)
    result = {"type": "server_vad", **SERVER_VAD_DEFAULTS}
    if "threshold" in value:
        threshold = value["threshold"]
        _require_number(threshold, f"{param}.threshold")
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(
                "decimal_above_max_value" if threshold > 1 else "decimal_below_min_value",
                f"Invalid '{param}.threshold': must be between 0.0 and 1.0, got {threshold}.",
                f"{param}.threshold",
            )
        result["threshold"] = threshold
    for key in ("prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms"):
        if key in value and value[key] is not None:
            number = value[key]
            if not isinstance(number, int) or isinstance(number, bool):
                raise ConfigError(
                    "invalid_type",
                    f"Invalid type for '{param}.{key}': expected an integer, "
                    f"but got {_type_name(number)} instead.",
                    f"{param}.{key}",
                )
            if number < 0:
                raise ConfigError(
                    "integer_below_min_value",
                    f"Invalid '{param}.{key}': expected a value >= 0, got {number}.",
                    f"{param}.{key}",
                )
            result[key] = number
    for key in ("create_response", "interrupt_response"):
        if key in value:
            _require_type(value[key], bool, "a boolean", f"{param}.{key}")
            result[key] = value[key]
    return result


def _check_include(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ConfigError(
            "invalid_type",
            f"Invalid type for 'session.include': expected an array, but got {_type_name(value)} instead.",
            "session.include",
        )
    for index, item in enumerate(value):
        if item not in _INCLUDE_VALUES:
            raise _invalid_value(item, _INCLUDE_VALUES, f"session.include[{index}]")
    return list(value)


def _reject_unknown(obj: dict[str, Any], known: set[str], where: str) -> None:
    for key in obj:
        if key not in known:
            raise ConfigError("unknown_parameter", f"Unknown parameter: '{where}.{key}'.", f"{where}.{key}")


def _require_object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(
            "invalid_type",
            f"Invalid type for '{param}': expected an object, but got {_type_name(value)} instead.",
            param,
        )
    return value


def _require_type(value: Any, kind: type, described: str, param: str) -> None:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(
            "invalid_type",
            f"Invalid type for '{param}': expected {described}, but got {_type_name(value)} instead.",
            param,
        )


def _require_number(value: Any, param: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            "invalid_type",
            f"Invalid type for '{param}': expected a decimal, but got {_type_name(value)} instead.",
            param,
        )


def _invalid_value(value: Any, allowed: tuple[Any, ...], param: str) -> ConfigError:
    choices = ", ".join(repr(a) for a in allowed)
    return ConfigError("invalid_value", f"Invalid value: {value!r}. Supported values are: {choices}.", param)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "an array"
    return "an object"
