"""Call control through the real daemon on the mock carrier (which
simulates DTMF, transfers and recordings so all can be tried without an
account), driven the ways a user or an agent drives it: voicecallctl, the
voice_call tool, and the auto-responder's transfer_call tool."""

from __future__ import annotations

import json
from typing import Any

import pytest
from callctl import ALLOWED, BUSY, OTHER, Events
from daemon import Daemon

from voicecalld.control.client import RpcError
from voicecalld.errors import INVALID_PARAMS, NOT_CONNECTED, PROVIDER_ERROR
from voicecalld.testing.fake_openai import FakeOpenAI

CALLER = "+15550002222"
MOCK = {"transfer": {"allowTo": [ALLOWED, BUSY]}, "mock": {"transferBusy": [BUSY], "answerDelayMs": 50,
                                                           "msPerChar": 1, "replyDelayMs": 10}}


def connected(d: Daemon, **params: Any) -> str:
    call_id = d.rpc("voicecall.initiate", {"message": "Hello", "mode": "conversation", **params})["callId"]
    d.wait_state(call_id, "listening")
    return call_id


def test_dtmf_and_transfer_with_voicecallctl(start_daemon) -> None:
    d = start_daemon(MOCK)
    code, out, err = d.ctl("call", "--message", "Hello", "--mode", "conversation", "--dtmf", "12#", "--record")
    assert code == 0, err
    call_id = out["callId"]
    record = d.wait_state(call_id, "listening")
    assert record["dtmf"] == "12#" and record["record"] is True
    assert d.ctl("dtmf", "--call-id", call_id, "--digits", "5w6")[1] == {"callId": call_id, "ok": True}
    code, out, err = d.ctl("dtmf", "--call-id", call_id, "--digits", "5e")
    assert code == 1 and "0-9, *, #, A-D and w" in err and "-32602" in err
    code, out, err = d.ctl("transfer", "--call-id", call_id, "--to", OTHER)
    assert code == 1 and "transfer.allowTo" in err
    code, out, err = d.ctl("transfer", "--call-id", call_id, "--to", BUSY, "--message", "One moment")
    assert code == 1 and "busy" in err and d.rpc("voicecall.status", {"callId": call_id})["state"] == "listening"
    code, out, err = d.ctl("transfer", "--call-id", call_id, "--to", ALLOWED, "--message", "Putting you through")
    assert code == 0, err
    assert out == {"callId": call_id, "ok": True, "endReason": "transferred"}
    # The simulated callee heard both sets of digits, in order.
    d.wait(lambda: "heard the DTMF digits 5w6" in d.log())
    assert d.log().index("heard the DTMF digits 12#") < d.log().index("heard the DTMF digits 5w6")
    # Recorded: the mock reports the recording once the call is over.
    record = d.wait(lambda: (r := d.rpc("voicecall.status", {"callId": call_id}))["recordings"] and r)
    [recording] = record["recordings"]
    assert recording["url"].startswith("mock://recordings/") and recording["channels"] == "dual"
    assert record["endReason"] == "transferred"
    code, out, err = d.ctl("call", "--message", "x", "--no-record")
    assert code == 0 and d.rpc("voicecall.status", {"callId": out["callId"]})["record"] is False


def test_voice_call_tool_send_dtmf_and_transfer_call(start_daemon) -> None:
    d = start_daemon(MOCK)
    call_id = connected(d)

    def tool(arguments: dict[str, Any]) -> dict[str, Any]:
        code, out, err = d.ctl("tool", stdin=json.dumps(arguments))
        assert isinstance(out, dict), (code, out, err)
        return out

    assert tool({"action": "send_dtmf", "callId": call_id, "digits": "1#"}) == {"success": True}
    assert "0-9, *, #, A-D" in tool({"action": "send_dtmf", "callId": call_id, "digits": "1!"})["error"]
    needs_to = tool({"action": "transfer_call", "callId": call_id})
    assert needs_to == {"error": "transfer_call needs to (a non-empty string)"}
    assert "transfer.allowTo" in tool({"action": "transfer_call", "callId": call_id, "to": OTHER})["error"]
    assert tool({"action": "transfer_call", "callId": call_id, "to": ALLOWED, "message": "Bye"}) == {"success": True}
    assert d.rpc("voicecall.status", {"callId": call_id})["endReason"] == "transferred"
    ended = tool({"action": "send_dtmf", "callId": call_id, "digits": "1"})
    assert ended == {"error": f"call {call_id} has ended"}


def test_commands_on_a_call_that_is_not_connected(start_daemon) -> None:
    d = start_daemon({**MOCK, "mock": {**MOCK["mock"], "answerDelayMs": 60000}})
    call_id = d.rpc("voicecall.initiate", {"message": "Hello"})["callId"]
    d.wait_state(call_id, "ringing")
    for method, params in (("voicecall.dtmf", {"digits": "1"}), ("voicecall.transfer", {"to": ALLOWED})):
        with pytest.raises(RpcError) as info:
            d.rpc(method, {"callId": call_id, **params})
        assert info.value.code == NOT_CONNECTED
    d.rpc("voicecall.end", {"callId": call_id})
    with pytest.raises(RpcError) as info:
        d.rpc("voicecall.dtmf", {"callId": call_id, "digits": "1"})
    assert info.value.code == NOT_CONNECTED


def test_transfers_are_off_without_allow_to(start_daemon) -> None:
    d = start_daemon()
    call_id = connected(d)
    with pytest.raises(RpcError) as info:
        d.rpc("voicecall.transfer", {"callId": call_id, "to": ALLOWED})
    assert info.value.code == INVALID_PARAMS and "transfers are off" in info.value.message
    assert d.rpc("voicecall.status", {"callId": call_id})["state"] == "listening"


def test_events_say_which_way_digits_went_and_how_transfers_went(start_daemon) -> None:
    d = start_daemon(MOCK)
    call_id = connected(d)
    events = Events(d, call_id)
    try:
        d.rpc("voicecall.dtmf", {"callId": call_id, "digits": "7"})
        with pytest.raises(RpcError) as info:
            d.rpc("voicecall.transfer", {"callId": call_id, "to": BUSY})
        assert info.value.code == PROVIDER_ERROR
        d.rpc("voicecall.transfer", {"callId": call_id, "to": ALLOWED})
        events.wait("call.ended")
    finally:
        events.close()
    assert [e["data"] for e in events.named("call.dtmf")] == [{"digits": "7", "direction": "sent"}]
    assert [e["data"] for e in events.named("call.transfer")] == [
        {"to": BUSY, "ok": False, "error": f"{BUSY} is busy"}]
    assert [e["data"]["to"] for e in events.named("call.state")] == ["transferred"]


def test_recording_announcement_comes_first_and_the_record_survives_a_restart(start_daemon) -> None:
    d = start_daemon({**MOCK, "recording": {"enabled": True, "announce": "This call is recorded."}})
    call_id = d.rpc("voicecall.initiate", {"message": "Your order shipped", "mode": "notify"})["callId"]
    d.wait_state(call_id, "completed")
    record = d.wait(lambda: (r := d.rpc("voicecall.status", {"callId": call_id}))["recordings"] and r)
    assert [t["text"] for t in record["transcript"]] == ["This call is recorded.", "Your order shipped"]
    assert d.stop() == 0
    again = start_daemon(d.config)
    assert again.rpc("voicecall.status", {"callId": call_id})["recordings"] == record["recordings"]


# --- the auto-responder's transfer_call tool ----------------------------------------------------


def llm(fake: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {"inboundPolicy": "open", "responseBaseUrl": fake.base_url, "responseApiKey": "sk-test",
            "responseTimeoutMs": 5000, **extra}


def caller_says(d: Daemon, text: str) -> str:
    call_id = d.rpc("mock.inbound", {"from": CALLER})["callId"]
    d.wait_state(call_id, "listening")
    d.rpc("mock.say", {"callId": call_id, "text": text})
    return call_id


def test_the_responder_gets_transfer_call_only_when_allow_to_is_set(start_daemon) -> None:
    with FakeOpenAI(api_key="sk-test") as fake:
        fake.chat_replies.put({"tool_call": {"name": "transfer_call",
                                             "arguments": {"to": ALLOWED, "message": "Transferring you now."}}})
        d = start_daemon(llm(fake, **MOCK))
        call_id = caller_says(d, "I want to talk to a person")
        record = d.wait_state(call_id, "transferred")
        assert record["transcript"][-1] == {**record["transcript"][-1], "speaker": "bot",
                                            "text": "Transferring you now."}
        [request] = fake.chat_requests
        tools = {t["function"]["name"]: t["function"] for t in request.body["tools"]}
        assert set(tools) == {"hang_up", "transfer_call"}
        assert tools["transfer_call"]["parameters"]["properties"]["to"]["enum"] == [ALLOWED, BUSY]
        assert "the model transfers the call" in d.log()


def test_no_transfer_call_tool_without_allow_to(start_daemon) -> None:
    with FakeOpenAI(api_key="sk-test") as fake:
        fake.chat_replies.put("Sure, how can I help?")
        d = start_daemon(llm(fake))
        call_id = caller_says(d, "I want to talk to a person")
        d.wait(lambda: len(d.rpc("voicecall.status", {"callId": call_id})["transcript"]) >= 3)
        [request] = fake.chat_requests
        assert [t["function"]["name"] for t in request.body["tools"]] == ["hang_up"]


def test_a_failed_model_transfer_leaves_the_call_up(start_daemon) -> None:
    with FakeOpenAI(api_key="sk-test") as fake:
        fake.chat_replies.put({"tool_call": {"name": "transfer_call", "arguments": {"to": BUSY}}})
        d = start_daemon(llm(fake, **MOCK))
        call_id = caller_says(d, "put me through")
        d.wait(lambda: "the model's transfer did not happen" in d.log())
        assert d.rpc("voicecall.status", {"callId": call_id})["state"] not in ("transferred", "error")
