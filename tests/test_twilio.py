"""End to end: the real voicecalld on the twilio provider against FakeTwilio.

The daemon runs as a subprocess; the fake is the Twilio REST API it calls
and the Twilio that calls its webhook back, with correctly signed requests
in Twilio's order. Requests the fake would never send (tampered, replayed,
unsigned) are crafted here and posted straight to the daemon's webhook.

Most tests share one daemon and one fake (module scope: a daemon takes about
a second to start and stop); each cleans up its calls. Tests that need a
different configuration start their own.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from daemon import Daemon, remove, short_tmp

from voicecalld.control.client import RpcError
from voicecalld.providers.twilio_signature import validate
from voicecalld.testing._twilio_signing import url_with_port
from voicecalld.testing.fake_twilio import Callee, FakeTwilio, StreamRequest
from voicecalld.testing.ports import free_port

FROM = "+15550001111"
TO = "+15550002222"
CALLER = "+15557770000"
HOSTILE = 'Tom & "Jerry" <Hangup/></Say><Play>http://evil/x</Play> ]]> \x00\x07 ok'


def new_fake() -> FakeTwilio:
    return FakeTwilio(time_scale=0.05, ms_per_char=1, owned_numbers=[FROM])


def twilio_config(fake: FakeTwilio, port: int, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "provider": "twilio", "fromNumber": FROM, "toNumber": TO,
        "publicUrl": f"http://127.0.0.1:{port}",
        "serve": {"port": port},
        "twilio": {"accountSid": fake.account_sid, "authToken": fake.auth_token, "apiBaseUrl": fake.base_url},
        # Calls are placed back to back here; dial pacing has tests of its own (test_dialer.py).
        "outbound": {"notifyHangupDelaySec": 2, "dialsPerSecond": 1000},
        "transcriptTimeoutMs": 5000,
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@dataclass
class Env:
    fake: FakeTwilio
    d: Daemon
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/voice/webhook"


@pytest.fixture(scope="module")
def shared() -> Iterator[Env]:
    with new_fake() as fake:
        port = free_port()
        tmp = short_tmp("twilio")
        d = Daemon(tmp, twilio_config(fake, port, maxConcurrentCalls=10, inboundPolicy="allowlist",
                                      allowFrom=[CALLER], inboundGreeting="Hi, this is Ada."))
        try:
            yield Env(fake, d, port)
        finally:
            code = d.stop()
            log = d.log_path.read_text(errors="replace")
            remove(tmp)
            assert code == 0, log


@pytest.fixture
def env(shared: Env) -> Iterator[Env]:
    yield shared
    shared.fake.ms_per_char = 1
    for call in shared.d.rpc("voicecall.list")["calls"]:
        shared.d.rpc("voicecall.end", {"callId": call["callId"]})


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with new_fake() as f:
        yield f


@pytest.fixture
def twilio_daemon(start_daemon, fake: FakeTwilio):
    """A daemon of its own, for tests that need another configuration."""
    def start(port: int | None = None, **extra: Any) -> Daemon:
        return start_daemon(twilio_config(fake, port or free_port(), **extra))
    return start


def creates(fake: FakeTwilio, call_id: str | None = None) -> list[Any]:
    return [r for r in fake.requests if r.method == "POST" and r.path.endswith("/Calls.json")
            and (call_id is None or query(dict(r.form).get("Url", "")).get("callId") == call_id)]


def updates(fake: FakeTwilio, sid: str) -> list[Any]:
    return [r for r in fake.requests if r.method == "POST" and r.path.endswith(f"/Calls/{sid}.json")]


def query(url: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}


def sid_of(fake: FakeTwilio, call_id: str) -> str:
    [create] = fake.wait_for(lambda: creates(fake, call_id))
    return str(create.response["sid"])


def store_lines(d: Daemon) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (d.store_dir / "calls.jsonl").read_text().splitlines() if line]


# --- outbound notify ---------------------------------------------------------------------------


def test_notify_call_end_to_end(env: Env) -> None:
    fake, d = env.fake, env.d
    code, out, err = d.ctl("call", "--to", TO, "--message", "Your build failed", "--mode", "notify")
    assert code == 0, err
    call_id = out["callId"]
    record = d.wait_state(call_id, "completed", timeout=10)
    assert record["endReason"] == "completed"

    # The create-call request, exactly as Twilio wants it.
    [create] = creates(fake, call_id)
    assert create.status == 201
    assert create.headers["Authorization"].startswith("Basic ")
    assert create.path == f"/2010-04-01/Accounts/{fake.account_sid}/Calls.json"
    assert create.values("To") == [TO] and create.values("From") == [FROM]
    assert create.values("Url") == [f"{env.base}?callId={call_id}"]
    assert create.values("Method") == ["POST"]
    assert create.values("StatusCallback") == [f"{env.base}?callId={call_id}&type=status"]
    assert create.values("StatusCallbackEvent") == ["initiated", "ringing", "answered", "completed"]
    assert create.values("Timeout") == ["30"]
    assert create.values("MachineDetection") == []
    sid = create.response["sid"]
    assert record["providerCallId"] == sid

    call = fake.wait_ended(sid)
    assert call.said == ["Your build failed"]
    # Say, then back to the webhook (which learns the message played), then
    # Pause notifyHangupDelaySec and Hangup: the TwiML hangs up, after the message.
    assert [el.tag for el in ET.fromstring(call.twiml[0])] == ["Say", "Redirect"]
    final = ET.fromstring(call.twiml[-1])
    assert [el.tag for el in final] == ["Pause", "Hangup"] and final[0].get("length") == "2"
    assert call.end_reason == "twiml-hangup" and not call.says[0].interrupted
    assert all(x.ok for x in call.deliveries), [(x.kind, x.status) for x in call.deliveries]
    assert {x.content_type for x in call.deliveries} == {"text/xml; charset=utf-8"}
    # Status callbacks are answered with an empty <Response/>.
    assert {ET.fromstring(x.body).tag for x in call.callbacks} == {"Response"}
    assert all(len(ET.fromstring(x.body)) == 0 for x in call.callbacks) and len(call.callbacks) == 4
    assert record["transcript"][0]["text"] == "Your build failed"


def test_hostile_text_is_escaped(env: Env) -> None:
    fake, d = env.fake, env.d
    call_id = d.rpc("voicecall.initiate", {"message": HOSTILE, "mode": "notify"})["callId"]
    assert d.wait_state(call_id, "completed", timeout=10)["endReason"] == "completed"
    call = fake.wait_ended(sid_of(fake, call_id))
    assert call.said == [HOSTILE.replace("\x00", "").replace("\x07", "")]
    assert call.played == [] and call.errors == []
    assert [el.tag for el in ET.fromstring(call.twiml[0])] == ["Say", "Redirect"]


# --- outbound conversation -----------------------------------------------------------------------


def continue_in_thread(d: Daemon, call_id: str, message: str) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = d.rpc("voicecall.continue", {"callId": call_id, "message": message}, timeout=20)
        except Exception as exc:  # noqa: BLE001 - the test thread reports it
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_conversation_end_to_end(env: Env) -> None:
    fake, d = env.fake, env.d
    call_id = d.rpc("voicecall.initiate", {"message": "Hi, it's the release bot", "mode": "conversation"})["callId"]
    d.wait_state(call_id, "listening")
    call = fake.calls[sid_of(fake, call_id)]
    assert call.said == ["Hi, it's the release bot"]

    thread, result = continue_in_thread(d, call_id, "Ship version 2?")
    fake.wait_for(lambda: "Ship version 2?" in call.said, message="the question to be said")
    fake.callee_says(call.sid, "Yes, ship it", confidence=0.87)
    thread.join(20)
    assert result.get("value") == {"callId": call_id, "transcript": "Yes, ship it"}, result

    # The question went out as a live-call update with TwiML: a speech
    # Gather around the Say, whose action carries the turn token.
    [update] = [u for u in updates(fake, call.sid) if u.values("Twiml")]
    doc = ET.fromstring(update.values("Twiml")[0])
    gather = doc.find("Gather")
    assert gather is not None and gather.get("input") == "speech"
    assert gather.findtext("Say") == "Ship version 2?"
    action = query(gather.get("action") or "")
    assert action["callId"] == call_id and action["type"] == "gather" and action["turn"]
    [heard] = fake.wait_for(lambda: call.gather_actions)
    assert heard.form["SpeechResult"] == "Yes, ship it"

    record = d.rpc("voicecall.status", {"callId": call_id})
    user = [t for t in record["transcript"] if t["speaker"] == "user"]
    assert user == [{"timestamp": user[0]["timestamp"], "speaker": "user", "text": "Yes, ship it",
                     "isFinal": True, "confidence": 0.87}]

    # Between turns the call stays open and keeps listening.
    time.sleep(0.8)
    assert not call.ended and fake.wait_listening(call.sid)

    assert d.rpc("voicecall.speak", {"callId": call_id, "message": "Shipping now."}) == \
        {"callId": call_id, "ok": True}
    fake.wait_for(lambda: "Shipping now." in call.said)
    assert d.rpc("voicecall.end", {"callId": call_id})["endReason"] == "hangup-bot"
    fake.wait_ended(call.sid)
    hangups = [u for u in updates(fake, call.sid) if u.values("Status")]
    assert [u.values("Status") for u in hangups] == [["completed"]]
    assert d.wait_state(call_id, "hangup-bot")["endReason"] == "hangup-bot"


def test_speech_queued_behind_playing_speech_is_not_cut_off(env: Env) -> None:
    fake, d = env.fake, env.d
    call_id = d.rpc("voicecall.initiate", {"message": "Hello there", "mode": "conversation"})["callId"]
    d.wait_state(call_id, "listening")
    call = fake.calls[sid_of(fake, call_id)]
    fake.ms_per_char = 5  # long enough that the second speak arrives mid-sentence
    first = "One moment while I look that up for you, it will not take long at all."
    d.rpc("voicecall.speak", {"callId": call_id, "message": first})
    d.rpc("voicecall.speak", {"callId": call_id, "message": "Found it."})
    fake.wait_for(lambda: "Found it." in call.said, timeout=5)
    assert call.said == ["Hello there", first, "Found it."]
    assert [s.interrupted for s in call.says] == [False, False, False]
    # One live update carried the first; the second waited for Twilio to come back.
    assert len([u for u in updates(fake, call.sid) if u.values("Twiml")]) == 1


def test_long_speech_goes_by_url_not_inline(env: Env) -> None:
    fake, d = env.fake, env.d
    call_id = d.rpc("voicecall.initiate", {"message": "Hi", "mode": "conversation"})["callId"]
    d.wait_state(call_id, "listening")
    call = fake.calls[sid_of(fake, call_id)]
    text = "R&D <" * 600  # 3000 characters, about 13000 once escaped
    d.rpc("voicecall.speak", {"callId": call_id, "message": text})
    fake.wait_for(lambda: len(call.said) == 2)
    assert call.said[1] == text.strip()
    [update] = [u for u in updates(fake, call.sid) if u.values("Url")]
    assert update.status == 200 and query(update.values("Url")[0])["type"] == "twiml"
    assert not [u for u in updates(fake, call.sid) if u.values("Twiml")]


# --- call outcomes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("callee", "mode", "state"), [
    (Callee(outcome="busy"), "conversation", "busy"),
    (Callee(outcome="no-answer"), "conversation", "no-answer"),
    (Callee(outcome="failed"), "notify", "failed"),
    (Callee(hangup_after=0.0), "conversation", "hangup-user"),
    # Hanging up during a notify message is not a delivery.
    (Callee(hangup_after=0.2), "notify", "hangup-user"),
])
def test_call_outcomes(env: Env, callee: Callee, mode: str, state: str) -> None:
    env.fake.ms_per_char = 20
    env.fake.next_callee(callee)
    call_id = env.d.rpc("voicecall.initiate", {"message": "A long enough message to hang up over",
                                               "mode": mode})["callId"]
    record = env.d.wait_state(call_id, state, timeout=10)
    assert record["endReason"] == state


def test_out_of_order_and_duplicate_callbacks(env: Env) -> None:
    fake, d = env.fake, env.d
    fake.delay_next_callback("ringing")  # ringing arrives after in-progress
    fake.duplicate_next_callback("in-progress")
    call_id = d.rpc("voicecall.initiate", {"message": "Hello", "mode": "notify"})["callId"]
    d.wait_state(call_id, "completed", timeout=10)
    call = fake.wait_ended(sid_of(fake, call_id))
    statuses = [dict(c.params)["CallStatus"] for c in call.callbacks]
    assert statuses.index("ringing") > statuses.index("in-progress")  # the faults happened
    assert statuses.count("in-progress") == 2
    order = ["initiated", "ringing", "answered", "active", "speaking", "completed"]
    states = [r["state"] for r in store_lines(d) if r["callId"] == call_id]
    ranks = [order.index(s) for s in states]
    assert ranks == sorted(ranks) and "ringing" not in states, states
    assert "repeated Twilio webhook answered from cache" in d.log()


def test_hanging_up_a_call_twilio_already_ended(env: Env) -> None:
    fake, d = env.fake, env.d
    call_id = d.rpc("voicecall.initiate", {"message": "Hi", "mode": "conversation"})["callId"]
    d.wait_state(call_id, "listening")
    call = fake.calls[sid_of(fake, call_id)]
    call.hang_up("lost", silent=True)  # over at Twilio, but no callback reaches the daemon
    with pytest.raises(RpcError) as info:
        d.rpc("voicecall.speak", {"callId": call_id, "message": "Are you there?"})
    assert info.value.code == -32002 and "already ended at Twilio" in info.value.message
    assert d.rpc("voicecall.end", {"callId": call_id}) == {"callId": call_id, "ok": True, "endReason": "hangup-bot"}
    [hangup] = [u for u in updates(fake, call.sid) if u.values("Status")]
    assert hangup.status == 400 and hangup.response["code"] == 21220
    # And Twilio asking about a call the daemon no longer runs is told to hang up.
    resp = post_signed(fake, f"{env.base}?callId={call_id}", voice_params(call.sid, status="in-progress"))
    assert resp.status_code == 200 and [el.tag for el in ET.fromstring(resp.text)] == ["Hangup"]
    resp = post_signed(fake, f"{env.base}?callId={call_id}&type=status", voice_params(call.sid, status="completed"))
    assert resp.status_code == 200 and len(ET.fromstring(resp.text)) == 0
    assert d.rpc("voicecall.status", {"callId": call_id})["endReason"] == "hangup-bot"


# --- provider errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "code", "words"), [
    ({"code": 21211}, 21211, "not a valid phone number"),
    ({"code": 21219}, 21219, "verify"),
    ({"code": 21215}, 21215, "Geo permissions"),
    ({"status": 500}, 20500, "Internal Server Error"),
])
def test_create_errors_are_surfaced_with_their_codes(env: Env, fault: dict[str, Any], code: int,
                                                     words: str) -> None:
    fake, d = env.fake, env.d
    before = len(creates(fake))
    fake.fail_next_creates(**fault)
    with pytest.raises(RpcError) as info:
        d.rpc("voicecall.initiate", {"message": "hi"})
    assert info.value.code == -32003
    assert info.value.data["providerCode"] == code and words in info.value.message
    assert f"Twilio error {code}" in info.value.message
    assert len(creates(fake)) == before + 1  # creating a call is never blindly retried
    record = d.rpc("voicecall.history")["calls"][-1]
    assert record["state"] == "failed" and str(code) in record["error"]


def test_rate_limited_create_is_retried(env: Env) -> None:
    fake, d = env.fake, env.d
    fake.fail_next_creates(status=429, retry_after=0)
    call_id = d.rpc("voicecall.initiate", {"message": "hi"})["callId"]
    d.wait_state(call_id, "completed", timeout=10)
    assert [c.status for c in creates(fake)[-2:]] == [429, 201]


def test_unverified_from_number(twilio_daemon) -> None:
    d = twilio_daemon(fromNumber="+15559990000")
    code, _, err = d.ctl("call", "--message", "hi")
    assert code == 1
    assert "21210" in err and "fromNumber +*******0000" in err and "verify" in err


def test_mock_methods_are_not_served_by_a_twilio_daemon(env: Env) -> None:
    for method, params in (("mock.say", {"callId": "x", "text": "hi"}), ("mock.inbound", {"from": CALLER})):
        with pytest.raises(RpcError) as info:
            env.d.rpc(method, params)
        assert info.value.code == -32601
        assert info.value.message == "mock methods only exist with provider = mock (this daemon uses twilio)"
    with pytest.raises(RpcError) as info:
        env.d.rpc("voicecall.stats", {})
    assert info.value.code == -32601 and "did you mean voicecall.status" in info.value.message


def test_bad_credentials(twilio_daemon) -> None:
    d = twilio_daemon(twilio={"authToken": "not-the-token"})
    with pytest.raises(RpcError) as info:
        d.rpc("voicecall.initiate", {"message": "hi"})
    assert info.value.data["providerCode"] == 20003 and "twilio.authToken" in info.value.message
    assert "not-the-token" not in d.log()


# --- inbound -----------------------------------------------------------------------------------------


def test_inbound_allowed_caller_converses(env: Env) -> None:
    fake, d = env.fake, env.d
    sid = fake.inbound_call(CALLER, FROM, env.base, env.base + "?type=status")
    fake.callee_says(sid, "Is the build green?")
    call_id = d.wait(lambda: [c["callId"] for c in d.rpc("voicecall.list")["calls"]
                              if c["providerCallId"] == sid], what="the inbound call")[0]
    record = d.rpc("voicecall.status", {"callId": call_id})
    assert record["direction"] == "inbound" and record["from"] == CALLER and record["to"] == FROM
    assert fake.calls[sid].said[0] == "Hi, this is Ada."
    d.wait(lambda: [t for t in d.rpc("voicecall.status", {"callId": call_id})["transcript"]
                    if t["speaker"] == "user"], what="the caller's words")
    fake.callee_hangs_up(sid)
    record = d.wait_state(call_id, "hangup-user")
    assert [t["text"] for t in record["transcript"]] == ["Hi, this is Ada.", "Is the build green?"]


def test_inbound_rejected_once_even_when_retried(env: Env) -> None:
    fake, d = env.fake, env.d
    sid = fake.inbound_call("+15550009999", FROM, env.base, env.base + "?type=status")
    call = fake.wait_ended(sid)
    assert [el.tag for el in ET.fromstring(call.twiml[0])] == ["Reject"] and call.said == []
    [voice] = [x for x in call.deliveries if x.kind == "voice"]
    # Twilio retrying (a new delivery of the same call, signed anew).
    resp = post_signed(fake, env.base, voice.params + [("CallToken", "retry")])
    assert resp.status_code == 200 and "<Reject" in resp.text
    # A verbatim replay.
    again = requests.post(voice.url, data=voice.params, headers=voice.headers, timeout=5)
    assert again.status_code == 200 and again.text == voice.body
    records = [r for r in d.rpc("voicecall.history", {"limit": 500})["calls"] if r["providerCallId"] == sid]
    assert len(records) == 1
    assert records[0]["direction"] == "inbound" and records[0]["endReason"] == "hangup-bot"
    assert records[0]["error"].startswith("rejected")


# --- signatures ------------------------------------------------------------------------------------


def post_signed(fake: FakeTwilio, url: str, params: list[tuple[str, str]], *, sign_url: str | None = None,
                token: str | None = None, headers: dict[str, str] | None = None) -> requests.Response:
    h = {"X-Twilio-Signature": fake.sign(sign_url or url, params),
         "I-Twilio-Idempotency-Token": token or str(uuid.uuid4()), **(headers or {})}
    return requests.post(url, data=params, headers=h, timeout=5)


def voice_params(sid: str, from_: str = CALLER, status: str = "ringing") -> list[tuple[str, str]]:
    return [("AccountSid", "AC" + "0" * 32), ("CallSid", sid), ("CallStatus", status), ("Direction", "inbound"),
            ("From", from_), ("To", FROM), ("ApiVersion", "2010-04-01")]


def test_signature_checks(twilio_daemon, fake: FakeTwilio) -> None:
    # The public URL is a proxy's https address; requests reach the daemon's
    # own port, as the proxy would forward them.
    port = free_port()
    d = twilio_daemon(publicUrl="https://voice.example.com", port=port)
    local = f"http://127.0.0.1:{port}/voice/webhook"
    public = "https://voice.example.com/voice/webhook"

    def sent(n: int, sign_url: str, **kw: Any) -> int:
        return post_signed(fake, local, voice_params(f"CA{n:032d}"), sign_url=sign_url, **kw).status_code

    assert sent(1, public) == 200                                   # as Twilio signs it
    assert sent(2, "https://voice.example.com:443/voice/webhook") == 200  # the port variant
    assert sent(3, local) == 401                                    # the URL we were reached at
    assert sent(4, "https://evil.example.com/voice/webhook") == 401
    assert sent(5, "http://voice.example.com/voice/webhook") == 401
    assert sent(6, public + "?callId=x") == 401
    # Tampered: signed one set of params, sent another.
    sig = fake.sign(public, voice_params(f"CA{7:032d}"))
    assert requests.post(local, data=voice_params(f"CA{7:032d}", from_="+15550000001"),
                         headers={"X-Twilio-Signature": sig}, timeout=5).status_code == 401
    # Missing or empty header.
    assert requests.post(local, data=voice_params(f"CA{8:032d}"), timeout=5).status_code == 401
    assert requests.post(local, data=voice_params(f"CA{8:032d}"), headers={"X-Twilio-Signature": ""},
                         timeout=5).status_code == 401
    # Host and X-Forwarded-* cannot move the check elsewhere (not trusted by default).
    forwarded = {"Host": "evil.example.com", "X-Forwarded-Host": "evil.example.com", "X-Forwarded-Proto": "https"}
    assert sent(9, "https://evil.example.com/voice/webhook", headers=forwarded) == 401

    # JSON bodies: the URL carries bodySHA256 and is signed alone.
    body = json.dumps({"CallSid": f"CA{10:032d}", "CallStatus": "completed"})
    target = "?" + urlencode({"type": "status", "bodySHA256": hashlib.sha256(body.encode()).hexdigest()})
    headers = {"X-Twilio-Signature": fake.sign(public + target), "Content-Type": "application/json"}
    assert requests.post(local + target, data=body, headers=headers, timeout=5).status_code == 200
    assert requests.post(local + target, data=body.replace("completed", "ringing"), headers=headers,
                         timeout=5).status_code == 401
    headers = {"X-Twilio-Signature": fake.sign(public + "?type=status"), "Content-Type": "application/json"}
    assert requests.post(local + "?type=status", data=body, headers=headers, timeout=5).status_code == 401

    # Only the properly signed requests were processed; the others changed nothing.
    calls = d.rpc("voicecall.history")["calls"]
    assert sorted(c["providerCallId"] for c in calls) == [f"CA{1:032d}", f"CA{2:032d}"]
    assert "rejected a webhook" in d.log()


def test_port_variants_and_trusted_forwarded_headers(twilio_daemon, fake: FakeTwilio) -> None:
    port = free_port()
    d = twilio_daemon(publicUrl="http://127.0.0.1", port=port, twilio={"trustForwardedHeaders": True})
    local = f"http://127.0.0.1:{port}/voice/webhook"

    def sent(n: int, sign_url: str, **kw: Any) -> int:
        return post_signed(fake, local, voice_params(f"CA{n:032d}"), sign_url=sign_url, **kw).status_code

    # Twilio's validator accepts the URL with and without its default port.
    assert sent(1, "http://127.0.0.1/voice/webhook") == 200
    assert sent(2, url_with_port("http://127.0.0.1/voice/webhook")) == 200  # :80
    assert sent(3, "http://127.0.0.1:8080/voice/webhook") == 401
    # A reverse proxy the operator trusts may name the public URL itself.
    headers = {"X-Forwarded-Host": "alt.example.com", "X-Forwarded-Proto": "https"}
    assert sent(4, "https://alt.example.com/voice/webhook", headers=headers) == 200
    assert sent(5, "https://alt.example.com/voice/webhook") == 401  # ... only when it does
    assert sorted(c["providerCallId"] for c in d.rpc("voicecall.history")["calls"]) == \
        [f"CA{n:032d}" for n in (1, 2, 4)]


def test_forged_status_changes_nothing_and_replays_process_once(env: Env) -> None:
    fake, d = env.fake, env.d
    call_id = d.rpc("voicecall.initiate", {"message": "Hi", "mode": "conversation"})["callId"]
    d.wait_state(call_id, "listening")
    call = fake.calls[sid_of(fake, call_id)]
    status_url = f"{env.base}?callId={call_id}&type=status"
    forged = [("CallSid", call.sid), ("CallStatus", "completed"), ("SequenceNumber", "99")]
    resp = requests.post(status_url, data=forged, headers={"X-Twilio-Signature": fake.sign(status_url, forged[:1])},
                         timeout=5)
    assert resp.status_code == 401
    assert d.rpc("voicecall.status", {"callId": call_id})["state"] == "listening"

    # The callee answers a question; then Twilio's request is replayed, verbatim
    # and with a fresh idempotency token: the words are heard once.
    thread, result = continue_in_thread(d, call_id, "Which version?")
    fake.wait_for(lambda: "Which version?" in call.said)
    fake.callee_says(call.sid, "Two point one")
    thread.join(20)
    assert result["value"]["transcript"] == "Two point one"
    [action] = fake.wait_for(lambda: call.gather_actions)
    first = requests.post(action.url, data=action.params, headers=action.headers, timeout=5)
    assert first.status_code == 200 and first.text == action.body
    fresh = {**action.headers, "I-Twilio-Idempotency-Token": str(uuid.uuid4())}
    assert requests.post(action.url, data=action.params, headers=fresh, timeout=5).text == action.body
    # A new, properly signed request for a document Twilio no longer runs
    # (a stale turn token) is ignored too.
    stale = post_signed(fake, action.url, action.params[:-2] + [("SpeechResult", "Three"), ("Confidence", "0.9")])
    assert stale.status_code == 200 and "<Response" in stale.text
    user = [t["text"] for t in d.rpc("voicecall.status", {"callId": call_id})["transcript"] if t["speaker"] == "user"]
    assert user == ["Two point one"]


def test_skip_signature_verification_warns_loudly(twilio_daemon) -> None:
    d = twilio_daemon(skipSignatureVerification=True)
    assert "skipSignatureVerification is on" in d.log()
    local = f"http://127.0.0.1:{d.webhook_port}/voice/webhook?type=status"
    assert requests.post(local, data=voice_params(f"CA{1:032d}", status="completed"), timeout=5).status_code == 200


# --- answering machines and media streams ---------------------------------------------------------


def test_answering_machine_ends_as_voicemail(twilio_daemon, fake: FakeTwilio) -> None:
    d = twilio_daemon(twilio={"machineDetection": True})
    fake.next_callee(machine=True)
    call_id = d.rpc("voicecall.initiate", {"message": "Your package is late", "mode": "notify"})["callId"]
    assert d.wait_state(call_id, "voicemail")["endReason"] == "voicemail"
    [create] = creates(fake, call_id)
    assert create.values("MachineDetection") == ["Enable"]
    call = fake.wait_ended(create.response["sid"])
    assert call.answered_by == "machine_start" and call.said == []
    # Hung up from the status callback, before Twilio fetched any TwiML.
    assert "voice" not in [x.kind for x in call.deliveries] and call.end_reason == "api-hangup"
    # A person answering is an ordinary call.
    fake.next_callee(answered_by="human")
    call_id = d.rpc("voicecall.initiate", {"message": "Your package is late", "mode": "notify"})["callId"]
    assert d.wait_state(call_id, "completed", timeout=10)["endReason"] == "completed"


def test_streaming_connects_a_media_stream(twilio_daemon, fake: FakeTwilio) -> None:
    streams: list[StreamRequest] = []
    fake.on_stream = streams.append
    port = free_port()
    d = twilio_daemon(port=port, streaming={"enabled": True, "openaiApiKey": "sk-test-0123456789"})
    call_id = d.rpc("voicecall.initiate", {"message": "Hello", "mode": "conversation"})["callId"]
    # The first document opens the stream and says nothing: the opening waits
    # to be spoken over it. No stream comes up here (nothing answers the
    # wss:// URL), so after a few seconds the opening is said with <Say>,
    # and the call streams again after it.
    d.wait_state(call_id, "listening", timeout=20)
    sid = sid_of(fake, call_id)
    stream = fake.wait_stream(sid)
    url = f"wss://127.0.0.1:{port}/voice/stream"
    assert len(streams) == 2 and streams[0].ended_at is not None and streams[1] is stream
    assert stream.url == url and stream.bidirectional
    assert stream.parameters["callId"] == call_id and len(stream.parameters["token"]) >= 32
    # What the WebSocket upgrade will carry verifies with the daemon's validator.
    assert validate(fake.auth_token, url, stream.headers["X-Twilio-Signature"])
    assert fake.calls[sid].said == ["Hello"]
    # The stream ends (the media side closed it): the call falls back to <Gather>.
    fake.end_stream(sid)
    fake.wait_listening(sid)
    fake.callee_says(sid, "Still there?")
    d.wait(lambda: [t for t in d.rpc("voicecall.status", {"callId": call_id})["transcript"]
                    if t["speaker"] == "user"], what="speech heard by <Gather>")
    d.rpc("voicecall.end", {"callId": call_id})
