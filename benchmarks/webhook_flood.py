"""Webhook latency while the webhook port is flooded, over real HTTP.

A real voicecalld (Twilio provider, ``publicUrl`` given as the whole webhook
URL) receives correctly signed Twilio status callbacks, one at a time, each
on a new connection as Twilio sends them. The latency of each (connect to
answer) is measured in three phases:

* ``quiet``: nothing else on the port;
* ``flood``: another process holds ``--idle`` idle sockets and runs
  ``--slow`` slowloris senders (a header byte every 300 ms), and keeps
  opening ``--churn`` new idle connections a second, so the server is
  closing idle ones all the time to make room;
* ``after``: the flood gone again.

Target (issue 13): every webhook answered within a second under the flood.
Also shows the daemon's thread count (bounded, whatever the flood) and its
connection counters. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _harness import start_daemon, stop_daemon  # noqa: E402

from voicecalld.testing.ports import free_port  # noqa: E402

SID = "AC" + "f" * 32
TOKEN = "flood-bench-token"
FROM, TO = "+15550001111", "+15550002222"


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def flood(port: int, idle: int, slow: int, churn: float, ready: Any, stop: Any) -> None:
    """Runs in its own process: the attacker."""
    raise_nofile()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(idle)]
    slow_socks = []
    for _ in range(slow):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"POST /voice/webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        slow_socks.append(s)

    def trickle() -> None:
        while not stop.wait(0.3):
            for i, s in enumerate(slow_socks):
                try:
                    s.sendall(b"a")
                except OSError:  # closed by the server: start another
                    s.close()
                    try:
                        s = socket.create_connection(("127.0.0.1", port), timeout=10)
                        s.sendall(b"POST /voice/webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                        slow_socks[i] = s
                    except OSError:
                        pass

    threading.Thread(target=trickle, daemon=True).start()
    ready.set()
    opened = 0
    started = time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - started) * churn)
        while opened < due:
            try:
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            except OSError:
                pass
            opened += 1
            if len(socks) > idle:
                socks.pop(0).close()  # keep our own fd count bounded
        stop.wait(0.01)
    for s in socks + slow_socks:
        s.close()


def callbacks(url: str, call_sid: str, count: int, first: int) -> list[tuple[bytes, dict[str, str]]]:
    from voicecalld.providers.twilio_signature import compute_signature

    out = []
    for n in range(count):
        params = [("AccountSid", SID), ("ApiVersion", "2010-04-01"), ("CallSid", call_sid),
                  ("CallStatus", "ringing"), ("Direction", "outbound-api"), ("From", FROM), ("To", TO),
                  ("SequenceNumber", str(first + n)), ("Timestamp", "Mon, 23 Nov 2026 22:00:00 +0000"),
                  ("CallbackSource", "call-progress-events")]
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Host": url.split("/")[2],
                   "X-Twilio-Signature": compute_signature(TOKEN, url, params),
                   "I-Twilio-Idempotency-Token": str(uuid.uuid4())}
        out.append((urlencode(params).encode(), headers))
    return out


def post(port: int, target: str, body: bytes, headers: dict[str, str]) -> tuple[float, int]:
    """One request on a new connection; (seconds, status) with status 0 on failure."""
    import http.client

    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", target, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        status = response.status
    except OSError:
        status = 0
    finally:
        conn.close()
    return time.perf_counter() - start, status


def phase(port: int, target: str, requests: list[tuple[bytes, dict[str, str]]]) -> dict[str, Any]:
    latencies, failures = [], 0
    for body, headers in requests:
        seconds, status = post(port, target, body, headers)
        latencies.append(seconds)
        failures += status != 200
    latencies.sort()

    def q(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e3, 2)

    return {"requests": len(latencies), "failures": failures, "p50Ms": q(0.5), "p95Ms": q(0.95),
            "p99Ms": q(0.99), "maxMs": round(latencies[-1] * 1e3, 2)}


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("Threads:"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="webhooks per phase")
    parser.add_argument("--idle", type=int, default=2000, help="idle sockets the attacker holds")
    parser.add_argument("--slow", type=int, default=50, help="slowloris senders")
    parser.add_argument("--churn", type=float, default=200.0, help="new idle connections per second")
    args = parser.parse_args()
    raise_nofile()

    from voicecalld.control.client import Client
    from voicecalld.testing.fake_twilio import Callee, FakeTwilio

    twilio = FakeTwilio(SID, TOKEN, ms_per_char=1, time_scale=1.0)
    twilio.start()
    twilio.set_callee(TO, Callee(outcome="no-answer"))
    port = free_port()
    public = f"http://127.0.0.1:{port}/voice/webhook"
    tmp = Path(tempfile.mkdtemp(prefix="vc-flood-"))
    sock = str(tmp / "control.sock")
    config = (
        f'provider = "twilio"\nfromNumber = "{FROM}"\ntoNumber = "{TO}"\npublicUrl = "{public}"\n'
        f'ringTimeoutMs = 600000\nstore = "{tmp}/state"\n[serve]\nport = {port}\n[control]\nsocket = "{sock}"\n'
        f'[twilio]\naccountSid = "{SID}"\nauthToken = "{TOKEN}"\napiBaseUrl = "{twilio.base_url}"\n')
    daemon = start_daemon(tmp, config, sock)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    attacker = None
    results: dict[str, dict[str, Any]] = {}
    try:
        with Client(sock) as c:
            call_id = c.call("voicecall.initiate", {"message": "benchmark"})["callId"]
        call_sid = twilio.wait_call(to=TO, timeout=10).sid
        url = f"{public}?{urlencode({'callId': call_id, 'type': 'status'})}"
        target = url[len(f"http://127.0.0.1:{port}"):]
        bodies = callbacks(url, call_sid, 3 * args.requests, 10)
        threads_quiet = threads_of(daemon.pid)
        results["quiet"] = phase(port, target, bodies[:args.requests])

        ready = ctx.Event()
        attacker = ctx.Process(target=flood, args=(port, args.idle, args.slow, args.churn, ready, stop))
        attacker.start()
        if not ready.wait(120):
            raise SystemExit("the flood did not get going")
        results["flood"] = phase(port, target, bodies[args.requests:2 * args.requests])
        threads_flood = threads_of(daemon.pid)
        with Client(sock) as c:
            connections = c.call("daemon.status")["webhook"].get("connections")
        stop.set()
        attacker.join(30)
        attacker = None
        results["after"] = phase(port, target, bodies[2 * args.requests:])
    finally:
        stop.set()
        if attacker is not None:
            attacker.join(10)
            attacker.kill()
        stop_daemon(daemon)
        twilio.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{'phase':<8}{'requests':>9}{'failed':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name, r in results.items():
        print(f"{name:<8}{r['requests']:>9}{r['failures']:>8}{r['p50Ms']:>9}{r['p95Ms']:>9}{r['p99Ms']:>9}"
              f"{r['maxMs']:>9}")
    print(f"flood: {args.idle} idle sockets, {args.slow} slowloris senders, {args.churn:g} new connections/s; "
          f"daemon threads {threads_quiet} quiet, {threads_flood} flooded; server {connections}")
    worst = results["flood"]["maxMs"]
    print(f"slowest webhook under the flood: {worst} ms (target < 1000 ms)")
    print(json.dumps({"benchmark": "webhook_flood", "idle": args.idle, "slow": args.slow, "churnPerSecond": args.churn,
                      **{name: r for name, r in results.items()}, "threadsQuiet": threads_quiet,
                      "threadsFlood": threads_flood, "connections": connections, "targetMaxMs": 1000,
                      "met": worst < 1000 and results["flood"]["failures"] == 0}))


if __name__ == "__main__":
    main()
