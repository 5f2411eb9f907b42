"""Telnyx Call Control v2 wire facts, without I/O: the webhook envelope,
``client_state``, the hang-up cause table and error bodies
(https://developers.telnyx.com/api/call-control).

The provider module does the talking; everything here is pure, so it is
tested by tables.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import jsonsafe
from ..calls import State

#: Our call ids are UUIDs; anything else decoded from client_state is not ours.
_CALL_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_MAX_CLIENT_STATE = 512  # Telnyx allows a few KiB; ours is 48 characters


class WebhookFormatError(ValueError):
    """A webhook body is not a Telnyx event envelope."""


@dataclass(frozen=True)
class Webhook:
    """The parts of one Telnyx webhook the daemon uses."""

    id: str
    type: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    attempt: int = 1

    @property
    def call_control_id(self) -> str | None:
        value = self.payload.get("call_control_id")
        return value if isinstance(value, str) and value else None

    @property
    def call_id(self) -> str | None:
        """Our call id, from ``client_state``; None if absent or not ours."""
        return decode_client_state(self.payload.get("client_state"))

    @property
    def incoming(self) -> bool:
        return self.payload.get("direction") == "incoming"

    def text(self, name: str) -> str | None:
        value = self.payload.get(name)
        return value if isinstance(value, str) else None


def parse(raw: bytes) -> Webhook:
    """The envelope ``{"data": {"event_type", "id", "payload"}, "meta": {...}}``."""
    try:
        document = jsonsafe.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise WebhookFormatError("the body is not JSON") from None
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, dict):
        raise WebhookFormatError("the body has no data object")
    event_type, event_id, payload = data.get("event_type"), data.get("id"), data.get("payload", {})
    if not isinstance(event_type, str) or not event_type:
        raise WebhookFormatError("data.event_type is missing")
    if not isinstance(event_id, str) or not event_id:
        raise WebhookFormatError("data.id is missing")
    if not isinstance(payload, dict):
        raise WebhookFormatError("data.payload is not an object")
    meta = document.get("meta")
    attempt = meta.get("attempt") if isinstance(meta, dict) else None
    return Webhook(event_id, event_type, payload,
                   attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else 1)


# -- client_state ------------------------------------------------------------------

def encode_client_state(call_id: str) -> str:
    """Telnyx requires base64; it echoes the value in every later webhook."""
    return base64.b64encode(call_id.encode("utf-8")).decode("ascii")


def decode_client_state(value: object) -> str | None:
    """Our call id, or None for a missing, undecodable or foreign value (the
    caller then falls back to ``call_control_id``)."""
    if not isinstance(value, str) or not value or len(value) > _MAX_CLIENT_STATE:
        return None
    try:
        text = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    return text if _CALL_ID_RE.fullmatch(text) else None


# -- hang-up causes ----------------------------------------------------------------

#: ``hangup_cause`` -> end reason when the table alone decides. The rest
#: depend on who hung up or on the call's direction; see ``end_reason``.
HANGUP_CAUSES: dict[str, State] = {
    "user_busy": State.BUSY,
    "call_rejected": State.BUSY,      # the callee declined while it rang
    "timeout": State.NO_ANSWER,       # timeout_secs passed while ringing
    "no_answer": State.NO_ANSWER,
    "time_limit": State.TIMEOUT,      # time_limit_secs reached
    "not_found": State.FAILED,        # the number does not exist / cannot be routed
}


def end_reason(cause: object, *, source: object, incoming: bool, answered: bool) -> State:
    """The end reason of a ``call.hangup``.

    ``normal_clearing``: the remote party (callee of our outbound call,
    caller of an inbound one) hung up -> hangup-user; otherwise (we did, or
    Telnyx does not say) -> completed. ``originator_cancel``: the originator
    gave up while it rang; on an outbound call that was us -> hangup-bot, on
    an inbound call it was the caller -> hangup-user. ``unspecified`` and
    causes this table does not know: completed if the call was answered,
    else failed. (A reason the bot asked for, e.g. no-answer from the ring
    timer, still wins in the call state machine.)
    """
    remote = "caller" if incoming else "callee"
    if cause == "normal_clearing":
        return State.HANGUP_USER if source == remote else State.COMPLETED
    if cause == "originator_cancel":
        return State.HANGUP_USER if incoming else State.HANGUP_BOT
    known = HANGUP_CAUSES.get(cause) if isinstance(cause, str) else None
    if known is not None:
        return known
    return State.COMPLETED if answered else State.FAILED


# -- transcription ------------------------------------------------------------------

@dataclass(frozen=True)
class Transcript:
    text: str
    is_final: bool
    confidence: float | None
    track: str


def transcript(payload: Mapping[str, Any]) -> Transcript | None:
    """``payload.transcription_data`` of a ``call.transcription``; None if unusable."""
    data = payload.get("transcription_data")
    if not isinstance(data, dict):
        return None
    text = data.get("transcript")
    if not isinstance(text, str):
        return None
    is_final = data.get("is_final")
    confidence = data.get("confidence")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
        confidence = None
    track = data.get("transcription_track")
    # A missing is_final means a final result (older engines send no flag).
    return Transcript(text.strip(), is_final is not False, None if confidence is None else float(confidence),
                      track if isinstance(track, str) else "inbound")


# -- errors --------------------------------------------------------------------------

CALL_ENDED = "90018"

#: What a person can do about the common error codes.
_HINTS: dict[str, str] = {
    "10009": "check telnyx.apiKey (TELNYX_API_KEY)",
    "10016": "numbers must be E.164 like +15550001234; check fromNumber and the destination",
    "10011": "Telnyx is rate limiting this account; try again shortly",
    "90015": "Telnyx does not know this call (it may have ended long ago)",
    CALL_ENDED: "the call has already ended",
}
_POINTER_HINTS: dict[str, str] = {
    "/connection_id": "check telnyx.connectionId (the Call Control application id)",
    "/from": "check fromNumber: it must be a number on this Telnyx account",
    "/webhook_url": "check publicUrl",
    "/voice": "check telnyx.voice",
}


@dataclass(frozen=True)
class ApiFailure:
    status: int
    code: str | None
    message: str


def api_failure(status: int, body: bytes, what: str) -> ApiFailure:
    """A sentence from Telnyx's ``{"errors": [{code, title, detail, source}]}``."""
    try:
        document = jsonsafe.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        document = None
    errors = document.get("errors") if isinstance(document, dict) else None
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    code = first.get("code")
    code = str(code) if isinstance(code, (str, int)) and not isinstance(code, bool) else None
    title, detail = first.get("title"), first.get("detail")
    parts = [p.strip() for p in (title, detail) if isinstance(p, str) and p.strip()]
    if parts and len(parts) == 2 and parts[1].lower().startswith(parts[0].lower()):
        parts = parts[1:]
    said = ": ".join(parts) if parts else "no error details"
    where = f"HTTP {status}" + (f", code {code}" if code else "")
    message = f"Telnyx refused to {what} ({where}): {said}"
    source = first.get("source")
    pointer = source.get("pointer") if isinstance(source, dict) else None
    hint = _HINTS.get(code or "") or (_POINTER_HINTS.get(pointer) if isinstance(pointer, str) else None)
    if hint is None and status == 401:
        hint = _HINTS["10009"]
    if hint:
        message = message.rstrip(".") + f". {hint[0].upper()}{hint[1:]}."
    return ApiFailure(status, code, message)


MIN_RING_SECS, MAX_RING_SECS = 5, 600        # Telnyx's bounds for timeout_secs
MIN_LIMIT_SECS, MAX_LIMIT_SECS = 30, 14400   # ... and for time_limit_secs
LIMIT_MARGIN_SECS = 60    # the carrier's backstop lies beyond our own max-duration timer


def ring_timeout_secs(ring_timeout_ms: int) -> int:
    """``timeout_secs`` for the dial: our ring timeout, within Telnyx's bounds.
    (Below 5 s our own ring timer ends the call first.)"""
    return max(MIN_RING_SECS, min(MAX_RING_SECS, -(-int(ring_timeout_ms) // 1000)))


def time_limit_secs(max_duration: float, ring_timeout_ms: int) -> int:
    """``time_limit_secs``: a backstop beyond our own max-duration timer, so a
    call cannot run on forever if the daemon dies."""
    total = int(max_duration + ring_timeout_ms / 1000) + LIMIT_MARGIN_SECS
    return max(MIN_LIMIT_SECS, min(MAX_LIMIT_SECS, total))
