"""Telnyx webhook signatures (Ed25519), verification side.

Telnyx signs each webhook with the account's Ed25519 key over the UTF-8
bytes of ``f"{timestamp}|{raw_body}"`` and sends the base64 signature in
``telnyx-signature-ed25519`` and the Unix-seconds timestamp in
``telnyx-timestamp``. This module is pure (no I/O, no clock): the caller
passes the header values, the body bytes exactly as received and ``now``,
so the webhook handler stays testable and the window check is explicit.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import nacl.exceptions
import nacl.signing

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
DEFAULT_TOLERANCE = 300.0  # seconds, as in every official Telnyx SDK

# DER of SubjectPublicKeyInfo{AlgorithmIdentifier{id-Ed25519}, BIT STRING}
# up to the key bytes. Ed25519 SPKI has no parameters, so this prefix is
# fixed and a strict byte comparison is a complete parser for it.
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_RAW_KEY_LEN = 32
_SPKI_LEN = len(ED25519_SPKI_PREFIX) + _RAW_KEY_LEN
_SIGNATURE_LEN = 64
# Only plain decimal digits: int() would also accept " 17", "+17", "1_7".
_TIMESTAMP_RE = re.compile(r"[0-9]{1,15}")
_PEM_RE = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END ([A-Z0-9 ]+)-----", re.DOTALL)


class SignatureError(Exception):
    """A webhook failed verification; ``reason`` says why, for the log, and
    ``kind`` sorts reasons for rate-limited logging: ``missing`` headers,
    ``forged`` (bad signature or malformed headers), ``stale`` or
    ``future`` timestamps (genuine but late, or a clock problem), ``config``
    (no usable public key)."""

    def __init__(self, reason: str, kind: str = "forged") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


def _b64decode(text: str, what: str) -> bytes:
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None


def _key_from_spki(der: bytes, what: str) -> bytes:
    if len(der) != _SPKI_LEN or not der.startswith(ED25519_SPKI_PREFIX):
        raise ValueError(
            f"{what} is not an Ed25519 SubjectPublicKeyInfo (expected {_SPKI_LEN} bytes "
            f"starting {ED25519_SPKI_PREFIX.hex()}, got {len(der)} bytes starting "
            f"{der[:len(ED25519_SPKI_PREFIX)].hex() or 'nothing'})"
        )
    return der[len(ED25519_SPKI_PREFIX):]


def _key_from_pem(text: str) -> bytes:
    match = _PEM_RE.search(text)
    if match is None:
        raise ValueError("PEM public key has no complete -----BEGIN ...----- / -----END ...----- block")
    label, body, end_label = match.group(1), match.group(2), match.group(3)
    if label != end_label:
        raise ValueError(f"PEM block begins with {label!r} but ends with {end_label!r}")
    if "PRIVATE" in label:
        raise ValueError(f"PEM block is a {label}; configure the Telnyx *public* key instead")
    if label != "PUBLIC KEY":
        raise ValueError(f"PEM block is {label!r}; expected 'PUBLIC KEY' (SubjectPublicKeyInfo)")
    return _key_from_spki(_b64decode(body, "PEM body"), "PEM public key")


def load_public_key(text: str) -> nacl.signing.VerifyKey:
    """Parse a Telnyx public key in any form an operator is likely to paste.

    Accepted: base64 of the raw 32-byte key (what the Telnyx portal shows),
    a PEM ``PUBLIC KEY`` block, or base64 of the DER SubjectPublicKeyInfo.
    Raises ValueError with a message saying what was wrong.
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError("public key is empty")
    if stripped.startswith("-----"):
        raw = _key_from_pem(stripped)
    else:
        decoded = _b64decode(stripped, "public key")
        if len(decoded) == _RAW_KEY_LEN:
            raw = decoded
        elif len(decoded) == _SPKI_LEN:
            raw = _key_from_spki(decoded, "DER public key")
        else:
            raise ValueError(
                f"public key decodes to {len(decoded)} bytes; expected {_RAW_KEY_LEN} "
                f"(raw Ed25519 key) or {_SPKI_LEN} (DER SubjectPublicKeyInfo)"
            )
    return nacl.signing.VerifyKey(raw)


def _missing_reason(signature_b64: str | None, timestamp: str | None) -> str:
    missing = [name for name, value in ((SIGNATURE_HEADER, signature_b64), (TIMESTAMP_HEADER, timestamp))
               if not value]
    return f"missing {' and '.join(missing)} header{'s' if len(missing) > 1 else ''}"


def _decode_signature(signature_b64: str) -> bytes:
    try:
        signature = base64.b64decode(signature_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{SIGNATURE_HEADER} is not valid base64") from None
    if len(signature) != _SIGNATURE_LEN:
        raise SignatureError(
            f"{SIGNATURE_HEADER} decodes to {len(signature)} bytes; an Ed25519 signature is {_SIGNATURE_LEN}"
        )
    return signature


def _check_window(ts: int, now: float, tolerance: float) -> None:
    skew = now - ts
    if skew > tolerance:
        raise SignatureError(f"timestamp is {skew:.0f} s old (tolerance {tolerance:g} s); possible replay", "stale")
    if -skew > tolerance:
        raise SignatureError(f"timestamp is {-skew:.0f} s in the future (tolerance {tolerance:g} s); "
                             "check this host's clock", "future")


def verify(
    key: nacl.signing.VerifyKey,
    *,
    signature_b64: str | None,
    timestamp: str | None,
    raw_body: bytes,
    now: float,
    tolerance: float | None = DEFAULT_TOLERANCE,
) -> None:
    """Check one webhook; return None if genuine, else raise SignatureError.

    ``tolerance=None`` disables the time window (for replaying fixtures).
    The window is checked after the signature, so "too old" is only ever
    reported for a genuine (replayed or delayed) request, which is the
    case an operator needs to tell apart from forgery.
    """
    if not signature_b64 or not timestamp:
        raise SignatureError(_missing_reason(signature_b64, timestamp), "missing")
    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise SignatureError(f"{TIMESTAMP_HEADER} {timestamp[:32]!r} is not an integer number of seconds")
    signature = _decode_signature(signature_b64)
    message = timestamp.encode("ascii") + b"|" + raw_body
    try:
        key.verify(message, signature)  # constant-time inside libsodium
    except nacl.exceptions.BadSignatureError:
        raise SignatureError("signature does not match the body and timestamp (wrong key or forged)") from None
    if tolerance is not None:
        _check_window(int(timestamp), now, tolerance)


class KeyCache:
    """The parsed public key, re-parsed only when the configured text changes (SIGHUP)."""

    def __init__(self) -> None:
        self._text: str | None = None
        self._key: nacl.signing.VerifyKey | None = None
        self._error: str | None = None

    def get(self, text: str | None) -> nacl.signing.VerifyKey:
        if not text:
            raise SignatureError("no telnyx.publicKey is configured to verify webhooks", "config")
        if text != self._text:
            try:
                self._key, self._error = load_public_key(text), None
            except ValueError as exc:
                self._key, self._error = None, str(exc)
            self._text = text
        if self._key is None:
            raise SignatureError(f"telnyx.publicKey is unusable: {self._error}", "config")
        return self._key


def check_signature(key: nacl.signing.VerifyKey, headers: Any, raw_body: bytes, now: float,
                    tolerance: float | None = DEFAULT_TOLERANCE) -> None:
    """Verify one request; raises ``SignatureError``. ``headers`` is any
    case-insensitive mapping (werkzeug's Headers)."""
    verify(key, signature_b64=headers.get(SIGNATURE_HEADER),
                            timestamp=headers.get(TIMESTAMP_HEADER), raw_body=raw_body,
                            now=now, tolerance=tolerance)
