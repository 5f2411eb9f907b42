"""Shutdown ends every call with its final record on disk: hang-ups go out
in parallel, a carrier that never confirms one cannot hold the daemon, and
the log closes only after the work that writes to it has stopped."""

from __future__ import annotations

import json
import signal
import threading
from typing import Any

from voicecalld.store import Store

TERMINAL = {"completed", "hangup-user", "hangup-bot", "timeout", "error", "failed", "no-answer", "busy",
            "voicemail"}


def hold_hang_up(e: Any, call_id: str, release: threading.Event, timeout: float) -> None:
    """The carrier's hang-up of ``call_id`` waits for ``release`` (at most ``timeout`` s)."""
    real_hangup = e.provider.hangup

    def hangup(record: Any) -> None:
        if record.callId == call_id:
            release.wait(timeout)
        real_hangup(record)

    e.provider.hangup = hangup


def conversations(e: Any, n: int) -> list[str]:
    ids = [e.manager.initiate(f"call {i}", mode="conversation")["callId"] for i in range(n)]
    for call_id in ids:
        e.wait_state(call_id, "listening")
    return ids


def test_hang_ups_at_shutdown_run_in_parallel(make_engine) -> None:
    e = make_engine(maxConcurrentCalls=5)
    first, *others = conversations(e, 5)
    release = threading.Event()
    hold_hang_up(e, first, release, 30)  # held until every other call has ended
    # The calls may finish by themselves for 3 s (they do not), then hang-ups go out.
    stopper = threading.Thread(target=e.manager.shutdown, args=(3.0,))
    stopper.start()
    try:
        # One after another, nothing would end while the first hang-up is held.
        e.wait(lambda: all(e.manager.status(c)["state"] == "hangup-bot" for c in others), timeout=20,
               what="the other calls to be hung up while the first hang-up is in flight")
        # ... really hung up, not closed because shutdown gave up on them.
        assert all(e.manager.status(c)["error"] is None for c in others)
    finally:
        release.set()
        stopper.join(30)
    assert not stopper.is_alive()
    assert e.manager.status(first)["state"] == "hangup-bot" and e.manager.active_count == 0


def test_a_hang_up_the_carrier_never_confirms_cannot_hold_shutdown(make_engine) -> None:
    e = make_engine(maxConcurrentCalls=3)
    stuck, *others = conversations(e, 3)
    never = threading.Event()
    hold_hang_up(e, stuck, never, 60)
    stopper = threading.Thread(target=e.manager.shutdown, args=(0.2,), daemon=True)
    stopper.start()
    stopper.join(20)
    try:
        assert not stopper.is_alive(), "shutdown waited for a hang-up the carrier never confirmed"
        assert e.manager.active_count == 0
        logged = Store(e.store.directory).load().records
        assert logged[stuck]["state"] == "hangup-bot"
        assert logged[stuck]["error"] == "voicecalld stopped before the hang-up was confirmed"
        assert all(logged[c]["state"] == "hangup-bot" and logged[c]["error"] is None for c in others)
    finally:
        never.set()


def test_sigterm_with_20_answered_calls_leaves_every_final_record_on_disk(start_daemon) -> None:
    d = start_daemon({"maxConcurrentCalls": 20, "maxDurationSeconds": 600, "responder": "off"})
    ids = [d.rpc("voicecall.initiate", {"message": f"call {i}", "mode": "conversation"})["callId"]
           for i in range(20)]
    d.wait(lambda: all(c["state"] == "listening" for c in d.rpc("voicecall.list")["calls"])
           and d.rpc("daemon.status")["activeCalls"] == 20, what="20 answered calls")
    d.signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0, d.log()
    last: dict[str, dict[str, Any]] = {}
    for line in (d.store_dir / "calls.jsonl").read_text().splitlines():
        record = json.loads(line)
        last[record["callId"]] = record
    assert sorted(last) == sorted(ids)
    assert {call_id: last[call_id]["state"] for call_id in ids} == dict.fromkeys(ids, "hangup-bot")
    assert all(last[call_id]["endedAt"] is not None for call_id in ids)
    assert "Traceback" not in d.log()
