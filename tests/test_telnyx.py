"""End-to-end: the real voicecalld on provider telnyx against the fake
Telnyx Call Control service. Only base URLs and the public key differ from
production; the fake signs its webhooks with its own Ed25519 key."""

from __future__ import annotations

import base64
import json
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from daemon import Daemon, merge

from voicecalld.control.client import RpcError
from voicecalld.testing import _telnyx_wire
from voicecalld.testing.fake_telnyx import FakeCall, FakeTelnyx
from voicecalld.testing.ports import free_port

OURS = "+15550009999"      # fromNumber: the daemon's number
CALLEE = "+15550001111"    # FAST_MOCK's toNumber
CALLER = "+15557770000"    # an inbound caller
STATE_ORDER = ["initiated", "ringing", "answered", "active", "speaking", "listening"]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def fake() -> Iterator[FakeTelnyx]:
    with FakeTelnyx(seed=11, ms_per_char=2.0, answer_after=0.03, amd_delay=0.03,
                    webhook_retry_delays=(0.05, 0.05, 0.05)) as instance:
        yield instance


StartTelnyx = Callable[..., Daemon]


@pytest.fixture
def telnyx(fake: FakeTelnyx, start_daemon: Any) -> StartTelnyx:
    """Start a daemon on provider telnyx wired to ``fake``. (``fake`` is set
    up first, so it is torn down after the daemon has hung up its calls.)"""

    def start(extra: dict[str, Any] | None = None, **kwargs: Any) -> Daemon:
        port = free_port()
        config = merge({
            "provider": "telnyx", "fromNumber": OURS, "publicUrl": f"http://127.0.0.1:{port}",
            "serve": {"port": port},
            "telnyx": {"apiKey": fake.api_key, "connectionId": fake.connection_id,
                       "publicKey": fake.public_key_b64, "apiBaseUrl": fake.base_url},
            # Calls are placed back to back here; dial pacing has tests of its own (test_dialer.py).
            "outbound": {"notifyHangupDelaySec": 0.05, "dialsPerSecond": 1000},
        }, extra or {})
        d = start_daemon(config, **kwargs)
        d.url = f"http://127.0.0.1:{port}/voice/webhook"  # type: ignore[attr-defined]
        return d

    return start


def dial(fake: FakeTelnyx, d: Daemon, message: str = "Hello from the bot", mode: str = "notify",
         to: str = CALLEE) -> tuple[str, FakeCall]:
    call_id = d.rpc("voicecall.initiate", {"message": message, "mode": mode, "to": to})["callId"]
    call = fake.wait_for(lambda: next((c for c in list(fake.calls.values())
                                       if c.client_state == b64(call_id)), None), what="the dial")
    return call_id, call


def listening(fake: FakeTelnyx, d: Daemon, call_id: str, call: FakeCall) -> dict[str, Any]:
    """The call is listening and Telnyx transcribes it (the state changes
    before transcription_start has been sent)."""
    record = d.wait_state(call_id, "listening")
    fake.wait_for(lambda: call.transcribing, what="transcription to start")
    return record


def commands(call: FakeCall, name: str) -> list[dict[str, Any]]:
    return [c.params for c in call.commands if c.name == name and c.accepted]


def rest(fake: FakeTelnyx, path_part: str) -> list[Any]:
    return [r for r in list(fake.requests) if path_part in r.path]


def post_signed(fake: FakeTelnyx, url: str, body: bytes) -> requests.Response:
    headers = {"Content-Type": "application/json",
               **_telnyx_wire.signature_headers(fake.signing_key, body)}
    return requests.post(url, data=body, headers=headers, timeout=5)


class Events:
    """events.subscribe on its own connection, collected on a thread."""

    def __init__(self, d: Daemon, call_id: str | None = None) -> None:
        self.items: list[dict[str, Any]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(d.socket_path)
        params = {"callId": call_id} if call_id else {}
        self._sock.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "events.subscribe",
                                       "params": params}).encode() + b"\n")
        self._file = self._sock.makefile("rb")
        assert json.loads(self._file.readline())["result"] == {"subscribed": True}
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for line in self._file:
                message = json.loads(line)
                if message.get("method") == "event":
                    self.items.append(message["params"])
        except (OSError, ValueError):
            return  # closed

    def states(self) -> list[str]:
        return [e["data"]["to"] for e in list(self.items) if e["event"] == "call.state"]

    def close(self) -> None:
        self._sock.shutdown(socket.SHUT_RDWR)  # wakes the reader
        self._thread.join(5)
        self._file.close()
        self._sock.close()


def assert_monotone(states: list[str]) -> None:
    """Live states never go backwards (speaking <-> listening may alternate)."""
    rank = {s: i for i, s in enumerate(STATE_ORDER)}
    rank["listening"] = rank["speaking"]
    live = [rank[s] for s in states if s in rank]
    assert live == sorted(live), states


# -- outbound ----------------------------------------------------------------------------


def test_notify_call_dials_speaks_and_hangs_up_after_the_speech_ended(fake: FakeTelnyx,
                                                                      telnyx: StartTelnyx) -> None:
    d = telnyx({"ringTimeoutMs": 12000, "maxDurationSeconds": 120, "outbound": {"notifyHangupDelaySec": 0.3}})
    call_id, call = dial(fake, d, "Your build failed")
    final = d.wait_state(call_id, "completed", "failed", "error", "hangup-user")
    assert final["endReason"] == "completed" and final["providerCallId"] == call.call_control_id
    assert [t["text"] for t in final["transcript"]] == ["Your build failed"]

    [dial_request] = rest(fake, "/v2/calls")[:1]
    assert dial_request.headers["Authorization"] == f"Bearer {fake.api_key}"
    body = dial_request.json
    assert body["connection_id"] == fake.connection_id and body["to"] == CALLEE and body["from"] == OURS
    assert body["webhook_url"] == d.url  # type: ignore[attr-defined]
    assert base64.b64decode(body["client_state"]).decode() == call_id
    assert body["timeout_secs"] == 12
    assert "answering_machine_detection" not in body
    uuid.UUID(body["command_id"])

    [speak] = commands(call, "speak")
    assert speak["payload"] == "Your build failed" and speak["voice"] == "female"
    assert speak["language"] == "en-US" and speak["service_level"] == "basic"
    assert call.command_names == ["speak", "hangup"] and call.said == ["Your build failed"]
    # The hang-up waits notifyHangupDelaySec after the speech *ended*.
    ended = fake.wait_event(call.call_control_id, "call.speak.ended", ok=True)
    hangup = next(c for c in call.commands if c.name == "hangup")
    assert hangup.at - ended.sent_at >= 0.3
    ids = [r.json["command_id"] for r in fake.requests if isinstance(r.json, dict)]
    assert len(ids) == len(set(ids)) == 3  # dial, speak, hangup: each fresh


def test_conversation_listens_with_transcription_and_continue_gets_the_final_transcript(
        fake: FakeTelnyx, telnyx: StartTelnyx) -> None:
    d = telnyx({"telnyx": {"voice": "AWS.Polly.Joanna-Neural", "language": "en-GB"}})
    call_id, call = dial(fake, d, "Hi, it's the release bot", mode="conversation")
    events = Events(d, call_id)
    try:
        listening(fake, d, call_id, call)
        [start] = commands(call, "transcription_start")
        assert start["transcription_tracks"] == "inbound"
        speak = commands(call, "speak")[0]
        assert speak["voice"] == "AWS.Polly.Joanna-Neural" and "service_level" not in speak

        replies = ["yes ship version two now", "no that is all thanks"]
        for turn, reply in enumerate(replies, start=1):
            result: dict[str, Any] = {}
            params = {"callId": call_id, "message": f"Question {turn}?"}
            worker = threading.Thread(target=lambda out=result, p=params: out.update(
                d.rpc("voicecall.continue", p, timeout=15)))
            worker.start()
            fake.wait_event(call.call_control_id, "call.speak.ended", nth=turn + 1, ok=True)
            assert fake.callee_says(call.call_control_id, reply, confidence=0.87)
            worker.join(15)
            # Interim results ("yes ship") never complete a turn.
            assert result == {"callId": call_id, "transcript": reply}
        assert len(commands(call, "transcription_start")) == 1  # kept running across turns

        assert fake.callee_presses(call.call_control_id, "42")
        d.wait(lambda: [e["data"]["digits"] for e in list(events.items) if e["event"] == "call.dtmf"]
               == ["4", "2"], what="dtmf events")
        out = d.rpc("voicecall.end", {"callId": call_id})
        assert out == {"callId": call_id, "ok": True, "endReason": "hangup-bot"}
        record = d.wait_state(call_id, "hangup-bot")
        users = [t for t in record["transcript"] if t["speaker"] == "user"]
        assert [t["text"] for t in users] == replies and all(t["confidence"] == 0.87 for t in users)
        partials = [e["data"]["text"] for e in list(events.items)
                    if e["event"] == "call.transcript" and not e["data"]["isFinal"]]
        assert "yes ship" in partials  # interims are published as partial speech
        assert_monotone(events.states())
    finally:
        events.close()
    assert call.hangup_cause == "normal_clearing"


def test_callee_hanging_up_ends_a_conversation_as_hangup_user(fake: FakeTelnyx, telnyx: StartTelnyx) -> None:
    d = telnyx()
    call_id, call = dial(fake, d, "Are you there?", mode="conversation")
    listening(fake, d, call_id, call)
    # The callee hangs up; before its webhook arrives, the bot speaks. Telnyx
    # answers 422/90018, which is the race it is, not an error of the call.
    fake.timing.webhook_latency = 0.3
    assert fake.callee_hangs_up(call.call_control_id)
    assert d.rpc("voicecall.speak", {"callId": call_id, "message": "Still there?"})["ok"]
    record = d.wait_state(call_id, "hangup-user", "error")
    assert record["endReason"] == "hangup-user" and record["error"] is None
    last = rest(fake, "/actions/speak")[-1]
    assert last.status == 422 and last.response["errors"][0]["code"] == "90018"


def test_unanswered_outcomes(fake: FakeTelnyx, telnyx: StartTelnyx) -> None:
    outcomes = {"+15550002001": ("busy", "busy"), "+15550002002": ("reject", "busy"),
                "+15550002003": ("not_found", "failed"), "+15550002004": ("no_answer", "no-answer")}
    d = telnyx({"ringTimeoutMs": 400, "maxConcurrentCalls": len(outcomes)})
    calls = {}
    for number, (behaviour, _) in outcomes.items():
        fake.set_callee(number, behaviour)
        calls[number] = dial(fake, d, to=number)
    for number, (behaviour, reason) in outcomes.items():
        call_id, call = calls[number]
        assert d.wait_state(call_id, reason)["endReason"] == reason, behaviour
    # No answer: our ring timer fired first (Telnyx's minimum timeout_secs is
    # 5), so we cancelled the call.
    no_answer = calls["+15550002004"][1]
    fake.wait_for(lambda: no_answer.hangup_cause == "originator_cancel")
    assert all(r.json["timeout_secs"] == 5 for r in rest(fake, "/v2/calls") if r.method == "POST"
               and r.path == "/v2/calls")


def test_machine_detection_ends_the_call_as_voicemail(fake: FakeTelnyx, telnyx: StartTelnyx) -> None:
    d = telnyx({"telnyx": {"machineDetection": True}})
    fake.set_callee(CALLEE, "machine")
    call_id, call = dial(fake, d, "A long message for a person " * 4)
    assert d.wait_state(call_id, "voicemail")["endReason"] == "voicemail"
    assert rest(fake, "/v2/calls")[0].json["answering_machine_detection"] == "detect"
    assert "hangup" in call.command_names


# -- inbound -------------------------------------------------------------------------------


def test_inbound_allowed_caller_is_answered_greeted_and_heard(fake: FakeTelnyx, telnyx: StartTelnyx) -> None:
    d = telnyx({"inboundPolicy": "allowlist", "allowFrom": [CALLER], "inboundGreeting": "Hello caller"})
    ccid = fake.inbound_call(CALLER, OURS, d.url)  # type: ignore[attr-defined]
    call = fake.calls[ccid]
    [record] = d.wait(lambda: d.rpc("voicecall.list")["calls"], what="the inbound call")
    call_id = record["callId"]
    record = listening(fake, d, call_id, call)
    assert record["direction"] == "inbound" and record["from"] == CALLER and record["to"] == OURS
    assert record["providerCallId"] == ccid
    [answer] = commands(call, "answer")
    assert base64.b64decode(answer["client_state"]).decode() == call_id  # later webhooks name our call
    assert call.said == ["Hello caller"] and call.transcribing
    assert fake.callee_says(ccid, "what is the weather")
    d.wait(lambda: any(t["text"] == "what is the weather"
                       for t in d.rpc("voicecall.status", {"callId": call_id})["transcript"]),
           what="the caller's words in the transcript")
    assert fake.callee_hangs_up(ccid)
    assert d.wait_state(call_id, "hangup-user")["endReason"] == "hangup-user"


def test_inbound_caller_not_allowed_is_hung_up_exactly_once(fake: FakeTelnyx, telnyx: StartTelnyx) -> None:
    d = telnyx({"inboundPolicy": "allowlist", "allowFrom": ["+15551112222"]})
    fake.inject_webhook_fault("duplicate", event_type="call.initiated")
    ccid = fake.inbound_call(CALLER, OURS, d.url)  # type: ignore[attr-defined]
    call = fake.calls[ccid]
    fake.wait_event(ccid, "call.hangup", ok=True)
    # Once every webhook the daemon took is processed, a (wrong) second
    # hang-up or answer would have been sent.
    d.wait(lambda: (c := d.rpc("daemon.status")["carrier"])["processedEvents"] == c["acceptedEvents"],
           what="the webhooks to be processed")
    deliveries = [w for w in call.webhooks if w.event_type == "call.initiated"]
    assert len(deliveries) == 2 and all(w.ok for w in deliveries)  # the duplicate did arrive
    assert [c.name for c in call.commands] == ["hangup"]
    assert call.hangup_cause == "normal_clearing" and not call.answered
    [record] = d.rpc("voicecall.history", {"limit": 5})["calls"]
    assert record["direction"] == "inbound" and record["state"] == "hangup-bot"
    assert record["error"] == "rejected: caller is not on the allowlist"
    assert d.rpc("voicecall.list") == {"calls": []}


# -- webhook security --------------------------------------------------------------------


def test_forged_stale_and_unsigned_webhooks_get_401_and_change_nothing(fake: FakeTelnyx,
                                                                       telnyx: StartTelnyx) -> None:
    d = telnyx()
    call_id, call = dial(fake, d, "Hello", mode="conversation")
    d.wait_state(call_id, "listening")
    before = d.rpc("voicecall.status", {"callId": call_id})
    for fault in sorted(_telnyx_wire.SIGNATURE_FAULTS):
        hangup = fake.send_forged_webhook(call.call_control_id, "call.hangup", fault)
        speech = fake.send_forged_webhook(call.call_control_id, "call.transcription", fault,
                                          transcription_data={"transcript": "forged words", "is_final": True,
                                                              "confidence": 1.0})
        assert (fault, hangup.status, speech.status) == (fault, 401, 401)
    assert d.rpc("voicecall.status", {"callId": call_id}) == before
    assert "rejected a Telnyx webhook" in d.log() and "possible replay" in d.log()
    assert d.rpc("voicecall.end", {"callId": call_id})["endReason"] == "hangup-bot"


def test_a_rejected_delivery_is_processed_when_telnyx_retries_it(fake: FakeTelnyx, telnyx: StartTelnyx) -> None:
    d = telnyx({"telnyx": {"publicKey": fake.public_key_pem}})  # the PEM form of the key works too
    fake.inject_webhook_fault("bad_signature", event_type="call.answered")
    call_id, call = dial(fake, d)
    assert d.wait_state(call_id, "completed")["endReason"] == "completed"
    answered = [(w.attempt, w.status) for w in call.webhooks if w.event_type == "call.answered"]
    assert answered == [(1, 401), (2, 200)]
    assert call.said == ["Hello from the bot"]


def test_skip_signature_verification_accepts_unsigned_webhooks(fake: FakeTelnyx, telnyx: StartTelnyx) -> None:
    d = telnyx({"skipSignatureVerification": True, "telnyx": {"publicKey": ""}})
    call_id, call = dial(fake, d, "Hello", mode="conversation")
    d.wait_state(call_id, "listening")
    unsigned = fake.send_forged_webhook(call.call_control_id, "call.hangup", "missing_headers")
    assert unsigned.status == 200
    assert d.wait_state(call_id, "hangup-user")["endReason"] == "hangup-user"


def test_malformed_and_unknown_webhooks(fake: FakeTelnyx, telnyx: StartTelnyx) -> None:
    d = telnyx()
    url = d.url  # type: ignore[attr-defined]
    for body in (b"not json", b"[]", b'{"data": {"event_type": "call.hangup"}}',
                 b'{"data": {"event_type": "call.hangup", "id": "x", "payload": []}}'):
        response = post_signed(fake, url, body)
        assert response.status_code == 400 and "not a Telnyx webhook" in response.json()["error"], body
    unknown_call = json.dumps({"data": {"record_type": "event", "event_type": "call.hangup", "id": str(uuid.uuid4()),
                                        "payload": {"call_control_id": "v3:nobody", "client_state": "%%%",
                                                    "hangup_cause": "normal_clearing"}}}).encode()
    assert post_signed(fake, url, unknown_call).status_code == 200
    unknown_type = json.dumps({"data": {"event_type": "call.bridged", "id": str(uuid.uuid4()),
                                        "payload": {"call_control_id": "v3:nobody"}}},
                              separators=(",", ":")).encode()
    assert post_signed(fake, url, unknown_type).status_code == 200
    # Signed over other bytes (re-serialized JSON) fails: the raw body is what counts.
    doc = json.loads(unknown_type)
    headers = _telnyx_wire.signature_headers(fake.signing_key, unknown_type)
    resent = requests.post(url, data=json.dumps(doc).encode(), headers=headers, timeout=5)
    assert resent.status_code == 401
    call_id, _ = dial(fake, d)
    assert d.wait_state(call_id, "completed")["endReason"] == "completed"  # still working


def signed_event(fake: FakeTelnyx, url: str, event_type: str, payload: dict[str, Any]) -> int:
    body = json.dumps({"data": {"record_type": "event", "event_type": event_type, "id": str(uuid.uuid4()),
                                "occurred_at": "2024-01-01T00:00:00Z", "payload": payload},
                       "meta": {"attempt": 1, "delivered_to": url}}, separators=(",", ":")).encode()
    return post_signed(fake, url, body).status_code


def test_events_without_a_usable_client_state_find_the_call_by_call_control_id(
        fake: FakeTelnyx, telnyx: StartTelnyx) -> None:
    d = telnyx()
    url = d.url  # type: ignore[attr-defined]
    call_id, call = dial(fake, d, "Hello", mode="conversation")
    listening(fake, d, call_id, call)
    ccid = call.call_control_id
    speech = {"transcript": "routed by id", "is_final": True, "confidence": 0.5,
              "transcription_track": "inbound"}
    assert signed_event(fake, url, "call.transcription", {"call_control_id": ccid, "client_state": None,
                                                          "transcription_data": speech}) == 200
    d.wait(lambda: d.rpc("voicecall.status", {"callId": call_id})["transcript"][-1]["text"] == "routed by id",
           what="the transcript")
    assert signed_event(fake, url, "call.hangup", {
        "call_control_id": ccid, "client_state": "not base64!", "direction": "outgoing",
        "hangup_cause": "normal_clearing", "hangup_source": "callee"}) == 200
    assert d.wait_state(call_id, "hangup-user")["endReason"] == "hangup-user"


# -- duplicates, reordering, failures ------------------------------------------------------


def test_duplicate_events_are_processed_once(fake: FakeTelnyx, telnyx: StartTelnyx) -> None:
    d = telnyx()
    for event_type in ("call.answered", "call.speak.started", "call.speak.ended", "call.transcription"):
        fake.inject_webhook_fault("duplicate", event_type=event_type, count=10)
    call_id, call = dial(fake, d, "First", mode="conversation")
    listening(fake, d, call_id, call)
    d.rpc("voicecall.speak", {"callId": call_id, "message": "Second"})
    d.rpc("voicecall.speak", {"callId": call_id, "message": "Third"})
    fake.wait_event(call.call_control_id, "call.speak.ended", nth=3, ok=True)
    assert fake.callee_says(call.call_control_id, "one two three")
    fake.wait_event(call.call_control_id, "call.transcription", nth=3, ok=True)
    record = d.wait(lambda: (r := d.rpc("voicecall.status", {"callId": call_id}))["state"] == "listening"
                    and any(t["speaker"] == "user" for t in r["transcript"]) and r, what="the reply")
    assert [t["text"] for t in record["transcript"]] == ["First", "Second", "Third", "one two three"]
    assert call.said == ["First", "Second", "Third"]  # the duplicate answer did not greet twice
    dupes = fake.wait_for(lambda: all(w.finished for w in call.webhooks)
                          and [w for w in call.webhooks if w.fault == "duplicate"])
    assert len(dupes) >= 7 and all(w.ok for w in dupes)


def test_reordered_events_never_move_a_call_backwards(fake: FakeTelnyx, telnyx: StartTelnyx) -> None:
    d = telnyx()
    fake.deliver_after("call.initiated", "call.answered")
    fake.deliver_after("call.speak.started", "call.speak.ended")
    events = Events(d)
    try:
        call_id, call = dial(fake, d, "Reordered", mode="conversation")
        listening(fake, d, call_id, call)
        fake.wait_event(call.call_control_id, "call.speak.started", ok=True)
        assert call.event_types[:4] == ["call.answered", "call.initiated", "call.speak.ended",
                                        "call.speak.started"]
        # The callee's reply is processed after the late events (one call's
        # events run in order), so once it is in, they have been handled.
        assert fake.callee_says(call.call_control_id, "hello back")
        record = d.wait(lambda: (r := d.rpc("voicecall.status", {"callId": call_id}))["transcript"][-1]["text"]
                        == "hello back" and r, what="the reply")
        assert record["state"] == "listening"  # the late speak.started did not make it "speaking"
        d.rpc("voicecall.end", {"callId": call_id})
        d.wait_state(call_id, "hangup-bot")
        states = events.states()
        assert "ringing" not in states  # initiated arrived after answered: ignored
        assert_monotone(states)
        assert states[-1] == "hangup-bot"
    finally:
        events.close()


def test_hanging_up_a_call_that_already_ended_is_success(fake: FakeTelnyx, telnyx: StartTelnyx) -> None:
    d = telnyx()
    call_id, call = dial(fake, d, "Hello", mode="conversation")
    listening(fake, d, call_id, call)
    fake.inject_webhook_fault("drop", event_type="call.hangup")
    assert fake.callee_hangs_up(call.call_control_id)  # the daemon never hears of it
    fake.wait_for(lambda: ("call.hangup", call.call_control_id) in fake.dropped_webhooks, what="the drop")
    assert d.rpc("voicecall.status", {"callId": call_id})["state"] == "listening"
    assert d.rpc("voicecall.end", {"callId": call_id})["endReason"] == "hangup-bot"
    last = rest(fake, "/actions/hangup")[-1]
    assert last.status == 422 and last.response["errors"][0]["code"] == "90018"
    assert d.wait_state(call_id, "hangup-bot")["error"] is None


def test_a_failed_command_is_retried_with_the_same_command_id(fake: FakeTelnyx, telnyx: StartTelnyx) -> None:
    d = telnyx()
    fake.fail_next(1, status=500, path_contains="/v2/calls")  # the dial
    fake.fail_next(1, status=503, path_contains="/actions/speak")
    call_id, call = dial(fake, d)
    assert d.wait_state(call_id, "completed")["endReason"] == "completed"
    dials = [r for r in rest(fake, "/v2/calls") if r.path == "/v2/calls"]
    assert [r.status for r in dials] == [500, 200] and len(fake.calls) == 1
    assert dials[0].json["command_id"] == dials[1].json["command_id"]
    speaks = rest(fake, "/actions/speak")
    assert [r.status for r in speaks] == [503, 200]
    assert speaks[0].json["command_id"] == speaks[1].json["command_id"]
    assert call.said == ["Hello from the bot"]


def test_webhooks_are_acknowledged_while_the_telnyx_api_is_slow(fake: FakeTelnyx, telnyx: StartTelnyx) -> None:
    d = telnyx()
    events = Events(d)
    try:
        fake.timing.rest_latency = 1.0  # every REST request takes a second
        call_id, call = dial(fake, d, "Hello", mode="conversation")
        ccid = call.call_control_id
        # call.answered made the daemon send speak from the call's worker ...
        speak = fake.wait_for(lambda: next((r for r in list(fake.requests) if r.path.endswith("/actions/speak")),
                                           None), timeout=5)
        # ... and while that request is in flight, the next webhook is acknowledged at once.
        assert fake.callee_presses(ccid, "5")
        dtmf = fake.wait_event(ccid, "call.dtmf.received", ok=True)
        assert dtmf.ok and speak.status is None
        # It is processed after the speak returned: one call's events stay in order.
        d.wait(lambda: any(e["event"] == "call.dtmf" for e in list(events.items)), what="the dtmf event")
        assert speak.status == 200
    finally:
        events.close()
        fake.timing.rest_latency = 0.0


def test_telnyx_errors_become_provider_errors_a_person_can_act_on(fake: FakeTelnyx, telnyx: StartTelnyx) -> None:
    d = telnyx()
    fake.fail_next(1, status=422, code="10016", detail="The 'to' number is not reachable.",
                   path_contains="/v2/calls")
    with pytest.raises(RpcError) as info:
        d.rpc("voicecall.initiate", {"message": "hi", "to": CALLEE})
    assert info.value.code == -32003
    assert info.value.message == ("Telnyx refused to place the call (HTTP 422, code 10016): Request failed: "
                                  "The 'to' number is not reachable. Numbers must be E.164 like +15550001234; "
                                  "check fromNumber and the destination.")
    assert info.value.data == {"providerCode": "10016", "httpStatus": 422}
    [failed] = d.rpc("voicecall.history", {"limit": 5})["calls"]
    assert failed["state"] == "failed" and "10016" in failed["error"]

    # A wrong API key, applied by SIGHUP (telnyx.apiKey is read at use time).
    config = merge(d.config, {"telnyx": {"apiKey": "KEYwrong"}})
    d.write_config(config)
    ready = d.notify.lines().count("READY=1")
    d.signal(signal.SIGHUP)
    d.wait(lambda: d.notify.lines().count("READY=1") > ready, what="the reload")
    with pytest.raises(RpcError) as info:
        d.rpc("voicecall.initiate", {"message": "hi", "to": CALLEE})
    assert "HTTP 401, code 10009" in info.value.message and "Check telnyx.apiKey" in info.value.message
    assert "KEYwrong" not in d.log()


def test_call_status_asks_telnyx(fake: FakeTelnyx) -> None:
    """Restart recovery: the provider reads GET /v2/calls/{call_control_id}."""
    from types import SimpleNamespace

    from voicecalld import config as C
    from voicecalld.calls import CallRecord, Direction, Mode, State
    from voicecalld.providers.telnyx import TelnyxProvider

    cfg = C.from_mapping({"provider": "telnyx", "fromNumber": OURS, "publicUrl": "http://127.0.0.1:9",
                          "telnyx": {"apiKey": fake.api_key, "connectionId": fake.connection_id,
                                     "publicKey": fake.public_key_b64, "apiBaseUrl": fake.base_url}}, {})
    provider = TelnyxProvider(cfg)
    provider.bind(SimpleNamespace(config=cfg))  # type: ignore[arg-type]
    try:
        ccid = fake.inbound_call(CALLER, OURS, f"http://127.0.0.1:{free_port()}/")
        record = CallRecord(callId=str(uuid.uuid4()), provider="telnyx", direction=Direction.INBOUND,
                            mode=Mode.CONVERSATION, to=OURS, from_=CALLER, providerCallId=ccid)
        status = provider.call_status(record)
        assert status is not None and status.live and not status.answered
        assert fake.callee_hangs_up(ccid)
        status = provider.call_status(record)
        assert status is not None and not status.live and status.reason == State.COMPLETED
        record.providerCallId = "v3:unknown"
        status = provider.call_status(record)
        assert status is not None and not status.live
        record.providerCallId = None
        assert provider.call_status(record) is None
    finally:
        provider.stop()


def test_goodbye_from_the_responder_stops_transcription_then_hangs_up(fake: FakeTelnyx, telnyx: StartTelnyx) -> None:
    from voicecalld.testing.fake_openai import FakeOpenAI

    with FakeOpenAI(api_key="sk-test") as llm:
        llm.chat_replies.put({"content": "Goodbye!", "tool_call": {"name": "hang_up", "arguments": {}}})
        d = telnyx({"responder": "llm", "responseBaseUrl": llm.base_url, "responseApiKey": "sk-test"})
        call_id, call = dial(fake, d, "Hi, anything else?", mode="conversation")
        listening(fake, d, call_id, call)
        fake.callee_says(call.call_control_id, "no thanks, bye")
        final = d.wait_state(call_id, "hangup-bot", timeout=15)
        names = [c.name for c in call.commands if c.accepted]
        stop = names.index("transcription_stop")
        assert names.index("transcription_start") < stop < names.index("hangup")
        assert final["transcript"][-1]["text"] == "Goodbye!"
        assert not call.transcribing
