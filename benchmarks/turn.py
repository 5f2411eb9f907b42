"""The daemon's own share of a conversational turn.

In-process: the call manager on the mock carrier (real timer wheel, real
JSONL store with its fsyncs), the auto-responder, and the fake OpenAI
server answering Chat Completions with no delay over real HTTP on
127.0.0.1. Inbound calls are accepted and answered; then, turn after turn,
a final caller transcript is handed to ``CallManager.handle_event`` (as a
carrier webhook or media stream would) and the clock stops when the reply
is handed to ``provider.speak``.

Two numbers per turn:

* total: final transcript in -> reply handed to the carrier, including the
  HTTP round trip to the (zero-delay) fake LLM;
* daemon share: total minus the time spent inside the HTTP request to the
  LLM (connect, send, the fake's own work, receive), i.e. what voicecalld
  itself adds to a turn: persisting and publishing the transcript, handing
  the turn to the responder's pool, building the request from the record,
  parsing and cleaning the reply, persisting and speaking it. It is broken
  down into the call-log writes (two fsyncs: the caller's words and the
  reply are durable before anything acts on them), the hand-off to the
  responder's worker thread, and the rest;
* thread CPU time: what the daemon's threads actually compute per turn
  (HTTP client work included), which a busy machine does not inflate the
  way it inflates waits for a CPU or the disk.

Each call takes ``--turns-per-call`` turns (a realistic conversation, so
the transcript and request grow as in real calls), then ends; the next
call starts. The call log goes to a temporary directory on the default
temp filesystem; ``--store /dev/shm/x`` takes the disk out of the picture.
Prints a table and one JSON line.

    python benchmarks/turn.py [--turns 1000] [--store DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voicecalld import config as cfgmod  # noqa: E402
from voicecalld import llm_client  # noqa: E402
from voicecalld.calls import CallEvent, CallRecord, EventType, Speak  # noqa: E402
from voicecalld.events import EventBus  # noqa: E402
from voicecalld.manager import CallManager  # noqa: E402
from voicecalld.providers.mock import MockProvider  # noqa: E402
from voicecalld.responder import Responder  # noqa: E402
from voicecalld.store import Store  # noqa: E402
from voicecalld.timers import TimerService  # noqa: E402
from voicecalld.workerpool import WorkerPool  # noqa: E402

REPLY = "Sure, I can help with that. What time works for you?"
FIRST_SENTENCE = "Sure, I can help with that."
API_KEY = "sk-bench"

#: The fake LLM runs in a process of its own, as a real one would: its
#: server threads must not compete with the daemon's for the GIL.
FAKE = f"""
import sys
from voicecalld.testing.fake_openai import FakeOpenAI
fake = FakeOpenAI(api_key={API_KEY!r}, default_chat_reply={REPLY!r}).start()
print(fake.port, flush=True)
sys.stdin.read()
answered = sum(1 for r in fake.chat_requests if r.status == 200)
fake.stop()
print(answered, flush=True)
"""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def filesystem(path: str) -> str:
    """The type of the filesystem holding ``path`` (the fsync cost depends on it)."""
    best, kind = "", "?"
    path = os.path.realpath(path)
    with open("/proc/mounts") as fh:
        for line in fh:
            fields = line.split()
            mount = fields[1]
            if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                best, kind = mount, fields[2]
    return kind


class Turn:
    """Timestamps (perf_counter_ns) of one turn."""

    def __init__(self) -> None:
        self.start = self.unclaimed = self.worker = self.spoken = 0
        self.http_ns = 0
        self.log_ns = 0
        self.cpu_ns = 0        # thread CPU time: the event thread's handle_event + the worker's turn
        self.worker_cpu = 0    # the worker's thread_time_ns when it took the turn


class Bench:
    def __init__(self, store_dir: str, base_url: str) -> None:
        self.config = cfgmod.from_mapping({
            "inboundPolicy": "open", "fromNumber": "+15550009999", "maxConcurrentCalls": 1,
            "responseBaseUrl": base_url, "responseApiKey": API_KEY, "responseTimeoutMs": 5000,
            "mock": {"answerDelayMs": 1, "msPerChar": 0, "replyDelayMs": 1},
        }, env={})
        self.pool = WorkerPool(8)
        self.timers = TimerService(self.pool)  # the daemon's 10 ms tick
        self.timers.start()
        self.store = Store(store_dir)
        self.bus = EventBus()
        self.provider = MockProvider(self.timers)
        self.manager = CallManager(self.config, self.provider, self.store, self.timers, self.bus)
        self.responder = Responder(self.manager, self.bus)
        self.spoken = threading.Event()
        self.current = Turn()
        self._instrument()

    def _instrument(self) -> None:
        speak, serve = self.provider.speak, self.responder._serve
        payloads = llm_client.ChatRequest.payloads
        unclaimed, append = self.manager.on_unclaimed, self.store.append
        assert unclaimed is not None
        now = time.perf_counter_ns

        def timed_speak(record: CallRecord, action: Speak) -> None:
            if action.text == FIRST_SENTENCE:  # the reply starts being spoken (the rest follows)
                self.current.spoken = now()
                self.current.cpu_ns += time.thread_time_ns() - self.current.worker_cpu
                self.spoken.set()
            speak(record, action)

        def timed_payloads(request: llm_client.ChatRequest) -> Iterator[str]:
            # The reply streams: the time spent waiting for it (connect,
            # send, the fake's work, receive) until the first sentence is spoken.
            events = payloads(request)
            while True:
                started = now()
                try:
                    payload = next(events)
                except StopIteration:
                    return
                finally:
                    if not self.spoken.is_set():
                        self.current.http_ns += now() - started
                yield payload

        def timed_unclaimed(call_id: str, text: str) -> None:
            self.current.unclaimed = now()
            unclaimed(call_id, text)

        def timed_serve(call_id: str) -> None:
            self.current.worker = now()
            self.current.worker_cpu = time.thread_time_ns()
            serve(call_id)

        def timed_append(record: dict[str, Any]) -> None:
            started = now()
            try:
                append(record)
            finally:
                self.current.log_ns += now() - started

        self.provider.speak = timed_speak  # type: ignore[method-assign]
        llm_client.ChatRequest.payloads = timed_payloads  # type: ignore[method-assign]
        self.responder._serve = timed_serve  # type: ignore[method-assign]
        self.manager.on_unclaimed = timed_unclaimed
        self.store.append = timed_append  # type: ignore[method-assign]

    def wait_state(self, call_id: str, *states: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.manager.status(call_id)["state"] not in states:
            if time.monotonic() > deadline:
                raise RuntimeError(f"call {call_id} did not reach {states}")
            time.sleep(0.0005)

    def turn(self, call_id: str, i: int) -> dict[str, float]:
        self.wait_state(call_id, "listening")  # the previous reply (or the greeting) has played
        self.spoken.clear()
        t = self.current = Turn()
        event = CallEvent(EventType.SPEECH, uuid.uuid4().hex, call_id=call_id,
                          transcript=f"This is what the caller says in turn {i}.")
        t.start = time.perf_counter_ns()
        cpu = time.thread_time_ns()
        self.manager.handle_event(event)
        t.cpu_ns += time.thread_time_ns() - cpu
        if not self.spoken.wait(5.0):
            raise RuntimeError("no reply was spoken within 5 s")
        total = (t.spoken - t.start) / 1e6
        share = total - t.http_ns / 1e6
        log, handoff = t.log_ns / 1e6, (t.worker - t.unclaimed) / 1e6
        return {"total": total, "share": share, "log": log, "handoff": handoff, "cpu": share - log - handoff,
                "thread_cpu": t.cpu_ns / 1e6}

    def run(self, turns: int, per_call: int, warmup: int) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        done = -warmup
        while done < turns:
            call_id = self.provider.inbound("+15550002222", None)["callId"]
            for _ in range(per_call):
                if done >= turns:
                    break
                sample = self.turn(call_id, done)
                if done >= 0:
                    for key, value in sample.items():
                        out.setdefault(key, []).append(value)
                done += 1
            self.manager.end(call_id)
            self.wait_state(call_id, "hangup-bot")
        return out

    def close(self) -> None:
        self.responder.stop()
        self.timers.stop()
        self.pool.stop()
        self.store.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--turns", type=int, default=1000)
    p.add_argument("--turns-per-call", type=int, default=20)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--store", metavar="DIR", help="call log directory (default: a temporary directory)")
    args = p.parse_args()
    root = str(Path(__file__).resolve().parent.parent)
    fake = subprocess.Popen([sys.executable, "-c", FAKE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": root})
    assert fake.stdin is not None and fake.stdout is not None
    try:
        port = int(fake.stdout.readline())
        with tempfile.TemporaryDirectory(prefix="vc-turn-") as tmp:
            store_dir = args.store or tmp
            fs = filesystem(store_dir)
            bench = Bench(store_dir, f"http://127.0.0.1:{port}/v1")
            try:
                results = bench.run(args.turns, args.turns_per_call, args.warmup)
            finally:
                bench.close()
        fake.stdin.close()
        answered = int(fake.stdout.readline() or 0)
    finally:
        if fake.poll() is None:
            fake.wait(10)
    n = len(results["total"])
    print(f"turn latency: {n} turns ({args.turns_per_call} per call, {args.warmup} warm-up), call log on {fs}, "
          f"{answered} chat requests answered, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    rows = [("total: transcript in -> reply to carrier", "total"), ("daemon share (total - LLM request)", "share"),
            ("  of which: call log writes (fsync)", "log"), ("  of which: hand-off to the responder pool", "handoff"),
            ("  of which: the rest (CPU work)", "cpu"),
            ("daemon thread CPU time per turn (incl. HTTP client)", "thread_cpu")]
    print(f"{'':52} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'mean ms':>8}")
    for label, key in rows:
        v = results[key]
        print(f"{label:52} {percentile(v, 50):8.3f} {percentile(v, 90):8.3f} {percentile(v, 99):8.3f} "
              f"{max(v):8.3f} {statistics.fmean(v):8.3f}")
    share_p99 = percentile(results["share"], 99)
    print(f"target: daemon share p99 < 5 ms: {'met' if share_p99 < 5 else 'NOT met'}")
    summary: dict[str, Any] = {"benchmark": "turn", "turns": n, "turns_per_call": args.turns_per_call,
                               "store_fs": fs, "load_average": round(os.getloadavg()[0], 1)}
    for key in ("total", "share", "log", "handoff", "cpu", "thread_cpu"):
        summary[f"{key}_p50_ms"] = round(percentile(results[key], 50), 3)
        summary[f"{key}_p99_ms"] = round(percentile(results[key], 99), 3)
    summary.update({"target_p99_ms": 5.0, "target_met": share_p99 < 5})
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
