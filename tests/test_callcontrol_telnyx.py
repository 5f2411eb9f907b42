"""Call control on Telnyx, end to end: the real daemon against the fake
Telnyx Call Control service, which checks every command's body.

DTMF is ``send_dtmf``; a transfer is ``transfer`` (after the message has
been said), whose new leg's webhooks say how it went; a call that records
sends ``record_start`` once answered and learns of the recording from a
signed ``call.recording.saved``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from callctl import ALLOWED, BUSY, OTHER, Events
from daemon import Daemon, remove, short_tmp

from voicecalld.control.client import RpcError
from voicecalld.errors import INVALID_PARAMS, PROVIDER_ERROR
from voicecalld.testing import _telnyx_wire
from voicecalld.testing.fake_telnyx import FakeCall, FakeTelnyx
from voicecalld.testing.ports import free_port

OURS, CALLEE = "+15550009999", "+15550001111"


class Env:
    def __init__(self, fake: FakeTelnyx, d: Daemon, port: int) -> None:
        self.fake, self.d, self.port = fake, d, port

    @property
    def webhook(self) -> str:
        return f"http://127.0.0.1:{self.port}/voice/webhook"

    def call(self, mode: str = "conversation", **params: Any) -> tuple[str, FakeCall]:
        call_id = self.d.rpc("voicecall.initiate", {"message": "Hello from the bot", "mode": mode, "to": CALLEE,
                                                    **params})["callId"]
        state = base64.b64encode(call_id.encode()).decode()
        call = self.fake.wait_for(lambda: next((c for c in list(self.fake.calls.values())
                                                if c.client_state == state), None), what="the dial")
        return call_id, call


def asked(fake: FakeTelnyx, call: FakeCall, action: str) -> int:
    """Requests for ``action`` on ``call``, and new dials. (Other requests
    may be in flight: the fake and the daemon are shared by the module's
    tests, and earlier tests' calls are still being hung up.)"""
    return sum(1 for r in list(fake.requests) if r.method == "POST" and (
        r.path == "/v2/calls" or r.path.endswith(f"/{call.call_control_id}/actions/{action}")))


def commands(call: FakeCall, name: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in c.params.items() if k != "command_id"} for c in call.commands
            if c.name == name and c.accepted]


@pytest.fixture(scope="module")
def shared() -> Iterator[Env]:
    with FakeTelnyx(seed=5, ms_per_char=2.0, answer_after=0.03, amd_delay=0.03,
                    webhook_retry_delays=(0.05, 0.05)) as fake:
        fake.set_callee(BUSY, "busy")
        port = free_port()
        tmp = short_tmp("txctl")
        config = {"provider": "telnyx", "fromNumber": OURS, "publicUrl": f"http://127.0.0.1:{port}",
                  "serve": {"port": port}, "responder": "off", "maxConcurrentCalls": 5,
                  "telnyx": {"apiKey": fake.api_key, "connectionId": fake.connection_id,
                             "publicKey": fake.public_key_b64, "apiBaseUrl": fake.base_url},
                  "transfer": {"allowTo": [ALLOWED, BUSY]}, "outbound": {"notifyHangupDelaySec": 0.05},
                  "recording": {"announce": "This call is recorded."}}
        d = Daemon(tmp, config)
        try:
            yield Env(fake, d, port)
        finally:
            code = d.stop()
            log = d.log()
            remove(tmp)
            assert code == 0, log


@pytest.fixture
def env(shared: Env) -> Iterator[Env]:
    yield shared
    for call in shared.d.rpc("voicecall.list")["calls"]:
        shared.d.rpc("voicecall.end", {"callId": call["callId"]})


# --- DTMF --------------------------------------------------------------------------------------


def test_dtmf_is_send_dtmf(env: Env) -> None:
    d = env.d
    call_id, call = env.call()
    d.wait_state(call_id, "listening")
    events = Events(d, call_id)
    try:
        assert d.rpc("voicecall.dtmf", {"callId": call_id, "digits": "0w*#AD"}) == {"callId": call_id, "ok": True}
        assert events.wait("call.dtmf")[0]["data"] == {"digits": "0w*#AD", "direction": "sent"}
    finally:
        events.close()
    assert commands(call, "send_dtmf") == [{"digits": "0w*#AD", "duration_millis": 100}]
    assert call.dtmf_sent == ["0w*#AD"]
    assert d.rpc("voicecall.status", {"callId": call_id})["state"] == "listening"


def test_received_dtmf_events_say_so(env: Env) -> None:
    d, fake = env.d, env.fake
    call_id, call = env.call()
    d.wait_state(call_id, "listening")
    events = Events(d, call_id)
    try:
        fake.callee_presses(call.call_control_id, "4")
        assert events.wait("call.dtmf")[0]["data"] == {"digits": "4", "direction": "received"}
    finally:
        events.close()


def test_dtmf_on_initiate_is_sent_before_the_message(env: Env) -> None:
    d = env.d
    call_id, call = env.call(mode="notify", dtmf="2w1")
    d.wait_state(call_id, "completed")
    assert [c.name for c in call.commands if c.accepted][:2] == ["send_dtmf", "speak"]
    assert commands(call, "send_dtmf") == [{"digits": "2w1", "duration_millis": 100}]
    assert commands(call, "speak")[0]["payload"] == "Hello from the bot"


def test_bad_digits_are_refused_naming_the_allowed_set(env: Env) -> None:
    d, fake = env.d, env.fake
    call_id, call = env.call()
    d.wait_state(call_id, "listening")
    before = asked(fake, call, "send_dtmf")
    with pytest.raises(RpcError) as info:
        d.rpc("voicecall.dtmf", {"callId": call_id, "digits": "12e"})
    assert info.value.code == INVALID_PARAMS and "0-9, *, #, A-D and w (a 0.5 s pause)" in info.value.message
    assert asked(fake, call, "send_dtmf") == before and call.dtmf_sent == []


# --- transfer ----------------------------------------------------------------------------------


def test_transfer_to_an_allowed_number(env: Env) -> None:
    d = env.d
    call_id, call = env.call()
    d.wait_state(call_id, "listening")
    result = d.rpc("voicecall.transfer", {"callId": call_id, "to": ALLOWED, "message": "Putting you through"},
                   timeout=30)
    assert result == {"callId": call_id, "ok": True, "endReason": "transferred"}
    record = d.rpc("voicecall.status", {"callId": call_id})
    assert record["state"] == record["endReason"] == "transferred"
    # The message is said to its end first; then the transfer, marking the new leg as ours.
    names = [c.name for c in call.commands if c.accepted]
    assert names[-2:] == ["speak", "transfer"] and commands(call, "speak")[-1]["payload"] == "Putting you through"
    assert "call.speak.ended" in call.event_types
    [body] = commands(call, "transfer")
    assert body["to"] == ALLOWED and body["timeout_secs"] == 30
    assert base64.b64decode(body["target_leg_client_state"]).decode() == f"transfer:{call_id}"
    [leg] = call.transfers
    assert leg.answered and leg.bridged_with is call and call.alive  # Telnyx bridged them; we left


def test_transfer_without_a_message(env: Env) -> None:
    d = env.d
    call_id, call = env.call()
    d.wait_state(call_id, "listening")
    assert d.rpc("voicecall.transfer", {"callId": call_id, "to": ALLOWED}, timeout=30)["endReason"] == "transferred"
    assert [c.name for c in call.commands if c.accepted][-1] == "transfer"


def test_transfer_to_a_number_not_allowed_asks_nothing_of_telnyx(env: Env) -> None:
    d, fake = env.d, env.fake
    call_id, call = env.call()
    d.wait_state(call_id, "listening")
    before = asked(fake, call, "transfer") + asked(fake, call, "speak")
    with pytest.raises(RpcError) as info:
        d.rpc("voicecall.transfer", {"callId": call_id, "to": OTHER, "message": "bye"})
    assert info.value.code == INVALID_PARAMS and "transfer.allowTo" in info.value.message
    assert asked(fake, call, "transfer") + asked(fake, call, "speak") == before and call.transfers == []


def test_failed_transfer_leaves_the_call_up(env: Env) -> None:
    d, fake = env.d, env.fake
    call_id, call = env.call()
    d.wait_state(call_id, "listening")
    with pytest.raises(RpcError) as info:
        d.rpc("voicecall.transfer", {"callId": call_id, "to": BUSY, "message": "One moment"}, timeout=30)
    assert info.value.code == PROVIDER_ERROR and "busy" in info.value.message
    [leg] = call.transfers
    assert leg.hangup_cause == "user_busy" and call.alive
    record = d.rpc("voicecall.status", {"callId": call_id})
    assert record["state"] == "listening" and record["endReason"] is None
    d.rpc("voicecall.speak", {"callId": call_id, "message": "Still here"})
    fake.wait_for(lambda: "Still here" in call.said)


def test_a_transfer_telnyx_refuses_leaves_the_call_up(env: Env) -> None:
    d, fake = env.d, env.fake
    call_id, call = env.call()
    d.wait_state(call_id, "listening")
    fake.fail_next(status=422, code="90034", detail="Transfer destination not allowed.", path_contains="/transfer")
    with pytest.raises(RpcError) as info:
        d.rpc("voicecall.transfer", {"callId": call_id, "to": ALLOWED}, timeout=30)
    assert info.value.code == PROVIDER_ERROR and "Transfer destination not allowed" in info.value.message
    assert call.transfers == [] and d.rpc("voicecall.status", {"callId": call_id})["state"] == "listening"
    # Nothing is left over: the next transfer goes through.
    assert d.rpc("voicecall.transfer", {"callId": call_id, "to": ALLOWED}, timeout=30)["endReason"] == "transferred"


# --- recording ---------------------------------------------------------------------------------


def test_recording_starts_on_answer_and_is_reported_by_a_signed_webhook(env: Env) -> None:
    d = env.d
    events = Events(d)
    try:
        call_id, call = env.call(mode="notify", record=True)
        d.wait_state(call_id, "completed")
        recorded = events.wait("call.recording")
    finally:
        events.close()
    assert commands(call, "record_start") == [{"channels": "dual", "format": "mp3"}]
    # Recording first, then the announcement, then the message.
    assert [c.name for c in call.commands if c.accepted][:3] == ["record_start", "speak", "speak"]
    assert [c["payload"] for c in commands(call, "speak")] == ["This call is recorded.", "Hello from the bot"]
    [saved] = call.recordings
    entry = {"url": saved["recording_urls"]["mp3"], "durationSec": 0, "channels": "dual"}
    assert recorded[0]["callId"] == call_id and recorded[0]["data"] == entry
    record = d.wait(lambda: (r := d.rpc("voicecall.status", {"callId": call_id}))["recordings"] and r)
    assert record["recordings"] == [entry]
    assert [t["text"] for t in record["transcript"]] == ["This call is recorded.", "Hello from the bot"]


def test_a_forged_recording_webhook_is_refused_and_changes_nothing(env: Env) -> None:
    d, fake = env.d, env.fake
    call_id, call = env.call(mode="notify")
    d.wait_state(call_id, "completed")
    payload = {"channels": "single", "recording_urls": {"mp3": "https://evil.example.com/r.mp3"},
               "recording_started_at": "2026-01-01T00:00:00Z", "recording_ended_at": "2026-01-01T00:00:09Z"}
    for fault in ("bad_signature", "wrong_key", "stale_timestamp", "missing_signature"):
        forged = fake.send_forged_webhook(call.call_control_id, "call.recording.saved", fault, **payload)
        assert forged.status == 401
    record = d.rpc("voicecall.status", {"callId": call_id})
    assert record["recordings"] == [] and record["record"] is False and commands(call, "record_start") == []
    # Signed, the same report is taken: what was refused was the signature.
    body = json.dumps({"data": {"event_type": "call.recording.saved", "id": "9b4f6e0e-0000-4000-8000-000000000001",
                                "payload": {**call.base_payload(), **payload}}}).encode()
    headers = {"Content-Type": "application/json", **_telnyx_wire.signature_headers(fake.signing_key, body)}
    assert requests.post(env.webhook, data=body, headers=headers, timeout=5).status_code == 200
    d.wait(lambda: d.rpc("voicecall.status", {"callId": call_id})["recordings"] == [
        {"url": "https://evil.example.com/r.mp3", "durationSec": 9, "channels": "mono"}])
