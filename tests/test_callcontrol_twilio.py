"""Call control on Twilio, end to end: the real daemon against FakeTwilio
(and, for in-band DTMF, a simulated Twilio media stream).

DTMF is ``<Play digits>`` (then back to the call's script), or tones on an
open media stream, decoded back here by a Goertzel detector; a transfer is
the message and a ``<Dial>`` whose ``<Number>`` reports the answer; a call
that records asks for it on create and learns of the recording from a
signed RecordingStatusCallback. The fake checks each request's shape.
"""

from __future__ import annotations

import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from callctl import ALLOWED, BUSY, OTHER, Events
from daemon import Daemon, remove, short_tmp
from dtmf_detect import decode

from voicecalld.control.client import RpcError
from voicecalld.errors import INVALID_PARAMS, PROVIDER_ERROR
from voicecalld.testing.fake_openai import FakeOpenAI
from voicecalld.testing.fake_twilio import FakeCall, FakeTwilio, StreamRequest
from voicecalld.testing.media_client import MediaStreamClient
from voicecalld.testing.ports import free_port

FROM, TO = "+15550001111", "+15550002222"


def config(fake: FakeTwilio, port: int, **extra: Any) -> dict[str, Any]:
    return {"provider": "twilio", "fromNumber": FROM, "toNumber": TO, "publicUrl": f"http://127.0.0.1:{port}",
            "serve": {"port": port}, "responder": "off", "maxConcurrentCalls": 5,
            "twilio": {"accountSid": fake.account_sid, "authToken": fake.auth_token, "apiBaseUrl": fake.base_url},
            "transfer": {"allowTo": [ALLOWED, BUSY]}, "outbound": {"notifyHangupDelaySec": 0.5}, **extra}


class Env:
    def __init__(self, fake: FakeTwilio, d: Daemon, port: int) -> None:
        self.fake, self.d, self.port = fake, d, port

    @property
    def webhook(self) -> str:
        return f"http://127.0.0.1:{self.port}/voice/webhook"

    def call(self, mode: str = "conversation", **params: Any) -> tuple[str, FakeCall]:
        call_id = self.d.rpc("voicecall.initiate", {"message": "Hello from the bot", "mode": mode, **params})["callId"]
        call = self.fake.wait_for(lambda: next((c for c in self.fake.calls.values()
                                                if dict(c.params).get("Url", "").endswith(call_id)), None))
        return call_id, call

    def updates(self, call: FakeCall) -> list[Any]:
        return [r for r in self.fake.requests if r.method == "POST" and r.path.endswith(f"/Calls/{call.sid}.json")]


@pytest.fixture(scope="module")
def shared() -> Iterator[Env]:
    with FakeTwilio(time_scale=0.05, ms_per_char=1, owned_numbers=[FROM]) as fake:
        fake.set_callee(BUSY, outcome="busy")
        port = free_port()
        tmp = short_tmp("twctl")
        d = Daemon(tmp, config(fake, port))
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


def asked(fake: FakeTwilio, call: FakeCall) -> int:
    """Requests that update ``call`` or place a new one. (Other requests may
    be in flight: the fake and the daemon are shared by the module's tests,
    and earlier tests' calls are still being hung up.)"""
    return sum(1 for r in list(fake.requests) if r.method == "POST" and (
        r.path.endswith("/Calls.json") or r.path.endswith(f"/Calls/{call.sid}.json")))


def verbs(xml: str) -> list[str]:
    return [el.tag for el in ET.fromstring(xml)]


def kinds(xml: str) -> list[tuple[str, str]]:
    """(verb, its text or digits), in order."""
    return [(el.tag, el.get("digits") or (el.text or "")) for el in ET.fromstring(xml)]


# --- DTMF --------------------------------------------------------------------------------------


def test_dtmf_is_play_digits_then_back_to_the_script(env: Env) -> None:
    d, fake = env.d, env.fake
    call_id, call = env.call()
    d.wait_state(call_id, "listening")
    fake.wait_listening(call.sid)
    events = Events(d, call_id)
    try:
        assert d.rpc("voicecall.dtmf", {"callId": call_id, "digits": "1w2#"}) == {"callId": call_id, "ok": True}
        fake.wait_for(lambda: call.digits_played == ["1w2#"])
        [sent] = events.wait("call.dtmf")
        assert sent["data"] == {"digits": "1w2#", "direction": "sent"}
    finally:
        events.close()
    # A live-call update with the digits alone, no <Gather> around them (the
    # far end's voice must not cut them off), then back to the webhook...
    [update] = [u for u in env.updates(call) if "Play" in "".join(u.values("Twiml"))]
    doc = update.values("Twiml")[0]
    assert kinds(doc)[0] == ("Play", "1w2#") and verbs(doc) == ["Play", "Redirect"]
    # ... which answers with the call's script: listening again.
    fake.wait_for(lambda: len(call.gathers) >= 2 and call.listening)
    assert d.rpc("voicecall.status", {"callId": call_id})["state"] == "listening"


def test_dtmf_on_initiate_is_sent_before_the_message(env: Env) -> None:
    d = env.d
    call_id, call = env.call(mode="notify", dtmf="123#w9")
    record = d.wait_state(call_id, "completed")
    assert record["dtmf"] == "123#w9"
    assert kinds(call.twiml[0])[:2] == [("Play", "123#w9"), ("Say", "Hello from the bot")]
    assert call.digits_played == ["123#w9"] and call.said == ["Hello from the bot"]


@pytest.mark.parametrize("digits", ["12x", "", "1" * 65, "1 2", "W"])
def test_bad_digits_are_refused_naming_the_allowed_set(env: Env, digits: str) -> None:
    d, fake = env.d, env.fake
    call_id, call = env.call()
    d.wait_state(call_id, "listening")
    before = asked(fake, call)
    with pytest.raises(RpcError) as info:
        d.rpc("voicecall.dtmf", {"callId": call_id, "digits": digits})
    assert info.value.code == INVALID_PARAMS
    assert "0-9, *, #, A-D and w" in info.value.message or "at most 64" in info.value.message
    with pytest.raises(RpcError) as info:
        d.rpc("voicecall.initiate", {"message": "hi", "dtmf": digits})
    assert info.value.code == INVALID_PARAMS
    assert asked(fake, call) == before  # nothing was asked of Twilio: no update, no new call


# --- transfer ----------------------------------------------------------------------------------


def test_transfer_to_an_allowed_number(env: Env) -> None:
    d, fake = env.d, env.fake
    call_id, call = env.call()
    d.wait_state(call_id, "listening")
    events = Events(d, call_id)
    try:
        result = d.rpc("voicecall.transfer", {"callId": call_id, "to": ALLOWED, "message": "Putting you through"},
                       timeout=30)
        assert result == {"callId": call_id, "ok": True, "endReason": "transferred"}
        states = events.wait("call.ended")
        assert states[0]["data"] == {"reason": "transferred"}
        assert [e["data"]["to"] for e in events.named("call.state")][-1] == "transferred"
    finally:
        events.close()
    record = d.rpc("voicecall.status", {"callId": call_id})
    assert record["state"] == record["endReason"] == "transferred"
    assert record["transcript"][-1]["text"] == "Putting you through"
    # The message, then <Dial><Number> with the answered callback and the action.
    [update] = [u for u in env.updates(call) if "Dial" in "".join(u.values("Twiml"))]
    doc = ET.fromstring(update.values("Twiml")[0])
    assert [el.tag for el in doc] == ["Say", "Dial"] and doc[0].text == "Putting you through"
    dial = doc[1]
    number = dial.find("Number")
    assert number is not None and number.text == ALLOWED
    assert number.get("statusCallbackEvent") == "answered"
    assert "type=transfer" in (number.get("statusCallback") or "") and "type=dial" in (dial.get("action") or "")
    [leg] = call.dials
    assert leg.number == ALLOWED and leg.status == "in-progress"
    # Twilio's leg is the target's now; once they hang up, the dial's action is
    # answered with <Hangup/>: the call is over for us.
    fake.end_dial(call.sid)
    fake.wait_ended(call.sid)
    assert verbs(call.twiml[-1]) == ["Hangup"]
    assert [x.status for x in call.deliveries if x.kind in ("number-status", "dial-action")] == [200, 200]


def test_transfer_to_a_number_not_allowed_asks_nothing_of_twilio(env: Env) -> None:
    d, fake = env.d, env.fake
    call_id, call = env.call()
    d.wait_state(call_id, "listening")
    before = asked(fake, call)
    for to in (OTHER, "not a number", FROM):
        with pytest.raises(RpcError) as info:
            d.rpc("voicecall.transfer", {"callId": call_id, "to": to, "message": "bye"})
        assert info.value.code == INVALID_PARAMS
    assert "transfer.allowTo" in info.value.message
    assert asked(fake, call) == before and call.dials == []
    assert d.rpc("voicecall.status", {"callId": call_id})["state"] == "listening"


def test_failed_transfer_leaves_the_call_up(env: Env) -> None:
    d, fake = env.d, env.fake
    call_id, call = env.call()
    d.wait_state(call_id, "listening")
    with pytest.raises(RpcError) as info:
        d.rpc("voicecall.transfer", {"callId": call_id, "to": BUSY, "message": "One moment"}, timeout=30)
    assert info.value.code == PROVIDER_ERROR and "busy" in info.value.message
    assert "still connected" in info.value.message
    [leg] = call.dials
    assert leg.status == leg.dial_call_status == "busy"
    # The call goes on: Twilio runs its script again, and it still talks.
    fake.wait_listening(call.sid)
    assert not call.ended and d.rpc("voicecall.status", {"callId": call_id})["state"] == "listening"
    d.rpc("voicecall.speak", {"callId": call_id, "message": "Still here"})
    fake.wait_for(lambda: "Still here" in call.said)
    assert "transfer to +*******4444 failed: the target was busy" in d.log()


# --- recording ---------------------------------------------------------------------------------


def test_recording_is_asked_for_and_reported_by_a_signed_callback(env: Env) -> None:
    d = env.d
    events = Events(d)
    try:
        call_id, call = env.call(mode="notify", record=True)
        d.wait_state(call_id, "completed")
        recorded = events.wait("call.recording")
    finally:
        events.close()
    form = dict(call.params)
    assert form["Record"] == "true" and form["RecordingChannels"] == "dual"
    assert form["RecordingStatusCallback"] == f"{env.webhook}?callId={call_id}&type=recording"
    assert form["RecordingStatusCallbackMethod"] == "POST"
    [recording] = call.recordings
    entry = {"url": recording.url, "durationSec": recording.duration, "channels": "dual"}
    assert recorded[0]["callId"] == call_id and recorded[0]["data"] == entry
    record = d.wait(lambda: (r := d.rpc("voicecall.status", {"callId": call_id}))["recordings"] and r)
    assert record["record"] is True and record["recordings"] == [entry]
    [callback] = [x for x in call.deliveries if x.kind == "recording"]
    assert callback.status == 200 and callback.form["RecordingStatus"] == "completed"


def test_a_call_without_record_asks_for_none(env: Env) -> None:
    d = env.d
    call_id, call = env.call(mode="notify")
    d.wait_state(call_id, "completed")
    assert not [k for k, _ in call.params if k.startswith("Record")] and call.recordings == []
    assert d.rpc("voicecall.status", {"callId": call_id})["record"] is False


def test_a_forged_recording_callback_is_refused_and_changes_nothing(env: Env) -> None:
    d, fake = env.d, env.fake
    call_id, call = env.call(mode="notify")
    d.wait_state(call_id, "completed")
    url = f"{env.webhook}?callId={call_id}&type=recording"
    params = [("AccountSid", fake.account_sid), ("CallSid", call.sid), ("RecordingSid", "RE" + "1" * 32),
              ("RecordingUrl", "https://evil.example.com/recording"), ("RecordingStatus", "completed"),
              ("RecordingDuration", "7"), ("RecordingChannels", "2")]
    headers = {"I-Twilio-Idempotency-Token": str(uuid.uuid4())}
    for signature in (None, fake.sign(url + "x", params), FakeTwilio(auth_token="0" * 32).sign(url, params)):
        sent = requests.post(url, data=params, timeout=5,
                             headers={**headers, **({"X-Twilio-Signature": signature} if signature else {})})
        assert sent.status_code == 401
    assert d.rpc("voicecall.status", {"callId": call_id})["recordings"] == []
    # The same request, signed with the account's token, is taken: the check above is the signature's.
    signed = {**headers, "X-Twilio-Signature": fake.sign(url, params)}
    assert requests.post(url, data=params, headers=signed, timeout=5).status_code == 200
    assert d.rpc("voicecall.status", {"callId": call_id})["recordings"] == [
        {"url": "https://evil.example.com/recording", "durationSec": 7, "channels": "dual"}]


def test_an_inbound_call_starts_recording_in_its_first_twiml(start_daemon) -> None:
    with FakeTwilio(time_scale=0.05, ms_per_char=1, owned_numbers=[FROM]) as fake:
        port = free_port()
        d = start_daemon(config(fake, port, inboundPolicy="open", inboundGreeting="Hi there",
                                recording={"enabled": True, "channels": "mono", "announce": "We record calls."}))
        webhook = f"http://127.0.0.1:{port}/voice/webhook"
        sid = fake.inbound_call("+15557770000", FROM, webhook, webhook + "?type=status")
        call_id = d.wait(lambda: d.rpc("voicecall.list")["calls"], what="the inbound call")[0]["callId"]
        d.wait_state(call_id, "listening")
        # While Twilio waits for the first TwiML the call is not in progress (the
        # Recordings resource would refuse it): <Start><Recording> comes first.
        first = ET.fromstring(fake.calls[sid].twiml[0])
        assert [el.tag for el in first] == ["Start", "Gather", "Redirect"]  # no <Gather> may hold a <Start>
        recording_el = first.find("Start/Recording")
        assert recording_el is not None and recording_el.get("channels") == "mono"
        callback = recording_el.get("recordingStatusCallback") or ""
        assert callback.startswith(f"{webhook}?callId={call_id}&type=recording")
        assert fake.calls[sid].said == ["We record calls.", "Hi there"]
        assert not [r for r in fake.requests if "Recordings" in r.path]
        fake.callee_hangs_up(sid)
        record = d.wait(lambda: (r := d.rpc("voicecall.status", {"callId": call_id}))["recordings"] and r)
        [recording] = fake.calls[sid].recordings
        assert record["recordings"] == [{"url": recording.url, "durationSec": recording.duration, "channels": "mono"}]


# --- in-band DTMF on a streamed call ---------------------------------------------------------


def test_dtmf_on_a_streamed_call_is_tones_on_the_stream(start_daemon) -> None:
    with FakeTwilio(time_scale=0.05, ms_per_char=2) as fake, FakeOpenAI(api_key="sk-test") as openai:
        port = free_port()
        streaming = {"enabled": True, "openaiApiKey": "sk-test", "realtimeUrl": openai.realtime_url}
        d = start_daemon(config(fake, port, streaming=streaming, tts={"baseUrl": openai.base_url}))
        clients: list[MediaStreamClient] = []
        done = threading.Event()

        def on_stream(req: StreamRequest) -> None:
            client = MediaStreamClient(f"ws://127.0.0.1:{port}{urlsplit(req.url).path}", headers=req.headers,
                                       custom_parameters=req.parameters, call_sid=req.call_sid,
                                       stream_sid=req.stream_sid)
            clients.append(client)

            def run() -> None:
                client.connect()
                req.ended.wait(60)
                client.stop()
                done.set()
            threading.Thread(target=run, daemon=True).start()

        fake.on_stream = on_stream
        env = Env(fake, d, port)
        call_id, call = env.call()
        client = d.wait(lambda: clients and clients[-1].connected and clients[-1], what="the media stream")
        d.wait_state(call_id, "listening")
        events = Events(d, call_id)
        try:
            d.rpc("voicecall.dtmf", {"callId": call_id, "digits": "159#"})
            assert events.wait("call.dtmf")[0]["data"] == {"digits": "159#", "direction": "sent"}
        finally:
            events.close()
        # 4 x (100 ms tone + 100 ms gap): the stream's audio decodes to the digits.
        client.wait_for(lambda: decode(client.inbound_audio) == "159#", timeout=10)
        client.wait_for(lambda: bool(client.marks) and all(m.echoed_at for m in client.marks), timeout=10)
        # In-band: no <Play digits>, the stream stayed up, and the call with it.
        assert not [u for u in env.updates(call) if "Play" in "".join(u.values("Twiml"))]
        assert client.connected and call.stream_open and len(call.streams) == 1
        assert d.rpc("voicecall.status", {"callId": call_id})["state"] == "listening"
        d.rpc("voicecall.end", {"callId": call_id})
        assert done.wait(10)
