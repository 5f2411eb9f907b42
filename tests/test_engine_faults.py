"""Faults inside the engine cost at most the request they hit: a call log
that cannot be written, a carrier that fails a continue's speech. The real
CallManager runs on the mock carrier with the real timer wheel; the log is
the real Store whose file writes fail when a test says so (as on a full
disk)."""

from __future__ import annotations

import errno
import json
import os
import resource
import threading
from collections.abc import Callable
from typing import Any

import pytest
import requests
from daemon import Daemon, remove, short_tmp
from engine import Engine

from voicecalld.control.client import RpcError
from voicecalld.errors import CallNotFound, NotConnected, ProviderError, StoreFailed, TurnInProgress
from voicecalld.store import Store

Rule = Callable[[dict[str, Any]], bool]


class FullDisk(Store):
    """The real store, whose writes fail with ENOSPC while ``rule`` says so
    for the record being written (the bytes never reach the file)."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.rule: Rule | None = None
        self.refused: list[dict[str, Any]] = []

    def _write_all(self, data: bytes) -> None:
        rule = self.rule
        if rule is not None and data.strip():
            record = json.loads(data)
            if rule(record):
                self.refused.append(record)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super()._write_all(data)


def engine_with_full_disk(make_engine: Callable[..., Engine], **overrides: Any) -> tuple[Engine, FullDisk]:
    e = make_engine(store_class=FullDisk, **overrides)
    assert isinstance(e.store, FullDisk)
    return e, e.store


def final(record: dict[str, Any]) -> bool:
    return record.get("endedAt") is not None


def logged(store: Store, call_id: str) -> dict[str, Any]:
    return Store(store.directory).load().records[call_id]


# --- the call log cannot be written --------------------------------------------------------------


def test_a_failed_final_write_still_ends_the_call_and_frees_its_slot(make_engine) -> None:
    e, store = engine_with_full_disk(make_engine, maxConcurrentCalls=1)
    store.rule = final
    call_id = e.manager.initiate("Your build failed")["callId"]
    e.wait(lambda: e.manager.active_count == 0, what="the call to leave the live table")
    assert e.manager.status(call_id)["state"] == "completed"
    assert e.event_names(call_id)[-1] == "call.ended"
    assert store.refused and final(store.refused[0])
    assert "No space left on device" in (store.failure or "")
    assert logged(store, call_id)["state"] != "completed"  # really not on disk (yet)

    store.rule = None  # space again: the next call goes through and clears the failure
    second = e.manager.initiate("Second try")["callId"]
    assert store.failure is None
    e.wait_state(second, "completed")
    # ... and the first call's final record, kept in memory, is on disk now.
    e.wait(lambda: logged(store, call_id)["state"] == "completed", what="the first call's final record")


def test_new_calls_are_refused_while_the_log_cannot_be_written(make_engine) -> None:
    e, store = engine_with_full_disk(make_engine, inboundPolicy="open")
    dialed: list[str] = []
    real_initiate = e.provider.initiate
    e.provider.initiate = lambda r: (dialed.append(r.callId), real_initiate(r))[1]  # type: ignore[method-assign]
    store.rule = lambda record: True

    with pytest.raises(StoreFailed) as info:
        e.manager.initiate("hello")
    assert info.value.code == -32005
    assert info.value.message.startswith("the call log cannot be written: No space left on device")
    assert dialed == [] and e.manager.active_count == 0

    snapshot, accepted = e.manager.accept_inbound("+15550003333", None, "CA-full-disk")
    assert accepted is False and e.manager.active_count == 0
    assert e.manager.status(snapshot["callId"])["error"].startswith("rejected: the call log cannot be written")

    store.rule = None
    call_id = e.manager.initiate("hello again")["callId"]
    assert dialed == [call_id] and store.failure is None
    e.wait_state(call_id, "completed")


def test_a_call_keeps_going_when_one_of_its_writes_fails(make_engine) -> None:
    e, store = engine_with_full_disk(make_engine, mock={"calleeReplies": ["yes", "no"]})
    call_id = e.manager.initiate("Deploy?", mode="conversation")["callId"]
    e.wait_state(call_id, "listening")
    once = {"left": 1}

    def first_user_line(record: dict[str, Any]) -> bool:
        if once["left"] and any(t["speaker"] == "user" for t in record["transcript"]):
            once["left"] -= 1
            return True
        return False

    store.rule = first_user_line
    # The reply's write fails; the callee's words still reach the continue.
    assert e.manager.continue_(call_id, "Shall I?")["transcript"] == "yes"
    assert store.refused and store.failure is not None
    assert e.manager.continue_(call_id, "Sure?")["transcript"] == "no"
    assert store.failure is None
    e.manager.end(call_id)
    texts = [t["text"] for t in logged(store, call_id)["transcript"]]
    assert texts == ["Deploy?", "Shall I?", "yes", "Sure?", "no"]  # full snapshots: nothing lost


def test_end_reports_the_log_failure_not_a_carrier_failure(make_engine) -> None:
    e, store = engine_with_full_disk(make_engine, maxConcurrentCalls=1)
    call_id = e.manager.initiate("hello", mode="conversation")["callId"]
    e.wait_state(call_id, "listening")
    store.rule = final
    with pytest.raises(StoreFailed) as info:
        e.manager.end(call_id)
    assert not isinstance(info.value, ProviderError) and info.value.code == -32005
    assert e.manager.active_count == 0 and e.manager.status(call_id)["state"] == "hangup-bot"
    assert e.manager.live_record(call_id) is None


def test_a_dialed_call_whose_carrier_id_cannot_be_logged_is_hung_up(make_engine) -> None:
    e, store = engine_with_full_disk(make_engine)
    store.rule = lambda record: record.get("providerCallId") is not None
    hung_up: list[str] = []
    real_hangup = e.provider.hangup
    e.provider.hangup = lambda r: (hung_up.append(r.callId), real_hangup(r))[1]  # type: ignore[method-assign]
    with pytest.raises(StoreFailed):
        e.manager.initiate("hello")
    assert len(hung_up) == 1 and e.manager.active_count == 0
    record = e.manager.status(hung_up[0])
    assert record["state"] == "error" and "call log cannot be written" in record["error"]


# --- a continue whose speech fails -------------------------------------------------------------------


@pytest.mark.parametrize("failure", [
    NotConnected("call x has already ended at Twilio"),
    CallNotFound("x"),
    RuntimeError("connection reset"),
    ProviderError("the carrier refused"),
], ids=lambda exc: type(exc).__name__)
def test_a_continue_whose_speech_fails_leaves_no_turn_behind(make_engine, failure: Exception) -> None:
    e = make_engine(mock={"calleeReplies": ["first", "second", "third"]}, transcriptTimeoutMs=5000)
    call_id = e.manager.initiate("hello", mode="conversation")["callId"]
    e.wait_state(call_id, "listening")
    unclaimed: list[str] = []
    e.manager.on_unclaimed = lambda cid, text: unclaimed.append(text)
    real_speak = e.provider.speak
    fail_once = threading.Event()

    def speak(record: Any, action: Any) -> None:
        if not fail_once.is_set():
            fail_once.set()
            raise failure
        real_speak(record, action)

    e.provider.speak = speak  # type: ignore[method-assign]
    with pytest.raises(Exception) as info:
        e.manager.continue_(call_id, "are you there?")
    assert not isinstance(info.value, TurnInProgress)
    # The callee's next words are not swallowed by a dead turn ...
    e.provider.say(call_id, "hello?")
    e.wait(lambda: unclaimed == ["hello?"], what="the callee's words to reach the responder")
    # ... and the next continue is not refused as "turn in progress".
    reply = e.manager.continue_(call_id, "sorry, can you hear me now?")
    assert reply["transcript"] in ("first", "second", "third")


# --- the real daemon, whose call log hits a file size limit -----------------------------------------


def test_daemon_with_an_unwritable_log_ends_calls_refuses_new_ones_and_recovers() -> None:
    """RLIMIT_FSIZE makes every write that would grow calls.jsonl fail with
    EFBIG ("File too large"), in the real daemon process, as a full disk
    would; lifting it is the disk getting room again."""
    tmp = short_tmp("fsize")
    store_dir = tmp / "state"
    store_dir.mkdir(parents=True)
    # Old ended calls make the log larger than the daemon's own output will
    # grow during the test, so the limit stops only the log.
    with open(store_dir / "calls.jsonl", "w") as fh:
        for i in range(2000):
            fh.write(json.dumps({"callId": f"old-{i}", "provider": "mock", "state": "completed",
                                 "endedAt": 1, "pad": "o" * 400}) + "\n")
    d = Daemon(tmp, {"maxConcurrentCalls": 1, "responder": "off"}, env={"WATCHDOG_USEC": "400000"})
    try:
        first = d.rpc("voicecall.initiate", {"message": "hello", "mode": "conversation"})["callId"]
        d.wait_state(first, "listening")
        log_size = os.path.getsize(store_dir / "calls.jsonl")
        resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE, (log_size, resource.RLIM_INFINITY))

        with pytest.raises(RpcError) as info:
            d.rpc("voicecall.end", {"callId": first})
        assert info.value.code == -32005
        assert info.value.message.startswith("the call log cannot be written: File too large")
        status = d.rpc("daemon.status")
        assert status["activeCalls"] == 0 and status["store"]["ok"] is False
        assert "File too large" in status["store"]["error"]
        health = requests.get(f"http://127.0.0.1:{status['webhook']['port']}/healthz", timeout=10)
        assert health.status_code == 503 and health.json() == {"status": "unhealthy"}
        assert any(p.startswith("call log cannot be written: File too large")
                   for p in d.rpc("daemon.status")["health"]["problems"])
        with pytest.raises(RpcError) as refused:
            d.rpc("voicecall.initiate", {"message": "again", "mode": "conversation"})
        assert refused.value.code == -32005 and d.rpc("daemon.status")["activeCalls"] == 0
        # Not a reason for systemd to restart the daemon (which would not free
        # the disk): the watchdog pings go on.
        pings = d.notify.lines().count("WATCHDOG=1")
        d.wait(lambda: d.notify.lines().count("WATCHDOG=1") >= pings + 2, what="two more watchdog pings")
        assert d.rpc("daemon.status")["store"]["ok"] is False

        resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        second = d.rpc("voicecall.initiate", {"message": "room again", "mode": "conversation"})["callId"]
        assert d.rpc("daemon.status")["store"] == {"ok": True, "error": None,
                                                   "path": str(store_dir / "calls.jsonl")}
        assert requests.get(f"http://127.0.0.1:{status['webhook']['port']}/healthz", timeout=10).status_code == 200
        d.wait_state(second, "listening")
        d.rpc("voicecall.end", {"callId": second})
        assert d.stop() == 0
        records = Store(str(store_dir)).load().records
        assert records[first]["state"] == "hangup-bot"  # written once the log took writes again
        assert records[second]["state"] == "hangup-bot"
    finally:
        d.kill()
        remove(tmp)
