"""Restarts keep calls correct: a call restored while ringing still says its
message when answered; one the carrier answered while the daemon was down is
answered, not timed out as unanswered; a replayed inbound webhook of a call
that ended never starts a call again, however late it comes.

The engine tests restart an in-process engine on the same directory (the
mock carrier keeps its state in a file, as a real carrier outlives the
daemon); the Twilio tests restart the real daemon against FakeTwilio."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from daemon import Daemon, remove, short_tmp
from engine import Engine

from voicecalld.providers.mock import STATE_FILE
from voicecalld.recovery import Recovery
from voicecalld.store import Store
from voicecalld.testing.fake_twilio import Callee, FakeTwilio
from voicecalld.testing.ports import free_port

FROM = "+15550001111"
TO = "+15550002222"
CALLER = "+15557770000"


def restart(directory: str, **overrides: Any) -> Engine:
    e = Engine(directory, **overrides)
    Recovery(e.manager).start(e.manager.restore(e.store.load().records))
    return e


def carrier_answers_while_down(directory: str, call_id: str) -> None:
    """The simulated carrier's callee picks up while no daemon runs."""
    path = Path(directory) / STATE_FILE
    state = json.loads(path.read_text())
    for item in state["calls"]:
        if item["callId"] == call_id:
            item["answered"] = True
    path.write_text(json.dumps(state))


@pytest.mark.parametrize("mode", ["notify", "conversation"])
def test_call_answered_while_the_daemon_was_down_is_answered(tmp_path, mode: str) -> None:
    d = str(tmp_path)
    e = Engine(d, mock={"answerDelayMs": 60_000})
    call_id = e.manager.initiate("Build 42 failed", mode=mode)["callId"]
    e.wait_state(call_id, "ringing")
    e.crash()
    carrier_answers_while_down(d, call_id)
    # A ring deadline long past: if it were armed, the call would end as no-answer at once.
    e2 = restart(d, ringTimeoutMs=200, mock={"answerDelayMs": 60_000})
    try:
        if mode == "notify":
            record = e2.wait_state(call_id, "completed", "no-answer")
            assert record["endReason"] == "completed"
        else:
            record = e2.wait_state(call_id, "listening", "no-answer")
            assert record["state"] == "listening"
            live = e2.manager.calls.get(call_id)
            assert live is not None and set(live.timers) == {"max-duration"}
        assert record["answeredAt"] is not None
        assert [(t["speaker"], t["text"]) for t in record["transcript"]] == [("bot", "Build 42 failed")]
    finally:
        e2.close()


# --- the real daemon against FakeTwilio ----------------------------------------------------------


def twilio_config(fake: FakeTwilio, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "twilio", "fromNumber": FROM, "toNumber": TO, "publicUrl": f"http://127.0.0.1:{port}",
        "serve": {"port": port},
        "twilio": {"accountSid": fake.account_sid, "authToken": fake.auth_token, "apiBaseUrl": fake.base_url},
        "transcriptTimeoutMs": 5000, **extra,
    }


@pytest.fixture
def tmp() -> Iterator[Path]:
    path = short_tmp("restart")
    yield path
    remove(path)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.kill()


def test_call_restored_while_ringing_says_its_message_when_answered(tmp: Path, daemons: list[Daemon]) -> None:
    # The fake keeps re-sending webhooks the daemon cannot take (it is down),
    # as Twilio retries a connect failure, so the answer reaches whichever
    # daemon is up by then.
    with FakeTwilio(ms_per_char=1, webhook_retries=400, retry_delay=0.05, owned_numbers=[FROM]) as fake:
        port = free_port()
        config = twilio_config(fake, port, ringTimeoutMs=60_000, outbound={"notifyHangupDelaySec": 0})
        fake.next_callee(Callee(answer_after=4.0))
        d = Daemon(tmp, config)
        daemons.append(d)
        call_id = d.rpc("voicecall.initiate", {"message": "Build 42 failed", "mode": "notify"})["callId"]
        d.wait_state(call_id, "ringing")
        d.kill()
        logged = Store(str(tmp / "state")).load().records[call_id]
        assert logged["state"] == "ringing" and logged["openingSpoken"] is False  # not answered before the kill

        d2 = Daemon(tmp, config)
        daemons.append(d2)
        record = d2.wait_state(call_id, "completed", "no-answer", "timeout", "error", timeout=20)
        assert record["endReason"] == "completed"
        call = fake.calls[record["providerCallId"]]
        assert call.said == ["Build 42 failed"]
        assert [t["text"] for t in record["transcript"]] == ["Build 42 failed"]
        assert d2.stop() == 0


def test_replayed_inbound_webhook_of_an_ended_call_starts_nothing_after_a_restart(
        tmp: Path, daemons: list[Daemon]) -> None:
    with FakeTwilio(time_scale=0.05, ms_per_char=1, owned_numbers=[FROM]) as fake:
        port = free_port()
        base = f"http://127.0.0.1:{port}/voice/webhook"
        config = twilio_config(fake, port, inboundPolicy="allowlist", allowFrom=[CALLER],
                               inboundGreeting="Hi, this is Ada.", responder="off")
        d = Daemon(tmp, config)
        daemons.append(d)
        sid = fake.inbound_call(CALLER, FROM, base, base + "?type=status")
        call_id = d.wait(lambda: [c["callId"] for c in d.rpc("voicecall.list")["calls"]
                                  if c["providerCallId"] == sid], what="the inbound call")[0]
        fake.wait_for(lambda: fake.calls[sid].said)
        fake.callee_hangs_up(sid)
        d.wait_state(call_id, "hangup-user")
        [voice] = [x for x in fake.calls[sid].deliveries if x.kind == "voice"]
        assert d.stop() == 0

        # A new daemon: its webhook replay cache is empty, as it would be
        # after the cache's window in a long-running one.
        d2 = Daemon(tmp, config)
        daemons.append(d2)
        verbatim = requests.post(voice.url, data=voice.params, headers=voice.headers, timeout=10)
        headers = {**voice.headers, "I-Twilio-Idempotency-Token": str(uuid.uuid4())}
        fresh_token = requests.post(voice.url, data=voice.params, headers=headers, timeout=10)
        for response in (verbatim, fresh_token):
            assert response.status_code == 200
            assert "<Reject" in response.text and "<Say" not in response.text
        assert d2.rpc("voicecall.list")["calls"] == []
        lines = [json.loads(line) for line in (tmp / "state" / "calls.jsonl").read_text().splitlines() if line]
        assert {r["callId"] for r in lines if r["providerCallId"] == sid} == {call_id}
        assert Store(str(tmp / "state")).load().records[call_id]["state"] == "hangup-user"
        assert d2.stop() == 0
