"""Telnyx Ed25519 webhook verification: Telnyx signs ``timestamp|raw body``
(the telnyx-timestamp and telnyx-signature-ed25519 headers), as the official
SDKs check it (telnyx-python's ``lib/webhook_verification.py``)."""

from __future__ import annotations

import base64
import textwrap
from typing import Any

import nacl.signing
import pytest

from voicecalld.providers.telnyx_signature import (
    ED25519_SPKI_PREFIX,
    SignatureError,
    load_public_key,
    verify,
)

# Generated from seed 0x00..0x1f; Ed25519 is deterministic.
SEED = bytes(range(32))
PUBLIC_B64 = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
TIMESTAMP = "1700000000"
BODY = b'{"data":{"event_type":"call.hangup","id":"0ccc7b54-4df3-4bca-a65a-3da1ecc777f0"}}'
SIGNATURE_B64 = "RsSQ4ly4BHROr8YvHdCfSjg5DHaLlT1P1YeVuHPlZIoiLXjTOwRVdxLmoFpuk/+8XZ8p6wzk64MTd8uEMNQECA=="
NOW = 1700000000.0


def _sign(timestamp: str, body: bytes, seed: bytes = SEED) -> str:
    signed = nacl.signing.SigningKey(seed).sign(timestamp.encode() + b"|" + body)
    return base64.b64encode(signed.signature).decode()


def _der_b64() -> str:
    return base64.b64encode(ED25519_SPKI_PREFIX + base64.b64decode(PUBLIC_B64)).decode()


def _pem() -> str:
    return f"-----BEGIN PUBLIC KEY-----\n{_der_b64()}\n-----END PUBLIC KEY-----\n"


def test_protocols_vector_with_window_disabled() -> None:
    key = load_public_key(PUBLIC_B64)
    # ``now`` is far from the fixture's timestamp: only tolerance=None lets it pass.
    verify(key, signature_b64=SIGNATURE_B64, timestamp=TIMESTAMP, raw_body=BODY, now=0.0, tolerance=None)
    with pytest.raises(SignatureError, match="old"):
        verify(key, signature_b64=SIGNATURE_B64, timestamp=TIMESTAMP, raw_body=BODY, now=NOW + 10_000)


def test_our_signer_reproduces_the_vector() -> None:
    # Guards the test helper itself, so the table below tests the verifier.
    assert _sign(TIMESTAMP, BODY) == SIGNATURE_B64


@pytest.mark.parametrize("text", [
    PUBLIC_B64,
    f"  {PUBLIC_B64}\n",
    _der_b64(),
    _pem(),
    "\n-----BEGIN PUBLIC KEY-----\n" + textwrap.fill(_der_b64(), 16) + "\n-----END PUBLIC KEY-----",
], ids=["raw-b64", "raw-b64-whitespace", "der-b64", "pem", "pem-wrapped"])
def test_load_public_key_forms(text: str) -> None:
    key = load_public_key(text)
    assert base64.b64encode(bytes(key)).decode() == PUBLIC_B64
    verify(key, signature_b64=SIGNATURE_B64, timestamp=TIMESTAMP, raw_body=BODY, now=NOW)


_RSA_SPKI_START = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"  # first bytes of a 2048-bit RSA SPKI


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    ("   \n", "empty"),
    ("not base64!!", "not valid base64"),
    (base64.b64encode(bytes(31)).decode(), "31 bytes"),
    (base64.b64encode(bytes(33)).decode(), "33 bytes"),
    # 44 bytes but an RSA/other algorithm prefix: must not be sliced blindly.
    (base64.b64encode(bytes.fromhex("302a300506032b6571032100") + bytes(32)).decode(), "not an Ed25519"),
    (_pem().replace("PUBLIC KEY", "PRIVATE KEY"), "public"),
    (_pem().replace("PUBLIC KEY", "CERTIFICATE"), "expected 'PUBLIC KEY'"),
    ("-----BEGIN PUBLIC KEY-----\n" + _der_b64(), "no complete"),
    ("-----BEGIN PUBLIC KEY-----\n" + _RSA_SPKI_START + "\n-----END PUBLIC KEY-----", "not an Ed25519"),
    ("-----BEGIN PUBLIC KEY-----\n%%%%\n-----END PUBLIC KEY-----", "not valid base64"),
], ids=["empty", "blank", "garbage", "short", "long", "wrong-oid", "private-pem", "cert-pem",
        "unterminated-pem", "rsa-pem", "pem-bad-body"])
def test_load_public_key_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_public_key(text)


_OTHER_SEED = bytes(range(1, 33))
_FRESH = str(int(NOW))


def _case(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"signature_b64": _sign(_FRESH, BODY), "timestamp": _FRESH,
                            "raw_body": BODY, "now": NOW}
    args.update(overrides)
    return args


BAD_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("missing-signature", _case(signature_b64=None), "missing telnyx-signature-ed25519 header$"),
    ("empty-signature", _case(signature_b64=""), "missing telnyx-signature-ed25519 header$"),
    ("missing-timestamp", _case(timestamp=None), "missing telnyx-timestamp header$"),
    ("missing-both", _case(signature_b64=None, timestamp=None), "and telnyx-timestamp headers"),
    ("timestamp-not-int", _case(timestamp="17e8"), "not an integer"),
    ("timestamp-signed-prefix", _case(timestamp="+1700000000"), "not an integer"),
    ("timestamp-float", _case(timestamp="1700000000.5"), "not an integer"),
    ("signature-not-b64", _case(signature_b64="@@@@"), "not valid base64"),
    ("signature-truncated", _case(signature_b64=_sign(_FRESH, BODY)[:44]), "decodes to 33 bytes"),
    ("forged-body", _case(raw_body=BODY.replace(b"hangup", b"answered")), "does not match"),
    ("reserialized-body", _case(raw_body=b'{"data": {"event_type": "call.hangup"}}'), "does not match"),
    ("forged-timestamp", _case(timestamp=str(int(NOW) + 1)), "does not match"),
    ("wrong-key", _case(signature_b64=_sign(_FRESH, BODY, _OTHER_SEED)), "does not match"),
    ("stale", _case(timestamp="1699999000", signature_b64=_sign("1699999000", BODY)), "1000 s old"),
    ("future", _case(timestamp="1700000400", signature_b64=_sign("1700000400", BODY)), "400 s in the future"),
]


@pytest.mark.parametrize(("args", "reason"), [(a, r) for _, a, r in BAD_CASES], ids=[n for n, _, _ in BAD_CASES])
def test_verify_rejects(args: dict[str, Any], reason: str) -> None:
    key = load_public_key(PUBLIC_B64)
    with pytest.raises(SignatureError, match=reason) as info:
        verify(key, **args)
    assert info.value.reason == str(info.value)


@pytest.mark.parametrize("skew", [-300, 0, 300])
def test_window_edges_are_inclusive(skew: int) -> None:
    ts = str(int(NOW) + skew)
    verify(load_public_key(PUBLIC_B64), signature_b64=_sign(ts, BODY), timestamp=ts, raw_body=BODY, now=NOW)


@pytest.mark.parametrize("skew", [-301, 301])
def test_window_just_outside(skew: int) -> None:
    ts = str(int(NOW) + skew)
    with pytest.raises(SignatureError):
        verify(load_public_key(PUBLIC_B64), signature_b64=_sign(ts, BODY), timestamp=ts, raw_body=BODY, now=NOW)


def test_custom_tolerance() -> None:
    ts = str(int(NOW) - 20)
    key = load_public_key(PUBLIC_B64)
    with pytest.raises(SignatureError, match="tolerance 10 s"):
        verify(key, signature_b64=_sign(ts, BODY), timestamp=ts, raw_body=BODY, now=NOW, tolerance=10)
