"""CallManager flows on the mock carrier, with the real timer wheel and store."""

from __future__ import annotations

import threading

import pytest

from voicecalld.errors import (
    CallNotFound,
    InvalidParams,
    LimitReached,
    NotConnected,
    ShuttingDown,
    TranscriptTimeout,
    TurnInProgress,
)
from voicecalld.store import Store


def test_notify_call_runs_to_completed(engine) -> None:
    r = engine.manager.initiate("Your build failed")
    assert r["state"] == "initiated"
    final = engine.wait_state(r["callId"], "completed")
    assert final["endReason"] == "completed" and final["answeredAt"] and final["endedAt"]
    assert final["providerCallId"].startswith("mock-")
    assert final["transcript"][0]["speaker"] == "bot" and final["transcript"][0]["text"] == "Your build failed"
    names = engine.event_names(r["callId"])
    assert names[-1] == "call.ended" and "call.transcript" in names
    states = [e["data"]["to"] for e in engine.events if e["event"] == "call.state"]
    assert states == ["ringing", "answered", "speaking", "completed"]
    assert engine.manager.active_count == 0
    # The log's last snapshot is the terminal one.
    assert Store(engine.store.directory).load().records[r["callId"]]["state"] == "completed"


def test_notify_hangup_waits_for_the_message_to_finish(make_engine) -> None:
    e = make_engine(mock={"msPerChar": 10, "answerDelayMs": 10}, outbound={"notifyHangupDelaySec": 0.2})
    message = "x" * 40  # 0.4 s of speech
    r = e.manager.initiate(message)
    final = e.wait_state(r["callId"], "completed")
    spoken_at = final["transcript"][0]["timestamp"]
    assert final["endedAt"] - spoken_at >= 400 + 200 - 15  # speech + delay, tolerance for ms rounding


def test_conversation_continue_returns_each_reply_in_turn(make_engine) -> None:
    e = make_engine(mock={"calleeReplies": ["Yes, deploy it", "Thanks, bye"]})
    call_id = e.manager.initiate("Hi, this is the deploy bot", mode="conversation")["callId"]
    e.wait_state(call_id, "listening")
    assert e.manager.continue_(call_id, "Should I deploy?") == {"callId": call_id, "transcript": "Yes, deploy it"}
    assert e.manager.continue_(call_id, "Done. Anything else?")["transcript"] == "Thanks, bye"
    assert e.manager.end(call_id) == {"callId": call_id, "ok": True, "endReason": "hangup-bot"}
    record = e.manager.status(call_id)
    assert [(t["speaker"], t["text"]) for t in record["transcript"]] == [
        ("bot", "Hi, this is the deploy bot"), ("bot", "Should I deploy?"), ("user", "Yes, deploy it"),
        ("bot", "Done. Anything else?"), ("user", "Thanks, bye")]
    assert record["state"] == "hangup-bot"


def test_continue_before_answer_is_refused(make_engine) -> None:
    e = make_engine(mock={"answerDelayMs": 500})
    call_id = e.manager.initiate("hello", mode="conversation")["callId"]
    with pytest.raises(NotConnected):
        e.manager.continue_(call_id, "are you there?")


def test_continue_times_out_with_a_clear_error(make_engine) -> None:
    e = make_engine(transcriptTimeoutMs=150)
    call_id = e.manager.initiate("hello", mode="conversation")["callId"]
    e.wait_state(call_id, "listening")
    with pytest.raises(TranscriptTimeout) as info:
        e.manager.continue_(call_id, "anyone?")
    assert "no reply from the callee within 0.15 s" in info.value.message
    assert e.manager.status(call_id)["state"] == "listening"  # the call survives
    e.provider.say(call_id, "sorry, I was away")  # a late reply is not lost
    e.wait(lambda: e.manager.status(call_id)["transcript"][-1]["text"] == "sorry, I was away")


def test_second_concurrent_continue_is_refused(make_engine) -> None:
    e = make_engine(transcriptTimeoutMs=2000)
    call_id = e.manager.initiate("hello", mode="conversation")["callId"]
    e.wait_state(call_id, "listening")
    results: list[object] = []
    first = threading.Thread(target=lambda: results.append(e.manager.continue_(call_id, "question one?")))
    first.start()
    e.wait(lambda: e.manager.status(call_id)["transcript"][-1]["text"] == "question one?")
    with pytest.raises(TurnInProgress) as info:
        e.manager.continue_(call_id, "question two?")
    assert info.value.code == -32006
    e.provider.say(call_id, "answer one")
    first.join(5)
    assert results == [{"callId": call_id, "transcript": "answer one"}]


def test_continue_fails_when_the_callee_hangs_up(make_engine) -> None:
    e = make_engine(transcriptTimeoutMs=5000)
    call_id = e.manager.initiate("hello", mode="conversation")["callId"]
    e.wait_state(call_id, "listening")
    errors: list[Exception] = []

    def run() -> None:
        try:
            e.manager.continue_(call_id, "still there?")
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    e.wait(lambda: e.manager.status(call_id)["transcript"][-1]["text"] == "still there?")
    e.provider.callee_hangup(call_id)
    t.join(5)
    assert isinstance(errors[0], NotConnected) and "ended (hangup-user)" in errors[0].message
    assert e.manager.status(call_id)["endReason"] == "hangup-user"


def test_speak_on_a_live_call(make_engine) -> None:
    e = make_engine()
    call_id = e.manager.initiate("hello", mode="conversation")["callId"]
    e.wait_state(call_id, "listening")
    assert e.manager.speak(call_id, "one more thing") == {"callId": call_id, "ok": True}
    e.wait_state(call_id, "speaking", "listening")
    assert e.manager.status(call_id)["transcript"][-1]["text"] == "one more thing"


def test_commands_on_ended_and_unknown_calls(engine) -> None:
    call_id = engine.manager.initiate("bye")["callId"]
    engine.wait_state(call_id, "completed")
    with pytest.raises(NotConnected):
        engine.manager.speak(call_id, "hello?")
    with pytest.raises(NotConnected):
        engine.manager.end(call_id)
    with pytest.raises(CallNotFound) as info:
        engine.manager.status("00000000-0000-0000-0000-000000000000")
    assert info.value.code == -32000


@pytest.mark.parametrize("kwargs,fragment", [
    ({"message": ""}, "message must be a non-empty string"),
    ({"message": 5}, "message must be a non-empty string"),
    ({"message": "x" * 3001}, "the limit is 3000"),
    ({"message": "hi", "to": "5550001234"}, "to must be an E.164 number"),
    ({"message": "hi", "mode": "shout"}, "mode must be notify or conversation"),
])
def test_initiate_rejects_bad_params(engine, kwargs, fragment) -> None:
    with pytest.raises(InvalidParams) as info:
        engine.manager.initiate(**kwargs)
    assert fragment in info.value.message
    assert engine.manager.active_count == 0


def test_initiate_needs_a_destination(make_engine) -> None:
    e = make_engine(toNumber=None)
    with pytest.raises(InvalidParams, match="no destination"):
        e.manager.initiate("hi")


def test_concurrency_limit_holds_under_50_racing_threads(make_engine) -> None:
    # No dial queue (outbound.maxQueued = 0): a call past the limit is refused (test_dialer: queued).
    e = make_engine(maxConcurrentCalls=3, mock={"answerDelayMs": 2000}, outbound={"maxQueued": 0})
    barrier = threading.Barrier(50)
    ok: list[str] = []
    refused: list[LimitReached] = []
    lock = threading.Lock()

    def dial() -> None:
        barrier.wait()
        try:
            r = e.manager.initiate("hello")
            with lock:
                ok.append(r["callId"])
        except LimitReached as exc:
            with lock:
                refused.append(exc)

    threads = [threading.Thread(target=dial) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == 3 and len(refused) == 47
    assert refused[0].code == -32001 and "3 of 3 concurrent calls" in refused[0].message
    assert e.manager.active_count == 3
    for call_id in ok:
        e.manager.end(call_id)
    assert e.manager.active_count == 0
    e.manager.initiate("room again")  # slots were released


def test_max_duration_hangs_up_with_timeout_counted_from_answer(make_engine) -> None:
    e = make_engine(maxDurationSeconds=0.3, mock={"answerDelayMs": 200})
    call_id = e.manager.initiate("hello", mode="conversation")["callId"]
    final = e.wait_state(call_id, "timeout")
    assert final["endReason"] == "timeout"
    assert final["endedAt"] - final["answeredAt"] >= 300 - 10


def test_ring_timeout_gives_no_answer(make_engine) -> None:
    e = make_engine(ringTimeoutMs=100, mock={"answerDelayMs": 5000})
    call_id = e.manager.initiate("hello")["callId"]
    final = e.wait_state(call_id, "no-answer")
    assert final["answeredAt"] is None and final["endedAt"] - final["startedAt"] >= 100 - 10


def test_callee_hangup_is_hangup_user(make_engine) -> None:
    e = make_engine()
    call_id = e.manager.initiate("hello", mode="conversation")["callId"]
    e.wait_state(call_id, "listening")
    e.provider.callee_hangup(call_id)
    assert e.wait_state(call_id, "hangup-user")["endReason"] == "hangup-user"


def test_no_network_io_under_the_manager_lock(make_engine) -> None:
    """A carrier that blocks must not stall other calls' commands."""
    e = make_engine(maxConcurrentCalls=2)
    slow = threading.Event()
    original = e.provider.initiate

    def blocking_initiate(record):
        if record.to == "+15550002222":
            slow.wait(30)
        return original(record)

    e.provider.initiate = blocking_initiate  # type: ignore[method-assign]
    t = threading.Thread(target=e.manager.initiate, args=("slow one",), kwargs={"to": "+15550002222"})
    t.start()
    e.wait(lambda: e.manager.active_count == 1)
    assert len(e.manager.active_calls()) == 1
    fast = e.manager.initiate("fast one")
    e.wait_state(fast["callId"], "completed")
    # The whole second call ran while the first one's carrier request was
    # still blocked: nothing waited behind it.
    assert t.is_alive() and not slow.is_set()
    slow.set()
    t.join(5)


def test_failed_initiate_leaves_a_failed_record_and_frees_the_slot(make_engine) -> None:
    from voicecalld.errors import ProviderError

    e = make_engine()

    def refuse(record):
        raise ProviderError("The 'To' number is not a valid phone number (21211)", provider_code=21211)

    e.provider.initiate = refuse  # type: ignore[method-assign]
    with pytest.raises(ProviderError):
        e.manager.initiate("hello")
    (record,) = e.manager.history(5)
    assert record["state"] == "failed" and "21211" in record["error"]
    assert e.manager.active_count == 0


def test_shutdown_refuses_new_calls_and_ends_active_ones(make_engine) -> None:
    e = make_engine(mock={"answerDelayMs": 10})
    call_id = e.manager.initiate("hello", mode="conversation")["callId"]
    e.wait_state(call_id, "listening")
    e.manager.shutdown(grace=0.05)
    with pytest.raises(ShuttingDown):
        e.manager.initiate("too late")
    assert e.manager.status(call_id)["endReason"] == "hangup-bot"


def test_status_falls_back_to_the_log(make_engine, tmp_path) -> None:
    e = make_engine()
    call_id = e.manager.initiate("hello")["callId"]
    e.wait_state(call_id, "completed")
    e.manager.calls._recent.clear()  # forget the in-memory copy
    assert e.manager.status(call_id)["state"] == "completed"
    assert [r["callId"] for r in e.manager.history(10)] == [call_id]


# --- inbound -----------------------------------------------------------------------------------


def test_inbound_disabled_rejects_with_a_terminal_record(engine) -> None:
    result = engine.provider.inbound("+15550003333", "+15550009999")
    assert result["rejected"] is True
    record = engine.manager.status(result["callId"])
    assert record["state"] == "hangup-bot" and record["direction"] == "inbound"
    assert record["error"] == "rejected: inbound calls are disabled"


def test_inbound_allowlist_accepts_and_greets(make_engine) -> None:
    e = make_engine(inboundPolicy="allowlist", allowFrom=["+15550003333"], inboundGreeting="Hi, it's the bot")
    result = e.provider.inbound("+15550003333", None)
    call_id = result["callId"]
    record = e.wait_state(call_id, "listening")
    assert record["direction"] == "inbound" and record["mode"] == "conversation"
    assert record["transcript"][0] == {**record["transcript"][0], "speaker": "bot", "text": "Hi, it's the bot"}
    e.provider.say(call_id, "what's the weather")
    e.wait(lambda: e.manager.status(call_id)["transcript"][-1]["text"] == "what's the weather")


def test_inbound_counts_against_the_limit(make_engine) -> None:
    e = make_engine(inboundPolicy="open", maxConcurrentCalls=1, mock={"answerDelayMs": 2000})
    e.manager.initiate("busy line")
    result = e.provider.inbound("+15550003333", None)
    assert result["rejected"] is True
    assert "limit" in e.manager.status(result["callId"])["error"]


def test_inbound_rejection_is_recorded_once_per_carrier_call(engine) -> None:
    first, accepted = engine.manager.accept_inbound("+15550003333", None, "CA-retry")
    again, accepted2 = engine.manager.accept_inbound("+15550003333", None, "CA-retry")
    assert not accepted and not accepted2 and first["callId"] == again["callId"]
    assert len(engine.manager.history(10)) == 1


BYPASS_ATTEMPTS = [
    "", "anonymous", "Anonymous", "+", "15550003333", "5550003333", "0003333", "3333",
    "+15550003333\n", " +15550003333", "+15550003333 ", "+1 555 000 3333", "+1555000333３",
    "+1555000333\u0663", "+015550003333", "+15550003333;ext=1", "sip:+15550003333@example.com",
    "+155500033330", "+1555000333", None, 15550003333, ["+15550003333"],
]


@pytest.mark.parametrize("caller", BYPASS_ATTEMPTS, ids=[repr(c) for c in BYPASS_ATTEMPTS])
@pytest.mark.parametrize("policy", ["allowlist", "pairing"])
def test_allowlist_bypass_attempts_are_rejected(make_engine, policy, caller) -> None:
    e = make_engine(inboundPolicy=policy, allowFrom=["+15550003333"])
    _, accepted = e.manager.accept_inbound(caller, None, None)  # type: ignore[arg-type]
    assert accepted is False


def test_allowlist_exact_number_passes(make_engine) -> None:
    e = make_engine(inboundPolicy="pairing", allowFrom=["+15550003333"])
    _, accepted = e.manager.accept_inbound("+15550003333", None, None)
    assert accepted is True


def test_open_policy_accepts_anonymous(make_engine) -> None:
    e = make_engine(inboundPolicy="open")
    _, accepted = e.manager.accept_inbound("anonymous", None, None)
    assert accepted is True


def test_refused_speak_is_reported_and_marked(make_engine) -> None:
    from voicecalld.errors import ProviderError

    e = make_engine()
    call_id = e.manager.initiate("hello", mode="conversation")["callId"]
    e.wait_state(call_id, "listening")

    def refuse(record, action):
        raise ProviderError("the carrier refused")

    e.provider.speak = refuse  # type: ignore[method-assign]
    with pytest.raises(ProviderError):
        e.manager.speak(call_id, "are you there?")
    record = e.manager.status(call_id)
    assert record["state"] == "listening" and record["transcript"][-1]["undelivered"] is True


def test_provider_id_of_a_call_ended_during_dialing_is_not_kept(make_engine) -> None:
    e = make_engine()
    original = e.provider.initiate
    holder: dict = {}

    def slow_initiate(record):
        holder["id"] = record.callId
        e.manager.end(record.callId)  # ended while the carrier request is still in flight
        return original(record)

    e.provider.initiate = slow_initiate  # type: ignore[method-assign]
    e.manager.initiate("hello")
    assert e.manager.status(holder["id"])["state"] == "hangup-bot"
    assert e.manager.calls._by_provider_id == {}
