"""Telnyx faults that must cost nothing but the request they hit: late
webhooks and replies for a finished call (no leg, no call comes back),
webhooks acknowledged just before shutdown (processed, not dropped), and
floods of rejected webhooks (logged at a bounded rate)."""

# The fixtures ``fake`` and ``telnyx`` come from test_telnyx; a test naming
# them as arguments is not a redefinition.
# ruff: noqa: F811

from __future__ import annotations

import base64
import json
import threading
import uuid
from typing import Any

import nacl.signing
import pytest
import requests
from test_telnyx import CALLER, OURS, StartTelnyx, fake, listening, signed_event, telnyx  # noqa: F401
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from voicecalld import config as C
from voicecalld.calls import CallEvent, CallRecord, Direction, EventType, Mode, Speak
from voicecalld.errors import NotConnected, ProviderError
from voicecalld.providers.telnyx import TelnyxProvider
from voicecalld.testing import _telnyx_wire
from voicecalld.testing._wait import wait_until
from voicecalld.testing.fake_telnyx import FakeTelnyx


def carrier(d: Any) -> dict[str, Any]:
    return dict(d.rpc("daemon.status")["carrier"])


def quiet(d: Any) -> dict[str, Any]:
    """Wait until every webhook the daemon acknowledged has been processed."""
    return dict(d.wait(lambda: (c := carrier(d))["processedEvents"] == c["acceptedEvents"] and c, 10,
                       "the acknowledged webhooks to be processed"))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_late_webhooks_for_a_finished_call_bring_back_no_leg_and_no_call(fake: FakeTelnyx,
                                                                         telnyx: StartTelnyx) -> None:
    d = telnyx({"inboundPolicy": "open", "maxConcurrentCalls": 2})
    ccid = fake.inbound_call(CALLER, OURS, d.url)  # type: ignore[attr-defined]
    [record] = d.wait(lambda: d.rpc("voicecall.list")["calls"], what="the inbound call")
    call_id = record["callId"]
    listening(fake, d, call_id, fake.calls[ccid])
    assert carrier(d)["legs"] == 1
    assert d.rpc("voicecall.end", {"callId": call_id})["endReason"] == "hangup-bot"
    fake.wait_event(ccid, "call.hangup", ok=True)
    assert quiet(d)["legs"] == 0
    answers = len([c for c in fake.calls[ccid].commands if c.name == "answer"])

    url = d.url  # type: ignore[attr-defined]
    state = b64(call_id)
    late = [
        # Telnyx repeats call.initiated (its id long out of the daemon's memory).
        ("call.initiated", {"direction": "incoming", "from": CALLER, "to": OURS, "state": "parked"}),
        ("call.answered", {"client_state": state}),
        ("call.speak.started", {"client_state": state}),
        ("call.speak.ended", {"client_state": state, "status": "completed"}),
        ("call.transcription", {"client_state": state, "transcription_data": {
            "transcript": "too late", "is_final": True, "confidence": 0.9, "transcription_track": "inbound"}}),
        ("call.dtmf.received", {"client_state": state, "digit": "5"}),
        ("call.hangup", {"client_state": state, "hangup_cause": "normal_clearing", "hangup_source": "caller",
                         "direction": "incoming"}),
    ]
    for event_type, payload in late:
        assert signed_event(fake, url, event_type, {"call_control_id": ccid, **payload}) == 200, event_type
    status = quiet(d)
    assert status["legs"] == 0
    assert d.rpc("voicecall.list") == {"calls": []}
    assert len(d.rpc("voicecall.history", {"limit": 10})["calls"]) == 1  # no second call from the late initiated
    assert len([c for c in fake.calls[ccid].commands if c.name == "answer"]) == answers
    assert d.rpc("voicecall.status", {"callId": call_id})["transcript"][-1]["text"] != "too late"


# -- in-process: the provider with a manager that only records -----------------------------------


class Recorder:
    """What the provider needs of the manager; records the events."""

    def __init__(self, config: Any, block: threading.Event | None = None) -> None:
        self.config = config
        self.events: list[CallEvent] = []
        self.block = block
        self.started = threading.Event()

    def handle_event(self, event: CallEvent) -> None:
        self.started.set()
        if self.block is not None:
            self.block.wait(10)
        self.events.append(event)

    def attach_provider_id(self, call_id: str, provider_call_id: str) -> None:
        pass


def provider_for(fake: FakeTelnyx, manager: Any) -> TelnyxProvider:
    provider = TelnyxProvider(manager.config)
    provider.bind(manager)
    provider.public_url = "http://127.0.0.1:9"
    return provider


def telnyx_config(fake: FakeTelnyx, public_key: str | None = None) -> Any:
    return C.from_mapping({"provider": "telnyx", "fromNumber": OURS, "publicUrl": "http://127.0.0.1:9",
                           "telnyx": {"apiKey": fake.api_key, "connectionId": fake.connection_id,
                                      "publicKey": public_key or fake.public_key_b64,
                                      "apiBaseUrl": fake.base_url}}, {})


def test_a_reply_after_the_call_was_forgotten_makes_no_leg_and_no_request(fake: FakeTelnyx) -> None:
    provider = provider_for(fake, Recorder(telnyx_config(fake)))
    try:
        record = CallRecord(callId=str(uuid.uuid4()), provider="telnyx", direction=Direction.OUTBOUND,
                            mode=Mode.CONVERSATION, to=CALLER, from_=OURS, providerCallId="v3:gone")
        provider.forget(record)  # the call ended while the manager was about to speak or listen
        requests_before = len(fake.requests)
        with pytest.raises(NotConnected):
            provider.speak(record, Speak("Are you still there?", "u3"))
        with pytest.raises(NotConnected):
            provider.start_listening(record, 2)
        assert provider.describe()["legs"] == 0
        assert len(fake.requests) == requests_before
    finally:
        provider.stop()


def test_the_declared_message_limit_is_the_one_telnyx_speaks(fake: FakeTelnyx) -> None:
    provider = provider_for(fake, Recorder(telnyx_config(fake)))
    try:
        record = CallRecord(callId=str(uuid.uuid4()), provider="telnyx", direction=Direction.OUTBOUND,
                            mode=Mode.CONVERSATION, to=CALLER, from_=OURS)
        record.providerCallId = provider.initiate(record)
        call = fake.calls[record.providerCallId]
        fake.wait_for(lambda: call.status == "answered", what="the callee to answer")
        limit = TelnyxProvider.capabilities.max_message_chars
        provider.speak(record, Speak("a" * limit, "u1"))
        assert call.said == ["a" * limit]
        with pytest.raises(ProviderError, match="payload"):
            provider.speak(record, Speak("a" * (limit + 1), "u2"))
        assert call.said == ["a" * limit]
    finally:
        provider.stop()


def webhook_request(key: nacl.signing.SigningKey, event_type: str, ccid: str, **payload: Any) -> Request:
    body = json.dumps({"data": {"record_type": "event", "event_type": event_type, "id": str(uuid.uuid4()),
                                "occurred_at": "2024-01-01T00:00:00Z",
                                "payload": {"call_control_id": ccid, **payload}},
                       "meta": {"attempt": 1}}, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", **_telnyx_wire.signature_headers(key, body)}
    return Request(EnvironBuilder(method="POST", path="/voice/webhook", data=body, headers=headers).get_environ())


def test_acknowledged_webhooks_are_processed_before_the_provider_stops(fake: FakeTelnyx) -> None:
    key = nacl.signing.SigningKey.generate()
    release = threading.Event()
    manager = Recorder(telnyx_config(fake, base64.b64encode(bytes(key.verify_key)).decode()), block=release)
    provider = provider_for(fake, manager)
    digits = "12345"
    # The first event holds its call's worker; the others queue behind it, acknowledged.
    for digit in digits:
        response = provider.handle_webhook(webhook_request(key, "call.dtmf.received", "v3:busy", digit=digit))
        assert response.status_code == 200
    assert manager.started.wait(5)
    assert provider.describe()["pendingEvents"] == len(digits) - 1
    stopper = threading.Thread(target=provider.stop)
    stopper.start()
    wait_until(lambda: not provider._work.submit("probe", lambda: None), 5, "the provider to be stopping")
    # Stopping: nothing new is taken (Telnyx will retry it elsewhere) ...
    late = provider.handle_webhook(webhook_request(key, "call.dtmf.received", "v3:other", digit="9"))
    assert late.status_code == 503
    # ... but what was acknowledged is processed, in order.
    release.set()
    stopper.join(15)
    assert not stopper.is_alive()
    assert [e.digits for e in manager.events] == list(digits)
    assert all(e.type == EventType.DTMF for e in manager.events)


def test_rejected_webhooks_are_logged_at_a_bounded_rate(fake: FakeTelnyx, telnyx: StartTelnyx) -> None:
    d = telnyx()
    url = d.url  # type: ignore[attr-defined]
    body = json.dumps({"data": {"event_type": "call.hangup", "id": str(uuid.uuid4()),
                                "payload": {"call_control_id": "v3:nobody"}}}).encode()
    forger = nacl.signing.SigningKey.generate()
    attempts = [_telnyx_wire.signature_headers(forger, body) for _ in range(20)]
    attempts += [_telnyx_wire.signature_headers(fake.signing_key, body, fault="stale_timestamp") for _ in range(5)]
    statuses = [requests.post(url, data=body, headers={"Content-Type": "application/json", **headers},
                              timeout=5).status_code for headers in attempts]
    assert statuses == [401] * 25
    log = d.log()
    assert log.count("rejected a Telnyx webhook") == 2  # the first of each kind; the rest are counted
    assert log.count("signature does not match") == 1 and log.count("possible replay") == 1
