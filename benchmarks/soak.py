"""Soak test: a real voicecalld on the mock carrier (or, with ``--provider
twilio``, on the fake Twilio service) driven by many concurrent callers for
a long run.

Each worker loops: place a call (notify or conversation), run 0-3
``continue`` turns, then end it, or let the simulated callee hang up
(injected), or let a notify call finish by itself. At the end it checks the
call log: every call the daemon acknowledged is there, in a terminal state,
and no line is corrupt.

Reports calls completed, errors (injected ones counted apart), p50/p99
control latency, daemon RSS growth after warm-up, and thread count against
the idle baseline. Targets (issue 9): 10 000 calls at 50 concurrent, zero
lost records, zero errors not injected, RSS growth under 10%, threads back
to baseline. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _harness import start_daemon, stop_daemon  # noqa: E402

from voicecalld.control.client import Client, RpcError, Unreachable  # noqa: E402
from voicecalld.store import Store  # noqa: E402

TERMINAL = {"completed", "hangup-user", "hangup-bot", "timeout", "error", "failed", "no-answer", "busy",
            "voicemail"}
EXPECTED_AFTER_INJECTED_HANGUP = {-32002, -32000}  # the callee hung up first: "ended"/"not found" is right


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                out[key] = int(value.split()[0])
    return out


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []   # every method except continue
        self.turns: list[float] = []       # continue: includes the callee's reply time
        self.calls: list[str] = []
        self.completed = 0
        self.errors: list[str] = []
        self.injected = 0
        self.expected_errors = 0

    def timed(self, client: Client, method: str, params: dict) -> dict:
        t0 = time.perf_counter()
        try:
            return client.call(method, params)
        finally:
            with self.lock:
                (self.turns if method == "voicecall.continue" else self.latencies).append(time.perf_counter() - t0)


class MockCallee:
    """The mock carrier's callee answers turns from mock.calleeReplies by itself."""

    def answer_turn(self, c: Client, call_id: str) -> None:
        pass

    def hang_up(self, c: Client, call_id: str) -> None:
        c.call("mock.hangup", {"callId": call_id})


class TwilioCallee:
    """On the fake Twilio the callee speaks into the daemon's <Gather>."""

    def __init__(self, fake: Any) -> None:
        self.fake = fake

    def _sid(self, c: Client, call_id: str) -> str:
        return str(c.call("voicecall.status", {"callId": call_id})["providerCallId"])

    def answer_turn(self, c: Client, call_id: str) -> None:
        sid = self._sid(c, call_id)
        heard = len(self.fake.calls[sid].said)
        threading.Thread(target=self._say, args=(sid, heard), daemon=True).start()

    def _say(self, sid: str, heard: int) -> None:
        """Reply once the question (the next thing said) has reached the callee."""
        call = self.fake.calls[sid]
        deadline = time.monotonic() + 10
        while len(call.said) <= heard and time.monotonic() < deadline:
            time.sleep(0.005)
        try:
            self.fake.callee_says(sid, "fine thanks", wait=10)
        except AssertionError:
            pass  # the call ended first; the continue reports that

    def hang_up(self, c: Client, call_id: str) -> None:
        self.fake.callee_hangs_up(self._sid(c, call_id))


def worker(path: str, seed: int, stats: Stats, target: int, deadline: float, callee: Any) -> None:
    try:
        run_calls(path, seed, stats, target, deadline, callee)
    except Unreachable as exc:
        with stats.lock:
            stats.errors.append(f"daemon unreachable: {exc}")


def run_calls(path: str, seed: int, stats: Stats, target: int, deadline: float, callee: Any) -> None:
    rng = random.Random(seed)
    with Client(path, timeout=30) as c:
        while time.monotonic() < deadline:
            with stats.lock:
                if len(stats.calls) >= target:
                    return
            mode = rng.choice(["notify", "conversation", "conversation"])
            try:
                call_id = stats.timed(c, "voicecall.initiate", {"message": "soak test call", "mode": mode})["callId"]
            except RpcError as exc:
                with stats.lock:
                    stats.errors.append(f"initiate: {exc.code} {exc.message}")
                continue
            with stats.lock:
                stats.calls.append(call_id)
            hung_up = False
            try:
                if mode == "notify":
                    while stats.timed(c, "voicecall.status", {"callId": call_id})["state"] not in TERMINAL:
                        time.sleep(0.01)
                else:
                    while stats.timed(c, "voicecall.status", {"callId": call_id})["state"] not in (
                            "listening", *TERMINAL):
                        time.sleep(0.01)
                    for _ in range(rng.randint(0, 3)):
                        callee.answer_turn(c, call_id)
                        stats.timed(c, "voicecall.continue", {"callId": call_id, "message": "how are you?"})
                    if rng.random() < 0.2:
                        hung_up = True
                        with stats.lock:
                            stats.injected += 1
                        callee.hang_up(c, call_id)
                        time.sleep(rng.uniform(0, 0.02))
                    stats.timed(c, "voicecall.end", {"callId": call_id})
                with stats.lock:
                    stats.completed += 1
            except RpcError as exc:
                with stats.lock:
                    if hung_up and exc.code in EXPECTED_AFTER_INJECTED_HANGUP:
                        stats.expected_errors += 1
                        stats.completed += 1
                    else:
                        stats.errors.append(f"{exc.code} {exc.message}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--provider", choices=("mock", "twilio"), default="mock")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vc-soak-"))
    sock = str(tmp / "control.sock")
    common = (f'store = "{tmp}/state"\ntoNumber = "+15550001234"\nmaxConcurrentCalls = {args.concurrency}\n'
              'transcriptTimeoutMs = 10000\nresponder = "off"\n')
    fake = None
    callee: Any = MockCallee()
    if args.provider == "twilio":
        from voicecalld.testing.fake_twilio import FakeTwilio

        sid, token = "AC" + "5" * 32, "soak-auth-token"
        fake = FakeTwilio(sid, token, ms_per_char=0.2, time_scale=0.02)
        fake.start()
        callee = TwilioCallee(fake)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = (
            common + f'provider = "twilio"\nfromNumber = "+15550009999"\npublicUrl = "http://127.0.0.1:{port}"\n'
            f'[serve]\nport = {port}\n[control]\nsocket = "{sock}"\n'
            '[outbound]\nnotifyHangupDelaySec = 0\ndialsPerSecond = 1000\n'
            f'[twilio]\naccountSid = "{sid}"\nauthToken = "{token}"\napiBaseUrl = "{fake.base_url}"\n')
    else:
        config = (
            common + f'[serve]\nport = 0\n[control]\nsocket = "{sock}"\n[outbound]\nnotifyHangupDelaySec = 0\n'
            '[mock]\nanswerDelayMs = 20\nmsPerChar = 0.2\nreplyDelayMs = 5\n'
            'calleeReplies = ["fine thanks", "sure", "bye"]\n')
    daemon = start_daemon(tmp, config, sock)
    try:
        time.sleep(0.5)
        baseline = proc_status(daemon.pid)
        stats = Stats()
        start = time.monotonic()
        deadline = start + args.max_seconds
        warm_rss = None
        threads = [threading.Thread(target=worker, args=(sock, i, stats, args.calls, deadline, callee))
                   for i in range(args.concurrency)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
            if warm_rss is None and len(stats.calls) >= min(1000, args.calls // 10):
                warm_rss = proc_status(daemon.pid)["VmRSS"]
        elapsed = time.monotonic() - start
        time.sleep(1.0)  # let the last calls' threads and timers settle
        end = proc_status(daemon.pid)
        with Client(sock) as c:
            active = c.call("daemon.status")["activeCalls"]
    finally:
        stop_daemon(daemon)
        if fake is not None:
            fake.stop()

    loaded = Store(str(tmp / "state")).load()
    lost = [cid for cid in stats.calls if cid not in loaded.records]
    unfinished = [cid for cid in stats.calls if cid in loaded.records
                  and loaded.records[cid]["state"] not in TERMINAL]
    lat = sorted(stats.latencies)
    p = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3) if lat else (lambda q: 0.0)
    turns = sorted(stats.turns)
    turn_p50 = turns[len(turns) // 2] * 1e3 if turns else 0.0
    warm_rss = warm_rss or baseline["VmRSS"]
    growth = (end["VmRSS"] - warm_rss) / warm_rss * 100
    shutil.rmtree(tmp, ignore_errors=True)

    rows = [("calls placed", len(stats.calls)), ("calls completed", stats.completed),
            ("calls/s", f"{len(stats.calls) / elapsed:.1f}"), ("records lost", len(lost)),
            ("records not terminal", len(unfinished)), ("corrupt log lines", loaded.corrupt),
            ("errors (not injected)", len(stats.errors)), ("injected callee hangups", stats.injected),
            ("control p50 ms", f"{p(0.5):.2f}"), ("control p99 ms", f"{p(0.99):.2f}"),
            ("continue p50 ms", f"{turn_p50:.1f}"),
            ("RSS after warm-up KiB", warm_rss), ("RSS at end KiB", end["VmRSS"]),
            ("RSS growth %", f"{growth:.1f}"), ("threads idle / end", f"{baseline['Threads']} / {end['Threads']}"),
            ("active calls at end", active)]
    for name, value in rows:
        print(f"{name:<26}{value!s:>14}")
    for err in stats.errors[:5]:
        print("  error:", err)
    print(json.dumps({
        "benchmark": "soak", "provider": args.provider, "concurrency": args.concurrency, "seconds": round(elapsed, 1),
        "calls": len(stats.calls), "completed": stats.completed, "lost_records": len(lost),
        "non_terminal_records": len(unfinished), "corrupt_lines": loaded.corrupt, "errors": len(stats.errors),
        "injected_hangups": stats.injected, "control_p50_ms": round(p(0.5), 3), "control_p99_ms": round(p(0.99), 3),
        "continue_p50_ms": round(turn_p50, 1),
        "rss_warm_kib": warm_rss, "rss_end_kib": end["VmRSS"], "rss_growth_pct": round(growth, 2),
        "threads_idle": baseline["Threads"], "threads_end": end["Threads"], "active_at_end": active,
    }))


if __name__ == "__main__":
    main()
