"""kill -9 at many points of calls' lives, then restart: the log loads,
every acknowledged change is in it, and every call is restored or closed."""

from __future__ import annotations

import random
import threading
import time

from daemon import Daemon, remove, short_tmp

from voicecalld.control.client import Client, RpcError, Unreachable
from voicecalld.store import Store

TERMINAL = {"completed", "hangup-user", "hangup-bot", "timeout", "error", "failed", "no-answer", "busy",
            "voicemail"}
CONFIG = {
    "maxConcurrentCalls": 100,
    "maxDurationSeconds": 2,
    "mock": {"answerDelayMs": 60, "msPerChar": 2, "replyDelayMs": 20,
             "calleeReplies": [f"reply {i}" for i in range(50)]},
    "transcriptTimeoutMs": 3000,
}


class Driver(threading.Thread):
    """Runs calls until the daemon dies, recording what it acknowledged."""

    def __init__(self, socket_path: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.path = socket_path
        self.rng = random.Random(seed)
        self.acked_calls: list[str] = []
        self.acked_transcripts: list[tuple[str, str]] = []
        self.acked_ends: list[str] = []

    def run(self) -> None:
        try:
            with Client(self.path, timeout=10) as c:
                while True:
                    mode = self.rng.choice(["notify", "conversation", "conversation"])
                    try:
                        call_id = c.call("voicecall.initiate", {"message": "crash test", "mode": mode})["callId"]
                    except RpcError:
                        time.sleep(0.05)  # at the limit: restored calls still hold slots
                        continue
                    self.acked_calls.append(call_id)
                    if mode == "notify":
                        while c.call("voicecall.status", {"callId": call_id})["state"] not in TERMINAL:
                            time.sleep(0.02)
                        continue
                    for _ in range(self.rng.randint(0, 3)):
                        try:
                            reply = c.call("voicecall.continue", {"callId": call_id, "message": "and?"})
                        except RpcError:
                            break  # not answered yet, or ended: fine
                        self.acked_transcripts.append((call_id, reply["transcript"]))
                    if self.rng.random() < 0.5:
                        try:
                            c.call("voicecall.end", {"callId": call_id})
                            self.acked_ends.append(call_id)
                        except RpcError:
                            pass
        except (Unreachable, OSError, ValueError):
            return  # the daemon was killed


def test_kill_9_at_many_points_loses_nothing_acknowledged() -> None:
    tmp = short_tmp("crash")
    rng = random.Random(20261123)
    drivers: list[Driver] = []
    try:
        for round_ in range(10):
            d = Daemon(tmp, CONFIG)
            driver = Driver(d.socket_path, round_)
            driver.start()
            time.sleep(rng.uniform(0.05, 0.6))  # somewhere in some call's life
            d.kill()
            driver.join(10)
            drivers.append(driver)

            loaded = Store(str(tmp / "state")).load()
            assert loaded.corrupt <= 1, f"round {round_}: {loaded.corrupt} corrupt lines"
            records = loaded.records
            for call_id in driver.acked_calls:
                assert call_id in records, f"round {round_}: acknowledged call {call_id} missing"
            for call_id, text in driver.acked_transcripts:
                texts = [t["text"] for t in records[call_id]["transcript"]]
                assert text in texts, f"round {round_}: acknowledged reply {text!r} missing from {call_id}"
            for call_id in driver.acked_ends:
                assert records[call_id]["state"] in TERMINAL

        # A last restart: every call is restored (still live at the carrier) or closed.
        d = Daemon(tmp, CONFIG)
        try:
            records = Store(str(tmp / "state")).load().records

            def settled() -> bool:
                live = {c["callId"] for c in d.rpc("voicecall.list")["calls"]}
                for call_id in records:
                    state = d.rpc("voicecall.status", {"callId": call_id})["state"]
                    if state not in TERMINAL and call_id not in live:
                        return False
                return True

            d.wait(settled, timeout=15, what="every call restored or closed")
            assert sum(len(x.acked_calls) for x in drivers) >= 10  # the loop really exercised calls
            # Nothing restored is left in a state that would block the daemon.
            for call in d.rpc("voicecall.list")["calls"]:
                d.rpc("voicecall.end", {"callId": call["callId"]})
            assert d.rpc("daemon.status")["activeCalls"] == 0
            assert d.stop() == 0
        finally:
            d.kill()
    finally:
        remove(tmp)
