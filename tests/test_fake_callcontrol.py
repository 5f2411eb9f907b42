"""The fakes' call control, driven over HTTP as a carrier's client would:
FakeTwilio's ``<Play digits>``, ``<Dial>`` and recordings, and FakeTelnyx's
``send_dtmf``, ``transfer`` and ``record_start``. Each fake refuses what
its carrier would refuse, so a daemon bug cannot pass unnoticed; every
webhook they send is signature-checked by the receivers of
test_fake_twilio.py and test_fake_telnyx.py."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from test_fake_telnyx import Api, _answered_call, _error
from test_fake_telnyx import Receiver as TelnyxReceiver
from test_fake_twilio import SID, TOKEN, Receiver, create, start_call

from voicecalld.providers.telnyx_signature import load_public_key
from voicecalld.testing.fake_telnyx import FakeTelnyx
from voicecalld.testing.fake_twilio import Callee, FakeTwilio

TARGET = "+15550003333"


# --- FakeTwilio ------------------------------------------------------------------------------


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio(SID, TOKEN, ms_per_char=1.0, time_scale=0.05, answer_delay=0.02,
                    owned_numbers=["+15550001111"], webhook_timeout=2.0) as fake:
        yield fake


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(TOKEN)
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()
    r.thread.join(5)
    assert all(h.signature_ok for h in r.hits), [h.url for h in r.hits if not h.signature_ok]


def test_play_digits_plays_for_their_time_then_goes_on(twilio: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = '<Response><Play digits="12w#"/><Say>after</Say><Hangup/></Response>'
    call = twilio.wait_ended(start_call(twilio, receiver))
    assert call.digits_played == ["12w#"] and call.said == ["after"] and call.errors == []


@pytest.mark.parametrize("digits", ["12x", "1 2", "e"])
def test_play_digits_outside_the_dtmf_set_end_the_call(twilio: FakeTwilio, receiver: Receiver, digits: str) -> None:
    receiver.twiml["/voice"] = f'<Response><Play digits="{digits}"/><Say>never</Say></Response>'
    call = twilio.wait_ended(start_call(twilio, receiver))
    assert [e.code for e in call.errors] == [12100] and call.said == [] and call.digits_played == []


DIAL = ('<Response><Dial action="/dialed" timeout="{timeout}"><Number statusCallbackEvent="answered" '
        'statusCallback="/number">' + TARGET + '</Number></Dial><Say>after</Say></Response>')


def test_dial_answered_reports_the_answer_then_the_end(twilio: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = DIAL.format(timeout=10)
    receiver.twiml["/number"] = "<Response/>"
    receiver.twiml["/dialed"] = "<Response><Hangup/></Response>"
    sid = start_call(twilio, receiver)
    twilio.wait_for(lambda: receiver.at("/number"), message="the target's answer")
    [answered] = receiver.at("/number")
    assert answered.params["CallStatus"] == "in-progress" and answered.params["ParentCallSid"] == sid
    assert answered.params["CallSid"] != sid and answered.params["To"] == TARGET
    assert answered.params["Direction"] == "outbound-dial"
    assert receiver.at("/dialed") == []  # the bridge lasts until the target hangs up
    twilio.end_dial(sid)
    call = twilio.wait_ended(sid)
    [dialed] = receiver.at("/dialed")
    assert dialed.params["DialCallStatus"] == "completed" and dialed.params["CallSid"] == sid
    assert dialed.params["DialCallSid"] == answered.params["CallSid"] and "DialCallDuration" in dialed.params
    assert call.said == [] and call.dials[0].dial_call_status == "completed"


@pytest.mark.parametrize(("callee", "status"), [
    (Callee(outcome="busy"), "busy"), (Callee(outcome="failed"), "failed"),
    (Callee(outcome="no-answer"), "no-answer"), (Callee(answer_after=5.0), "no-answer"),
])
def test_dial_not_answered_goes_to_the_action(twilio: FakeTwilio, receiver: Receiver, callee: Callee,
                                              status: str) -> None:
    twilio.set_callee(TARGET, callee)
    receiver.twiml["/voice"] = DIAL.format(timeout=5)  # 5 s x 0.05
    receiver.twiml["/dialed"] = "<Response><Say>sorry</Say></Response>"
    call = twilio.wait_ended(start_call(twilio, receiver), timeout=10)
    [dialed] = receiver.at("/dialed")
    assert dialed.params["DialCallStatus"] == status and "DialCallDuration" not in dialed.params
    assert receiver.at("/number") == [] and call.said == ["sorry"]  # the call went on with the action's TwiML


@pytest.mark.parametrize("body", [
    f"<Response><Dial><Number>{TARGET}</Number><Number>{TARGET}</Number></Dial></Response>",
    "<Response><Dial><Client>alice</Client></Dial></Response>",
    f'<Response><Dial><Number statusCallbackEvent="picked-up">{TARGET}</Number></Dial></Response>',
    '<Response><Dial timeout="2"><Number>+15550003333</Number></Dial></Response>',
    "<Response><Dial/></Response>",
])
def test_dials_twilio_would_refuse_end_the_call(twilio: FakeTwilio, receiver: Receiver, body: str) -> None:
    receiver.twiml["/voice"] = body
    call = twilio.wait_ended(start_call(twilio, receiver))
    assert [e.code for e in call.errors] == [12100] and call.dials == []


def test_record_on_create_reports_a_signed_recording_callback(twilio: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = '<Response><Pause length="2"/><Hangup/></Response>'
    receiver.twiml["/rec"] = "<Response/>"
    sid = start_call(twilio, receiver, Record="true", RecordingChannels="dual",
                     RecordingStatusCallback=receiver.url("/rec?callId=c1"), RecordingStatusCallbackEvent="completed")
    call = twilio.wait_ended(sid)
    twilio.wait_for(lambda: receiver.at("/rec"), message="the recording callback")
    [hit] = receiver.at("/rec")
    [recording] = call.recordings
    assert hit.params["RecordingStatus"] == "completed" and hit.params["CallSid"] == sid
    assert hit.params["RecordingUrl"] == recording.url and hit.params["RecordingChannels"] == "2"
    assert hit.params["RecordingSid"] == recording.sid and hit.params["RecordingSource"] == "OutboundAPI"
    assert hit.params["RecordingDuration"] == str(recording.duration)


def test_start_recording_twiml_records_and_reports(twilio: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = ('<Response><Start><Recording channels="mono" recordingStatusCallback="/rec"/></Start>'
                                '<Pause length="2"/><Hangup/></Response>')
    receiver.twiml["/rec"] = "<Response/>"
    call = twilio.wait_ended(start_call(twilio, receiver))
    twilio.wait_for(lambda: receiver.at("/rec"), message="the recording callback")
    [hit] = receiver.at("/rec")
    assert hit.params["RecordingSource"] == "StartCallRecordingTwiML" and hit.params["RecordingChannels"] == "1"
    assert hit.url == receiver.url("/rec") and call.recordings[0].status == "completed"


@pytest.mark.parametrize("recording", ['<Recording channels="stereo"/>',
                                       '<Recording recordingStatusCallbackEvent="done"/>',
                                       '<Recording><Say>x</Say></Recording>'])
def test_start_recordings_twilio_would_refuse_end_the_call(twilio: FakeTwilio, receiver: Receiver,
                                                           recording: str) -> None:
    receiver.twiml["/voice"] = f"<Response><Start>{recording}</Start><Say>never</Say></Response>"
    call = twilio.wait_ended(start_call(twilio, receiver))
    assert [e.code for e in call.errors] == [12100] and call.recordings == []


def test_no_record_no_recording(twilio: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = "<Response><Hangup/></Response>"
    call = twilio.wait_ended(start_call(twilio, receiver, RecordingStatusCallback=receiver.url("/rec")))
    assert call.recordings == [] and receiver.at("/rec") == []


@pytest.mark.parametrize("params", [{"Record": "maybe"}, {"Record": "true", "RecordingChannels": "stereo"},
                                    {"Record": "true", "RecordingStatusCallback": "not a url"},
                                    {"Record": "true", "RecordingStatusCallbackEvent": "done"}])
def test_recording_parameters_are_checked(twilio: FakeTwilio, receiver: Receiver, params: dict[str, str]) -> None:
    response = create(twilio, receiver, **params)
    assert response.status_code == 400 and response.json()["code"] == 21205 and not twilio.calls


def test_recordings_resource_needs_a_live_call(twilio: FakeTwilio, receiver: Receiver) -> None:
    receiver.twiml["/voice"] = '<Response><Pause length="100"/></Response>'
    sid = start_call(twilio, receiver)
    twilio.wait_status(sid, "in-progress")
    url = f"{twilio.base_url}/2010-04-01/Accounts/{SID}/Calls/{sid}/Recordings.json"
    form = {"RecordingChannels": "mono", "RecordingStatusCallback": receiver.url("/rec")}
    response = requests.post(url, data=form, auth=(SID, TOKEN), timeout=5)
    assert response.status_code == 201 and response.json()["channels"] == 1
    receiver.twiml["/rec"] = "<Response/>"
    twilio.callee_hangs_up(sid)
    twilio.wait_ended(sid)
    twilio.wait_for(lambda: receiver.at("/rec"), message="the recording callback")
    assert receiver.at("/rec")[0].params["RecordingSource"] == "StartCallRecordingAPI"
    assert requests.post(url, data=form, auth=(SID, TOKEN), timeout=5).json()["code"] == 21220


# --- FakeTelnyx --------------------------------------------------------------------------------


@pytest.fixture
def treceiver() -> Iterator[TelnyxReceiver]:
    rec = TelnyxReceiver()
    yield rec
    rec.close()


@pytest.fixture
def telnyx(treceiver: TelnyxReceiver) -> Iterator[FakeTelnyx]:
    with FakeTelnyx(seed=7, ms_per_char=1.0, answer_after=0.02, timeout_scale=0.01,
                    webhook_retry_delays=(0.02, 0.02, 0.02), amd_delay=0.01) as instance:
        treceiver.key = load_public_key(instance.public_key_b64)
        yield instance


@pytest.fixture
def api(telnyx: FakeTelnyx) -> Iterator[Api]:
    client = Api(telnyx)
    yield client
    client.session.close()


def test_send_dtmf(telnyx: FakeTelnyx, api: Api, treceiver: TelnyxReceiver) -> None:
    cid = _answered_call(telnyx, api, treceiver)
    assert api.cmd(cid, "send_dtmf", digits="1w2*#AD", duration_millis=100).status_code == 200
    assert telnyx.calls[cid].dtmf_sent == ["1w2*#AD"]


@pytest.mark.parametrize(("body", "pointer"), [
    ({"digits": "12x"}, "/digits"), ({}, "/digits"), ({"digits": "1", "duration_millis": 50}, "/duration_millis"),
])
def test_send_dtmf_validation(telnyx: FakeTelnyx, api: Api, treceiver: TelnyxReceiver, body: dict[str, Any],
                              pointer: str) -> None:
    cid = _answered_call(telnyx, api, treceiver)
    response = api.cmd(cid, "send_dtmf", **body)
    assert response.status_code == 422 and _error(response)["source"]["pointer"] == pointer
    assert telnyx.calls[cid].dtmf_sent == []


def test_transfer_answered_bridges_a_new_leg(telnyx: FakeTelnyx, api: Api, treceiver: TelnyxReceiver) -> None:
    cid = _answered_call(telnyx, api, treceiver)
    state = base64.b64encode(b"leg-b").decode()
    assert api.cmd(cid, "transfer", to=TARGET, timeout_secs=10, target_leg_client_state=state).status_code == 200
    call = telnyx.calls[cid]
    leg = telnyx.wait_for(lambda: call.transfers and call.transfers[0])
    telnyx.wait_event(leg.call_control_id, "call.answered", ok=True)
    assert treceiver.types(leg.call_control_id)[:2] == ["call.initiated", "call.answered"]
    answered = treceiver.accepted(leg.call_control_id, "call.answered")[0].payload
    assert answered["client_state"] == state and answered["to"] == TARGET
    telnyx.wait_event(cid, "call.bridged", ok=True)
    assert leg.bridged_with is call and call.alive
    # The bridge ends with either side.
    telnyx.callee_hangs_up(leg.call_control_id)
    telnyx.wait_event(cid, "call.hangup", ok=True)
    assert not call.alive


@pytest.mark.parametrize(("behaviour", "cause"), [("busy", "user_busy"), ("reject", "call_rejected"),
                                                  ("no_answer", "timeout")])
def test_transfer_not_answered_leaves_the_call_up(telnyx: FakeTelnyx, api: Api, treceiver: TelnyxReceiver,
                                                  behaviour: str, cause: str) -> None:
    telnyx.set_callee(TARGET, behaviour)
    cid = _answered_call(telnyx, api, treceiver)
    assert api.cmd(cid, "transfer", to=TARGET, timeout_secs=5).status_code == 200
    call = telnyx.calls[cid]
    leg = telnyx.wait_for(lambda: call.transfers and call.transfers[0])
    hangup = telnyx.wait_event(leg.call_control_id, "call.hangup", ok=True)
    assert hangup.json["data"]["payload"]["hangup_cause"] == cause and call.alive and not leg.answered


@pytest.mark.parametrize(("body", "pointer"), [
    ({"to": "5550003333"}, "/to"), ({"to": TARGET, "timeout_secs": 1}, "/timeout_secs"),
    ({"to": TARGET, "target_leg_client_state": "not base64!"}, "/target_leg_client_state"),
    ({"to": TARGET, "from": "nope"}, "/from"),
])
def test_transfer_validation(telnyx: FakeTelnyx, api: Api, treceiver: TelnyxReceiver, body: dict[str, Any],
                             pointer: str) -> None:
    cid = _answered_call(telnyx, api, treceiver)
    response = api.cmd(cid, "transfer", **body)
    assert response.status_code == 422 and _error(response)["source"]["pointer"] == pointer
    assert telnyx.calls[cid].transfers == []


def test_record_start_then_saved_after_the_hangup(telnyx: FakeTelnyx, api: Api, treceiver: TelnyxReceiver) -> None:
    cid = _answered_call(telnyx, api, treceiver)
    assert api.cmd(cid, "record_start", channels="dual", format="mp3").status_code == 200
    assert api.cmd(cid, "record_start", channels="dual", format="mp3").status_code == 422  # already recording
    assert api.cmd(cid, "hangup").status_code == 200
    saved = telnyx.wait_event(cid, "call.recording.saved", ok=True).json["data"]["payload"]
    assert saved["channels"] == "dual" and saved["recording_urls"]["mp3"].endswith(".mp3")
    assert saved["recording_started_at"] <= saved["recording_ended_at"] and saved["client_state"]
    assert treceiver.types(cid)[-2:] == ["call.hangup", "call.recording.saved"]


@pytest.mark.parametrize(("body", "pointer"), [({"format": "mp3"}, "/channels"), ({"channels": "dual"}, "/format"),
                                               ({"channels": "stereo", "format": "mp3"}, "/channels")])
def test_record_start_validation(telnyx: FakeTelnyx, api: Api, treceiver: TelnyxReceiver, body: dict[str, Any],
                                 pointer: str) -> None:
    cid = _answered_call(telnyx, api, treceiver)
    response = api.cmd(cid, "record_start", **body)
    assert response.status_code == 422 and _error(response)["source"]["pointer"] == pointer
    assert telnyx.calls[cid].recording is None


def test_call_control_before_answer_is_refused(telnyx: FakeTelnyx, api: Api, treceiver: TelnyxReceiver) -> None:
    telnyx.set_callee("+15552223333", "no_answer")
    cid = api.dial(treceiver).json()["data"]["call_control_id"]
    for name, body in (("send_dtmf", {"digits": "1"}), ("transfer", {"to": TARGET}),
                       ("record_start", {"channels": "dual", "format": "mp3"})):
        assert api.cmd(cid, name, **body).status_code == 422, name
