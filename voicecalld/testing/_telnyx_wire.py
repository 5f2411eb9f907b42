"""Wire-format helpers for the fake Telnyx: error bodies, request
validation, ids, the webhook envelope and Ed25519 signing.

Everything here is pure apart from the clock and the random source, so the
fake's HTTP and threading code stays small. Signing is implemented here on
purpose, independently of ``voicecalld.providers.telnyx_signature``: a fake
that shared the daemon's code would agree with the daemon's bugs.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import re
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import nacl.signing

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
E164_RE = re.compile(r"^\+[1-9]\d{1,14}$")
_URL_RE = re.compile(r"^https?://[^\s/]+(/\S*)?$")

# What a forged or damaged delivery can look like; each must make a correct
# receiver answer 401.
SIGNATURE_FAULTS = frozenset({
    "bad_signature", "wrong_key", "stale_timestamp", "future_timestamp", "missing_headers",
    "missing_signature", "missing_timestamp", "malformed_signature", "truncated_signature",
})
WEBHOOK_FAULTS = SIGNATURE_FAULTS | {"duplicate", "drop"}
SKEW_SECONDS = 600  # beyond the 300 s window every SDK uses


class ApiError(Exception):
    """A Telnyx-shaped error response; raised anywhere in request handling."""

    def __init__(self, status: int, code: str, title: str, detail: str, *,
                 pointer: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status} {code} {title}: {detail}")
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.pointer = pointer
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "title": self.title, "detail": self.detail}
        if self.pointer is not None:
            error["source"] = {"pointer": self.pointer}
        return {"errors": [error]}


def auth_failed() -> ApiError:
    return ApiError(401, "10009", "Authentication failed",
                    "The API key is missing or invalid; send 'Authorization: Bearer <API key>'.")


def not_found(detail: str) -> ApiError:
    return ApiError(404, "10005", "Resource not found", detail)


def invalid_call_id(call_control_id: str) -> ApiError:
    return ApiError(404, "90015", "Invalid Call Control ID",
                    f"The call_control_id {call_control_id!r} is not valid or is unknown.")


def call_ended() -> ApiError:
    return ApiError(422, "90018", "Call has already ended",
                    "This call is no longer active and can't receive commands.")


def invalid(field: str, detail: str, code: str = "10015") -> ApiError:
    title = "Phone number must be in +E.164 format" if code == "10016" else "Invalid parameter"
    return ApiError(422, code, title, detail, pointer=f"/{field}")


def not_allowed_now(detail: str) -> ApiError:
    # Real Telnyx has several codes for "wrong call state"; a daemon should
    # only rely on 90018 (ended), so everything else shares one generic code.
    return ApiError(422, "10015", "Invalid call state", detail)


# -- request validation: each helper raises ApiError naming the field --------

def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}  # bodiless commands (hangup, *_stop) are common
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "10015", "Bad Request", "The request body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise ApiError(422, "10015", "Bad Request", "The request body must be a JSON object.")
    return value


def required_str(body: Mapping[str, Any], field: str) -> str:
    value = body.get(field)
    if value is None or value == "":
        raise invalid(field, f"{field} is required.")
    if not isinstance(value, str):
        raise invalid(field, f"{field} must be a string.")
    return value


def optional_str(body: Mapping[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise invalid(field, f"{field} must be a string.")
    return value


def e164(body: Mapping[str, Any], field: str) -> str:
    value = required_str(body, field)
    if not E164_RE.match(value):
        raise invalid(field, f"{field} {value!r} is not a phone number in +E.164 format.", code="10016")
    return value


def _check_url(field: str, value: str) -> str:
    if not _URL_RE.match(value):
        raise invalid(field, f"{field} must be an absolute http(s) URL.")
    return value


def optional_url(body: Mapping[str, Any], field: str) -> str | None:
    value = optional_str(body, field)
    return None if value is None else _check_url(field, value)


def required_url(body: Mapping[str, Any], field: str) -> str:
    return _check_url(field, required_str(body, field))


def client_state(body: Mapping[str, Any]) -> str | None:
    value = optional_str(body, "client_state")
    if value is not None and not is_base64(value):
        raise invalid("client_state", "client_state must be a valid Base-64 encoded string.")
    return value


def optional_int_in_range(body: Mapping[str, Any], field: str, low: int, high: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(field, f"{field} must be an integer from {low} to {high}.")
    return value


def int_in_range(body: Mapping[str, Any], field: str, low: int, high: int, default: int) -> int:
    value = optional_int_in_range(body, field, low, high)
    return default if value is None else value


def optional_one_of(body: Mapping[str, Any], field: str, allowed: tuple[str, ...]) -> str | None:
    value = body.get(field)
    if value is not None and value not in allowed:
        raise invalid(field, f"{field} must be one of {', '.join(allowed)}.")
    return value


def one_of(body: Mapping[str, Any], field: str, allowed: tuple[str, ...], default: str) -> str:
    value = optional_one_of(body, field, allowed)
    return default if value is None else value


def is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


# -- ids and time ---------------------------------------------------------------

class Ids:
    """Telnyx-looking identifiers; reproducible when seeded."""

    def __init__(self, seed: int | None) -> None:
        self._rng = random.Random(seed)

    def uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def call_control_id(self) -> str:
        raw = self._rng.getrandbits(240).to_bytes(30, "big")
        return "v3:" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# -- webhooks -------------------------------------------------------------------

def envelope(event_type: str, event_id: str, occurred_at: str, payload: Mapping[str, Any],
             attempt: int, delivered_to: str) -> dict[str, Any]:
    return {
        "data": {"record_type": "event", "event_type": event_type, "id": event_id,
                 "occurred_at": occurred_at, "payload": dict(payload)},
        "meta": {"attempt": attempt, "delivered_to": delivered_to},
    }


def encode(document: Mapping[str, Any]) -> bytes:
    # Compact separators on purpose: Python's json.dumps default (", ", ": ")
    # would not reproduce these bytes, so a receiver that verifies a
    # re-serialized body instead of the raw one fails loudly.
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def public_key_pem(verify_key: nacl.signing.VerifyKey) -> str:
    der = SPKI_PREFIX + bytes(verify_key)
    return f"-----BEGIN PUBLIC KEY-----\n{base64.b64encode(der).decode()}\n-----END PUBLIC KEY-----\n"


def _sign(key: nacl.signing.SigningKey, timestamp: str, body: bytes) -> bytes:
    return key.sign(timestamp.encode("ascii") + b"|" + body).signature


def signature_headers(key: nacl.signing.SigningKey, body: bytes, *, now: float | None = None,
                      fault: str | None = None) -> dict[str, str]:
    """The two Telnyx signature headers for ``body``, optionally damaged."""
    now = time.time() if now is None else now
    ts = str(int(now))
    if fault == "stale_timestamp":
        ts = str(int(now) - SKEW_SECONDS)
    elif fault == "future_timestamp":
        ts = str(int(now) + SKEW_SECONDS)
    if fault == "wrong_key":
        key = nacl.signing.SigningKey.generate()
    # A correctly formed signature over different bytes: only real
    # verification (not a length or format check) can catch it.
    signed_body = body + b" " if fault == "bad_signature" else body
    signature = _sign(key, ts, signed_body)
    sig_b64 = base64.b64encode(signature).decode()
    if fault == "malformed_signature":
        sig_b64 = "not*base64*" + sig_b64[:20]
    elif fault == "truncated_signature":
        sig_b64 = base64.b64encode(signature[:32]).decode()
    headers = {SIGNATURE_HEADER: sig_b64, TIMESTAMP_HEADER: ts}
    if fault in ("missing_headers", "missing_signature"):
        del headers[SIGNATURE_HEADER]
    if fault in ("missing_headers", "missing_timestamp"):
        del headers[TIMESTAMP_HEADER]
    return headers
