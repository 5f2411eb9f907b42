"""Webhook throughput over real HTTP: the daemon's WSGI app against a bare
werkzeug app that answers 200, on the same server settings.

Both servers are separate processes built the same way (werkzeug's
threaded ``make_server`` with the daemon's request handler); the load comes
from other processes, each with a few keep-alive connections, so the
generator does not share either server's interpreter lock.

* ``bare``: a WSGI app that reads the body and returns ``200 <Response/>``;
* ``voicecalld``: the real daemon (Twilio provider) receiving correctly
  signed status callbacks for a live call, each one distinct (its own
  SequenceNumber and idempotency token), so every request goes through
  signature verification, the replay check, parsing and the call manager.

Target (issue 3): daemon throughput at least 0.6 of the bare app's.
``--metrics compare`` instead measures what the metrics cost: two daemons,
one with a metrics listener and one without, under the same load in
alternating rounds (target: throughput off / on under 1.03).
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _harness import cpu_seconds, start_daemon, stop_daemon  # noqa: E402

from voicecalld.testing.ports import free_port  # noqa: E402

SID = "AC" + "c" * 32
TOKEN = "webhook-bench-token"
FROM, TO = "+15550001111", "+15550002222"


def bare_server(port: int) -> None:
    """The baseline: werkzeug's threaded server, the daemon's handler settings, a trivial app."""
    from werkzeug.serving import WSGIRequestHandler, make_server
    from werkzeug.wrappers import Request, Response

    class Handler(WSGIRequestHandler):
        timeout = 30

        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        Request(environ).get_data()
        return Response("<Response/>", mimetype="text/xml")(environ, start_response)

    make_server("127.0.0.1", port, app, threaded=True, request_handler=Handler).serve_forever()


def load(port: int, path: str, bodies: list[tuple[str, dict[str, str]]], connections: int, seconds: float,
         start_at: float, out: Any) -> None:
    """Post the prepared requests round-robin over keep-alive connections."""
    import threading

    done = [0]
    errors = [0]
    lock = threading.Lock()

    def worker(offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = offset
        end = start_at + seconds
        while time.time() < start_at:
            time.sleep(0.001)
        while time.time() < end:
            body, headers = bodies[i % len(bodies)]
            i += connections
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            with lock:
                done[0] += 1
                errors[0] += response.status != 200
        conn.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((done[0], errors[0]))


def measure(port: int, path: str, bodies: list[tuple[str, dict[str, str]]], procs: int, connections: int,
            seconds: float) -> tuple[float, int]:
    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    start_at = time.time() + 1.0
    share = [bodies[k::procs] for k in range(procs)]
    workers = [ctx.Process(target=load, args=(port, path, share[k], connections, seconds, start_at, out))
               for k in range(procs)]
    for w in workers:
        w.start()
    total = errors = 0
    for _ in workers:
        n, e = out.get(timeout=seconds + 60)
        total, errors = total + n, errors + e
    for w in workers:
        w.join()
    return total / seconds, errors


def signed_callbacks(public: str, path: str, call_id: str, call_sid: str, count: int) -> list[tuple[str, dict]]:
    from voicecalld.providers.twilio_signature import compute_signature

    url = f"{public}{path}?callId={call_id}&type=status"
    out = []
    for n in range(count):
        params = [("AccountSid", SID), ("ApiVersion", "2010-04-01"), ("CallSid", call_sid),
                  ("CallStatus", "ringing"), ("Direction", "outbound-api"), ("From", FROM), ("To", TO),
                  ("SequenceNumber", str(n + 10)), ("Timestamp", "Mon, 23 Nov 2026 22:00:00 +0000"),
                  ("CallbackSource", "call-progress-events")]
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   "X-Twilio-Signature": compute_signature(TOKEN, url, params),
                   "I-Twilio-Idempotency-Token": str(uuid.uuid4())}
        out.append((urlencode(params), headers))
    return out


def start_twilio_daemon(twilio: Any, metrics: bool) -> tuple[Any, Path, int, str, str]:
    """A daemon on the fake Twilio with one live (ringing) call: (process, tmp, port, callId, CallSid)."""
    from voicecalld.control.client import Client

    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="vc-webhook-"))
    sock = str(tmp / "control.sock")
    config = (
        f'provider = "twilio"\nfromNumber = "{FROM}"\ntoNumber = "{TO}"\npublicUrl = "http://127.0.0.1:{port}"\n'
        f'ringTimeoutMs = 600000\nstore = "{tmp}/state"\n[serve]\nport = {port}\n[control]\nsocket = "{sock}"\n'
        f'[twilio]\naccountSid = "{SID}"\nauthToken = "{TOKEN}"\napiBaseUrl = "{twilio.base_url}"\n'
        + ('[metrics]\nlisten = "127.0.0.1:0"\n' if metrics else ""))
    daemon = start_daemon(tmp, config, sock)
    with Client(sock) as c:
        call_id = c.call("voicecall.initiate", {"message": "benchmark"})["callId"]
        call_sid = c.call("voicecall.status", {"callId": call_id})["providerCallId"]
    return daemon, tmp, port, call_id, call_sid


def compare(args: argparse.Namespace) -> None:
    """--metrics compare: the same load on two daemons, metrics off and on, in alternating rounds."""
    from voicecalld.control.client import Client
    from voicecalld.testing.fake_twilio import Callee, FakeTwilio

    twilio = FakeTwilio(SID, TOKEN, ms_per_char=1, time_scale=1.0)
    twilio.start()
    twilio.set_callee(TO, Callee(outcome="no-answer"))
    started = {flag: start_twilio_daemon(twilio, flag) for flag in (False, True)}
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu_per_request: dict[bool, list[float]] = {False: [], True: []}  # daemon CPU µs per request
    errors = {False: 0, True: 0}
    try:
        bodies = {flag: signed_callbacks(f"http://127.0.0.1:{port}", "/voice/webhook", call_id, sid, 100_000)
                  for flag, (_, _, port, call_id, sid) in started.items()}
        for _ in range(args.rounds):
            for flag in (False, True):
                daemon, _, port, call_id, _ = started[flag]
                cpu0 = cpu_seconds(daemon.pid)
                rps, err = measure(port, f"/voice/webhook?callId={call_id}&type=status", bodies[flag], args.procs,
                                   args.connections, args.seconds)
                cpu1 = cpu_seconds(daemon.pid)
                rates[flag].append(rps)
                cpu_per_request[flag].append((cpu1 - cpu0) / max(1.0, rps * args.seconds) * 1e6)
                errors[flag] += err
        with Client(str(started[True][1] / "control.sock")) as c:
            listen = c.call("daemon.status")["metrics"]["listen"]
        import urllib.request

        with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as r:
            scraped = r.read().decode()
        accepted = next(line for line in scraped.splitlines()
                        if line.startswith('voicecalld_webhook_requests_total{outcome="accepted"}'))
    finally:
        for daemon, tmp, *_ in started.values():
            stop_daemon(daemon)
            shutil.rmtree(tmp, ignore_errors=True)
        twilio.stop()
    ratios = [off / on for off, on in zip(rates[False], rates[True], strict=True)]
    cpu_ratios = [on / off for off, on in zip(cpu_per_request[False], cpu_per_request[True], strict=True)]
    print(f"{'round':<7}{'off req/s':>10}{'on req/s':>10}{'off/on':>8}{'off CPU µs/req':>16}{'on CPU µs/req':>15}"
          f"{'on/off':>8}")
    for i in range(args.rounds):
        print(f"{i + 1:<7}{rates[False][i]:>10.0f}{rates[True][i]:>10.0f}{ratios[i]:>8.3f}"
              f"{cpu_per_request[False][i]:>16.0f}{cpu_per_request[True][i]:>15.0f}{cpu_ratios[i]:>8.3f}")

    def span(values: list[float]) -> str:
        return f"{min(values):.3f} .. {max(values):.3f} (median {sorted(values)[len(values) // 2]:.3f})"

    print(f"cost of metrics: throughput off/on {span(ratios)}; daemon CPU per request on/off {span(cpu_ratios)}; "
          f"target < 1.03; scraped {accepted}")
    print(json.dumps({"benchmark": "webhook-metrics", "seconds": args.seconds, "rounds": args.rounds,
                      "off_rps": [round(r, 1) for r in rates[False]], "on_rps": [round(r, 1) for r in rates[True]],
                      "off_cpu_us_per_request": [round(r, 1) for r in cpu_per_request[False]],
                      "on_cpu_us_per_request": [round(r, 1) for r in cpu_per_request[True]],
                      "throughput_ratios": [round(r, 3) for r in ratios],
                      "cpu_ratios": [round(r, 3) for r in cpu_ratios],
                      "errors": errors, "target_ratio": 1.03}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--connections", type=int, default=4, help="keep-alive connections per process")
    parser.add_argument("--metrics", choices=("off", "on", "compare"), default="off",
                        help="the daemon's metrics listener ([metrics] listen); compare: one daemon with and one "
                        "without, in alternating rounds, and the cost ratio of each round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per daemon with --metrics compare")
    args = parser.parse_args()
    if args.metrics == "compare":
        compare(args)
        return

    from voicecalld.testing.fake_twilio import Callee, FakeTwilio

    ctx = mp.get_context("spawn")
    bare_port = free_port()
    bare = ctx.Process(target=bare_server, args=(bare_port,), daemon=True)
    bare.start()

    twilio = FakeTwilio(SID, TOKEN, ms_per_char=1, time_scale=1.0)
    twilio.start()
    twilio.set_callee(TO, Callee(outcome="no-answer"))
    daemon, tmp, port, call_id, call_sid = start_twilio_daemon(twilio, args.metrics == "on")
    try:
        requests_needed = 200_000
        bodies = signed_callbacks(f"http://127.0.0.1:{port}", "/voice/webhook", call_id, call_sid,
                                  requests_needed)
        bare_rps, bare_err = measure(bare_port, "/voice/webhook", bodies, args.procs, args.connections,
                                     args.seconds)
        daemon_rps, daemon_err = measure(port, f"/voice/webhook?callId={call_id}&type=status", bodies,
                                         args.procs, args.connections, args.seconds)
    finally:
        stop_daemon(daemon)
        bare.terminate()
        twilio.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    ratio = daemon_rps / bare_rps
    print(f"{'server':<14}{'req/s':>10}{'non-200':>9}")
    print(f"{'bare werkzeug':<14}{bare_rps:>10.0f}{bare_err:>9}")
    print(f"{'voicecalld':<14}{daemon_rps:>10.0f}{daemon_err:>9}   ratio {ratio:.2f} (target >= 0.6)")
    print(json.dumps({"benchmark": "webhook", "seconds": args.seconds, "metrics": args.metrics,
                      "connections": args.procs * args.connections, "bare_rps": round(bare_rps, 1),
                      "daemon_rps": round(daemon_rps, 1), "ratio": round(ratio, 3), "bare_errors": bare_err,
                      "daemon_errors": daemon_err, "target_ratio": 0.6}))


if __name__ == "__main__":
    main()
