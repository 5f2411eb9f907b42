"""Telnyx wire facts without I/O: envelope parsing, client_state, the
hang-up cause table, error sentences, dial limits and the webhook
signature check the provider runs (https://developers.telnyx.com/api/call-control)."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from werkzeug.datastructures import Headers

from voicecalld import config as C
from voicecalld.calls import State
from voicecalld.providers import telnyx_events as wire
from voicecalld.providers.telnyx import _KeyCache, check_signature, ring_timeout_secs, time_limit_secs
from voicecalld.providers.telnyx_signature import SignatureError

# The Ed25519 vector of test_telnyx_signature.py (seed 0x00..0x1f).
VECTOR_KEY = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
VECTOR_TS = "1700000000"
VECTOR_BODY = b'{"data":{"event_type":"call.hangup","id":"0ccc7b54-4df3-4bca-a65a-3da1ecc777f0"}}'
VECTOR_SIG = "RsSQ4ly4BHROr8YvHdCfSjg5DHaLlT1P1YeVuHPlZIoiLXjTOwRVdxLmoFpuk/+8XZ8p6wzk64MTd8uEMNQECA=="
CALL_ID = "6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"


def vector_headers(**override: str | None) -> Headers:
    # Mixed case on purpose: header names are case-insensitive.
    values = {"Telnyx-Signature-Ed25519": VECTOR_SIG, "Telnyx-Timestamp": VECTOR_TS, **override}
    return Headers([(k, v) for k, v in values.items() if v is not None])


# -- the signature check the webhook handler runs -----------------------------------------


def test_protocols_vector_verifies_inside_its_window_and_parses() -> None:
    key = _KeyCache().get(VECTOR_KEY)
    check_signature(key, vector_headers(), VECTOR_BODY, now=1700000000 + 299)
    check_signature(key, vector_headers(), VECTOR_BODY, now=0, tolerance=None)  # replaying the fixture
    hook = wire.parse(VECTOR_BODY)
    assert (hook.type, hook.id, hook.call_control_id, hook.call_id) == (
        "call.hangup", "0ccc7b54-4df3-4bca-a65a-3da1ecc777f0", None, None)


@pytest.mark.parametrize("headers, body, now, reason", [
    (vector_headers(), VECTOR_BODY, 1700000000 + 301, "old"),
    (vector_headers(), VECTOR_BODY, 1700000000 - 301, "in the future"),
    (vector_headers(), VECTOR_BODY.replace(b"hangup", b"answered"), 1700000000, "does not match"),
    (vector_headers(), VECTOR_BODY + b"\n", 1700000000, "does not match"),
    (vector_headers(**{"Telnyx-Timestamp": "1700000001"}), VECTOR_BODY, 1700000000, "does not match"),
    (vector_headers(**{"Telnyx-Signature-Ed25519": None}), VECTOR_BODY, 1700000000, "missing"),
    (vector_headers(**{"Telnyx-Timestamp": None}), VECTOR_BODY, 1700000000, "missing"),
    (Headers(), VECTOR_BODY, 1700000000, "missing"),
], ids=["stale", "future", "other-body", "trailing-newline", "other-timestamp", "no-signature",
        "no-timestamp", "no-headers"])
def test_signature_check_rejects(headers: Headers, body: bytes, now: float, reason: str) -> None:
    with pytest.raises(SignatureError, match=reason):
        check_signature(_KeyCache().get(VECTOR_KEY), headers, body, now=now)


def test_wrong_key_is_rejected() -> None:
    other = base64.b64encode(bytes(range(1, 33))).decode()
    with pytest.raises(SignatureError, match="wrong key or forged"):
        check_signature(_KeyCache().get(other), vector_headers(), VECTOR_BODY, now=1700000000)


@pytest.mark.parametrize("text, reason", [
    (None, "no telnyx.publicKey"),
    ("", "no telnyx.publicKey"),
    ("bm90IGEga2V5", "unusable: public key decodes to 9 bytes"),
], ids=["unset", "empty", "garbage"])
def test_key_cache_fails_closed(text: str | None, reason: str) -> None:
    cache = _KeyCache()
    for _ in range(2):  # the cached failure keeps failing
        with pytest.raises(SignatureError, match=reason):
            cache.get(text)


def test_key_cache_follows_a_changed_key() -> None:
    cache = _KeyCache()
    first = cache.get(VECTOR_KEY)
    assert cache.get(VECTOR_KEY) is first
    other = base64.b64encode(bytes(range(1, 33))).decode()
    assert bytes(cache.get(other)) != bytes(first)


# -- envelope ----------------------------------------------------------------------------


def envelope(**data: object) -> bytes:
    return json.dumps({"data": data, "meta": {"attempt": 2}}).encode()


@pytest.mark.parametrize("body, problem", [
    (b"", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "no data object"),
    (b'{"data": "x"}', "no data object"),
    (envelope(id="a"), "event_type is missing"),
    (envelope(event_type="", id="a"), "event_type is missing"),
    (envelope(event_type="call.hangup"), "data.id is missing"),
    (envelope(event_type="call.hangup", id=7), "data.id is missing"),
    (envelope(event_type="call.hangup", id="a", payload=[1]), "payload is not an object"),
])
def test_parse_rejects(body: bytes, problem: str) -> None:
    with pytest.raises(wire.WebhookFormatError, match=problem):
        wire.parse(body)


def test_parse_reads_the_envelope() -> None:
    hook = wire.parse(envelope(event_type="call.initiated", id="e1", payload={
        "call_control_id": "v3:abc", "client_state": wire.encode_client_state(CALL_ID), "direction": "incoming",
        "from": "+15550001111", "to": 12}))
    assert (hook.type, hook.id, hook.attempt, hook.call_control_id, hook.call_id) == (
        "call.initiated", "e1", 2, "v3:abc", CALL_ID)
    assert hook.incoming and hook.text("from") == "+15550001111" and hook.text("to") is None
    bare = wire.parse(b'{"data": {"event_type": "call.bridged", "id": "e2"}}')
    assert bare.payload == {} and bare.attempt == 1 and not bare.incoming and bare.call_control_id is None


# -- client_state --------------------------------------------------------------------------


def test_client_state_round_trip() -> None:
    state = wire.encode_client_state(CALL_ID)
    assert base64.b64decode(state).decode() == CALL_ID
    assert wire.decode_client_state(state) == CALL_ID


@pytest.mark.parametrize("value", [
    None, "", 42, "%%%not-base64%%%", "YWJj",  # "abc": decodes, but not one of our call ids
    base64.b64encode(b"\xff\xfe\xfd").decode(),  # not UTF-8
    base64.b64encode(CALL_ID.upper().encode()).decode(),
    base64.b64encode((CALL_ID + "\n").encode()).decode(),
    base64.b64encode(json.dumps({"callId": CALL_ID}).encode()).decode(),
    "A" * 10_000,
], ids=["none", "empty", "int", "not-base64", "foreign", "not-utf8", "upper", "newline", "json", "huge"])
def test_undecodable_client_state_falls_back(value: object) -> None:
    assert wire.decode_client_state(value) is None


# -- hang-up causes --------------------------------------------------------------------------

HANGUPS = [
    # cause, source, incoming, answered -> reason
    ("normal_clearing", "callee", False, True, State.HANGUP_USER),   # our callee hung up
    ("normal_clearing", "caller", False, True, State.COMPLETED),     # we hung up (the bot's reason wins)
    ("normal_clearing", "unknown", False, True, State.COMPLETED),
    ("normal_clearing", "caller", True, True, State.HANGUP_USER),    # the inbound caller hung up
    ("normal_clearing", "callee", True, True, State.COMPLETED),      # we hung up an inbound call
    ("user_busy", "callee", False, False, State.BUSY),
    ("call_rejected", "callee", False, False, State.BUSY),
    ("timeout", "caller", False, False, State.NO_ANSWER),
    ("no_answer", "callee", False, False, State.NO_ANSWER),
    ("originator_cancel", "caller", False, False, State.HANGUP_BOT),  # we cancelled our dial
    ("originator_cancel", "caller", True, False, State.HANGUP_USER),  # the caller gave up ringing
    ("time_limit", "unknown", False, True, State.TIMEOUT),
    ("not_found", "callee", False, False, State.FAILED),
    ("unspecified", "unknown", False, False, State.FAILED),
    ("unspecified", "unknown", False, True, State.COMPLETED),
    ("destination_out_of_order", "unknown", False, False, State.FAILED),
    (None, None, False, True, State.COMPLETED),
]


@pytest.mark.parametrize("cause, source, incoming, answered, reason", HANGUPS)
def test_end_reason(cause: str | None, source: str | None, incoming: bool, answered: bool,
                    reason: State) -> None:
    assert wire.end_reason(cause, source=source, incoming=incoming, answered=answered) == reason


def test_every_documented_cause_is_in_the_table() -> None:
    documented = {"call_rejected", "normal_clearing", "originator_cancel", "timeout", "time_limit", "user_busy",
                  "not_found", "unspecified", "no_answer"}
    assert documented <= {row[0] for row in HANGUPS}


# -- transcription ---------------------------------------------------------------------------


@pytest.mark.parametrize("data, expected", [
    ({"transcript": " yes please ", "is_final": True, "confidence": 0.9, "transcription_track": "inbound"},
     wire.Transcript("yes please", True, 0.9, "inbound")),
    ({"transcript": "yes", "is_final": False}, wire.Transcript("yes", False, None, "inbound")),
    ({"transcript": "yes", "confidence": True}, wire.Transcript("yes", True, None, "inbound")),
    ({"transcript": "hi", "is_final": True, "transcription_track": "outbound"},
     wire.Transcript("hi", True, None, "outbound")),
    ({"transcript": 5}, None),
    ({}, None),
    ("nope", None),
])
def test_transcript(data: object, expected: wire.Transcript | None) -> None:
    assert wire.transcript({"transcription_data": data}) == expected


# -- errors ----------------------------------------------------------------------------------


def errors(*items: dict[str, object]) -> bytes:
    return json.dumps({"errors": list(items)}).encode()


@pytest.mark.parametrize("status, body, code, message", [
    (401, errors({"code": "10009", "title": "Authentication failed", "detail": "The API key is invalid."}),
     "10009", "Telnyx refused to place the call (HTTP 401, code 10009): Authentication failed: The API key is "
              "invalid. Check telnyx.apiKey (TELNYX_API_KEY)."),
    (422, errors({"code": "10015", "title": "Invalid parameter", "detail": "Bad.",
                  "source": {"pointer": "/connection_id"}}),
     "10015", "Telnyx refused to place the call (HTTP 422, code 10015): Invalid parameter: Bad. Check "
              "telnyx.connectionId (the Call Control application id)."),
    (422, errors({"code": 90018, "title": "Call has already ended", "detail": "Call has already ended"}),
     "90018", "Telnyx refused to place the call (HTTP 422, code 90018): Call has already ended. The call has "
              "already ended."),
    (500, b"<html>oops</html>", None, "Telnyx refused to place the call (HTTP 500): no error details"),
    (401, b"", None, "Telnyx refused to place the call (HTTP 401): no error details. Check telnyx.apiKey "
                     "(TELNYX_API_KEY)."),
    (400, errors({"title": "Bad Request"}), None, "Telnyx refused to place the call (HTTP 400): Bad Request"),
    (400, b'{"errors": "flat"}', None, "Telnyx refused to place the call (HTTP 400): no error details"),
], ids=["auth", "pointer", "int-code", "html", "empty-401", "title-only", "odd-shape"])
def test_api_failure(status: int, body: bytes, code: str | None, message: str) -> None:
    failure = wire.api_failure(status, body, "place the call")
    assert (failure.status, failure.code, failure.message) == (status, code, message)


# -- dial limits -------------------------------------------------------------------------------


@pytest.mark.parametrize("ms, secs", [(1, 5), (1500, 5), (5000, 5), (5001, 6), (30000, 30), (600000, 600),
                                      (3_600_000, 600)])
def test_ring_timeout_secs(ms: int, secs: int) -> None:
    assert ring_timeout_secs(ms) == secs


@pytest.mark.parametrize("duration, ring_ms, secs", [(300, 30000, 390), (2, 1500, 63), (0.5, 1, 60),
                                                     (20000, 30000, 14400)])
def test_time_limit_secs(duration: float, ring_ms: int, secs: int) -> None:
    assert time_limit_secs(duration, ring_ms) == secs


def test_event_ids_are_unique_strings() -> None:
    # data.id is the dedupe key; a UUID-shaped id round-trips untouched.
    event_id = str(uuid.uuid4())
    assert wire.parse(envelope(event_type="call.answered", id=event_id)).id == event_id


# -- configuration -------------------------------------------------------------------------

TELNYX_OK = {"provider": "telnyx", "fromNumber": "+15550001234", "publicUrl": "https://example.com",
             "telnyx": {"apiKey": "KEY", "connectionId": "123", "publicKey": VECTOR_KEY}}


@pytest.mark.parametrize("telnyx, problem", [
    ({"publicKey": "bm90IGEga2V5"}, "telnyx.publicKey: public key decodes to 9 bytes; expected 32"),
    ({"publicKey": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"}, "the Telnyx *public* key"),
    ({"voice": "Joanna"}, 'telnyx.voice: expected male, female, AWS.Polly.<VoiceId>'),
    ({"transcriptionEngine": "Whisper"}, 'telnyx.transcriptionEngine: expected one of Google, Telnyx'),
    ({"machineDetection": "yes"}, 'telnyx.machineDetection: expected true or false'),
])
def test_config_problems(telnyx: dict[str, str], problem: str) -> None:
    data = {**TELNYX_OK, "telnyx": {**TELNYX_OK["telnyx"], **telnyx}}  # type: ignore[dict-item]
    with pytest.raises(C.ConfigError) as info:
        C.from_mapping(data, {})
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_config_defaults_and_accepted_forms() -> None:
    cfg = C.from_mapping(TELNYX_OK, {})
    assert (cfg.telnyx.voice, cfg.telnyx.language, cfg.telnyx.transcriptionEngine, cfg.telnyx.machineDetection) \
        == ("female", "en-US", "Google", False)
    pem = ("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAA6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=\n"
           "-----END PUBLIC KEY-----")
    for voice in ("male", "AWS.Polly.Joanna-Neural", "Telnyx.NaturalHD.astra", "Azure.en-US-AvaNeural"):
        C.from_mapping({**TELNYX_OK, "telnyx": {**TELNYX_OK["telnyx"], "voice": voice, "publicKey": pem}}, {})
