"""Validation of the request bodies the fake Telnyx accepts.

Each function checks one request's body against the Call Control v2 rules
(https://developers.telnyx.com/api/call-control) and returns the cleaned
parameters, or raises ``ApiError``
naming the offending field, before anything about a call changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from . import _telnyx_wire as wire

AMD_MODES = ("premium", "detect", "detect_beep", "detect_words", "greeting_end", "disabled")
TRACKS = ("inbound", "outbound", "both")
STREAM_TRACKS = ("inbound_track", "outbound_track", "both_tracks")
STREAM_CODECS = ("PCMU", "PCMA", "G722", "OPUS", "AMR-WB", "L16")
ENGINES = ("A", "B", "Google", "Telnyx", "Deepgram", "Azure")
MAX_SPEAK_CHARS = 3000
_VOICE_RE = re.compile(r"^(male|female|(AWS\.Polly|Azure|Telnyx|ElevenLabs)\.[A-Za-z0-9_.:-]+)$")
_STREAM_URL_RE = re.compile(r"^wss?://\S+$")


@dataclass(frozen=True)
class DialParams:
    to: str
    from_: str
    webhook_url: str
    client_state: str | None
    timeout_secs: int
    time_limit_secs: int | None
    amd: str | None
    transcription_tracks: str | None


@dataclass(frozen=True)
class SpeakParams:
    payload: str
    voice: str
    payload_type: str


def _destination(body: dict[str, Any]) -> str:
    to = body.get("to")
    if isinstance(to, list):
        raise wire.invalid("to", "This fake dials a single destination; pass 'to' as one string.")
    if isinstance(to, str) and to.startswith("sip:"):
        return to
    return wire.e164(body, "to")


def _transcription(body: dict[str, Any]) -> str | None:
    """Tracks to transcribe from the call's start, if ``transcription`` is set."""
    enabled = body.get("transcription", False)
    if not isinstance(enabled, bool):
        raise wire.invalid("transcription", "transcription must be true or false.")
    config = body.get("transcription_config") or {}
    if not isinstance(config, dict):
        raise wire.invalid("transcription_config", "transcription_config must be an object.")
    tracks = wire.one_of(config, "transcription_tracks", TRACKS, "inbound")
    return tracks if enabled else None


def dial(body: dict[str, Any], connection_id: str) -> DialParams:
    given = wire.required_str(body, "connection_id")
    if given != connection_id:
        raise wire.invalid("connection_id", f"connection_id {given!r} does not match a Call Control "
                                            "Application on this account.")
    to = _destination(body)
    from_ = wire.e164(body, "from")
    # Real Telnyx falls back to the application's webhook URL; this fake has
    # no application settings, so a dial without one could never report back.
    webhook_url = wire.required_url(body, "webhook_url")
    state = wire.client_state(body)
    timeout = wire.int_in_range(body, "timeout_secs", 5, 600, 30)
    time_limit = wire.optional_int_in_range(body, "time_limit_secs", 30, 14400)
    amd = wire.optional_one_of(body, "answering_machine_detection", AMD_MODES)
    wire.optional_str(body, "command_id")
    return DialParams(to, from_, webhook_url, state, timeout, time_limit, amd, _transcription(body))


def answer(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """(new webhook_url or None, transcription tracks or None)."""
    return wire.optional_url(body, "webhook_url"), _transcription(body)


def speak(body: dict[str, Any]) -> SpeakParams:
    payload = wire.required_str(body, "payload")
    if len(payload) > MAX_SPEAK_CHARS:
        raise wire.invalid("payload", f"payload must be at most {MAX_SPEAK_CHARS} characters "
                                      f"(got {len(payload)}).")
    voice = wire.required_str(body, "voice")
    if not _VOICE_RE.match(voice):
        raise wire.invalid("voice", f"voice {voice!r} is not a Telnyx voice: use male, female, "
                                    "AWS.Polly.<VoiceId>, Azure.<Voice>, Telnyx.<model>.<voice> or "
                                    "ElevenLabs.<model>.<voice>.")
    wire.optional_str(body, "language")
    payload_type = wire.one_of(body, "payload_type", ("text", "ssml"), "text")
    wire.optional_one_of(body, "service_level", ("basic", "premium"))
    wire.optional_one_of(body, "stop", ("current", "all"))
    return SpeakParams(payload, voice, payload_type)


def transcription_start(body: dict[str, Any]) -> str:
    """The tracks to transcribe."""
    wire.optional_one_of(body, "transcription_engine", ENGINES)
    config = body.get("transcription_engine_config")
    if config is not None and not isinstance(config, dict):
        raise wire.invalid("transcription_engine_config", "transcription_engine_config must be an object.")
    wire.optional_str(body, "language")
    return wire.one_of(body, "transcription_tracks", TRACKS, "inbound")


def playback_start(body: dict[str, Any]) -> dict[str, Any]:
    sources = [key for key in ("audio_url", "media_name", "playback_content") if body.get(key)]
    if len(sources) != 1:
        raise wire.invalid("audio_url", "Exactly one of audio_url, media_name or playback_content is required.")
    if sources[0] == "audio_url":
        wire.required_url(body, "audio_url")
    elif sources[0] == "playback_content" and not wire.is_base64(str(body["playback_content"])):
        raise wire.invalid("playback_content", "playback_content must be base64 audio.")
    return dict(body)


def streaming_start(body: dict[str, Any]) -> dict[str, Any]:
    stream_url = wire.required_str(body, "stream_url")
    if not _STREAM_URL_RE.match(stream_url):
        raise wire.invalid("stream_url", "stream_url must be a ws:// or wss:// URL.")
    wire.optional_one_of(body, "stream_track", STREAM_TRACKS)
    wire.optional_one_of(body, "stream_codec", (*STREAM_CODECS, "default"))
    wire.optional_one_of(body, "stream_bidirectional_mode", ("mp3", "rtp"))
    # "Case sensitive" (the streaming_start reference).
    wire.optional_one_of(body, "stream_bidirectional_codec", STREAM_CODECS)
    wire.optional_one_of(body, "stream_bidirectional_target_legs", ("self", "opposite", "both"))
    rate = body.get("stream_bidirectional_sampling_rate")
    if rate is not None and rate not in (8000, 16000, 22050, 24000, 48000):
        raise wire.invalid("stream_bidirectional_sampling_rate", "must be 8000, 16000, 22050, 24000 or 48000.")
    return {key: value for key, value in body.items() if key.startswith("stream_")}


def stream(body: dict[str, Any]) -> dict[str, Any] | None:
    """A dial's or answer's ``stream_*`` parameters (validated), if it asks for a stream."""
    if body.get("stream_url") is None:
        if any(key.startswith("stream_") for key in body):
            raise wire.invalid("stream_url", "stream_* parameters need a stream_url.")
        return None
    return streaming_start(body)


_DTMF_RE = re.compile(r"^[0-9A-D*#wW]+$")


def send_dtmf(body: dict[str, Any]) -> str:
    """``send_dtmf``: the digits (https://developers.telnyx.com/api/call-control/send-dtmf)."""
    digits = wire.required_str(body, "digits")
    if not _DTMF_RE.match(digits):
        raise wire.invalid("digits", "Valid digits are 0-9, A-D, *, and #; pauses are w (0.5s) and W (1s).")
    wire.optional_int_in_range(body, "duration_millis", 100, 500)
    wire.client_state(body)
    return digits


@dataclass(frozen=True)
class TransferParams:
    to: str
    from_: str | None
    timeout_secs: int
    target_leg_client_state: str | None
    webhook_url: str | None


def transfer(body: dict[str, Any]) -> TransferParams:
    """``transfer`` (https://developers.telnyx.com/api/call-control/transfer-call)."""
    to = _destination(body)
    from_ = wire.e164(body, "from") if body.get("from") is not None else None
    timeout = wire.int_in_range(body, "timeout_secs", 5, 600, 30)
    wire.optional_int_in_range(body, "time_limit_secs", 30, 14400)
    target_state = wire.optional_str(body, "target_leg_client_state")
    if target_state is not None and not wire.is_base64(target_state):
        raise wire.invalid("target_leg_client_state", "target_leg_client_state must be a valid Base-64 encoded "
                                                      "string.")
    wire.client_state(body)
    wire.optional_url(body, "audio_url")
    wire.optional_one_of(body, "answering_machine_detection", AMD_MODES)
    return TransferParams(to, from_, timeout, target_state, wire.optional_url(body, "webhook_url"))


def record_start(body: dict[str, Any]) -> dict[str, Any]:
    """``record_start``: channels and format are required
    (https://developers.telnyx.com/api/call-control/start-call-record)."""
    channels = body.get("channels")
    if channels not in ("single", "dual"):
        raise wire.invalid("channels", "channels is required: single or dual.")
    fmt = body.get("format")
    if fmt not in ("wav", "mp3"):
        raise wire.invalid("format", "format is required: wav or mp3.")
    wire.optional_one_of(body, "recording_track", TRACKS)
    wire.optional_int_in_range(body, "max_length", 0, 14400)
    wire.optional_one_of(body, "trim", ("trim-silence",))
    play_beep = body.get("play_beep")
    if play_beep is not None and not isinstance(play_beep, bool):
        raise wire.invalid("play_beep", "play_beep must be true or false.")
    wire.client_state(body)
    return {"channels": channels, "format": fmt}


def reject_cause(body: dict[str, Any]) -> str:
    cause = wire.one_of(body, "cause", ("CALL_REJECTED", "USER_BUSY"), "CALL_REJECTED")
    return "user_busy" if cause == "USER_BUSY" else "call_rejected"
