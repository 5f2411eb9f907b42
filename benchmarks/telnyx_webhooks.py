"""Telnyx webhook intake: what acknowledging a webhook costs.

The Telnyx provider verifies the Ed25519 signature, parses the envelope,
deduplicates ``data.id`` and queues the event for the call's worker before
it answers 200; the REST work an event causes happens later, off the
request. Rows:

* handler (verify on / skip): ``TelnyxProvider.handle_webhook`` called
  in-process on prepared requests, so only the intake is timed;
* verify only: ``telnyx_signature.verify`` alone, the floor of the above;
* http ack: signed POSTs over a real socket to a running daemon's webhook
  server (werkzeug, one connection per request), one at a time, so this is
  the latency Telnyx sees;
* http ack, slow API: the same while every Telnyx REST request takes
  ``--rest-latency`` seconds and each webhook makes the daemon send one
  (``call.initiated`` of an inbound call: answer it). The ack does not
  wait for it.

Events name calls nobody has, except in the last row, so the workers have
little to do. Best of ``--repeat`` runs; the machine is shared, so compare
rows rather than trusting absolute numbers. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402
from werkzeug.test import EnvironBuilder  # noqa: E402
from werkzeug.wrappers import Request  # noqa: E402

from voicecalld import config as C  # noqa: E402
from voicecalld.daemon import Daemon  # noqa: E402
from voicecalld.providers import telnyx_signature  # noqa: E402
from voicecalld.testing import _telnyx_wire  # noqa: E402
from voicecalld.testing.fake_telnyx import FakeTelnyx  # noqa: E402
from voicecalld.testing.ports import free_port  # noqa: E402


def event(event_type: str = "call.dtmf.received", **payload: Any) -> bytes:
    return _telnyx_wire.encode({"data": {"record_type": "event", "event_type": event_type, "id": str(uuid.uuid4()),
                                         "occurred_at": _telnyx_wire.iso_now(),
                                         "payload": {"call_control_id": "v3:bench-" + uuid.uuid4().hex,
                                                     "digit": "5", **payload}},
                                "meta": {"attempt": 1, "delivered_to": "http://127.0.0.1/voice/webhook"}})


def start_daemon(fake: FakeTelnyx, tmp: str, skip: bool) -> Daemon:
    port = free_port()
    cfg = C.from_mapping({
        "provider": "telnyx", "fromNumber": "+15550009999", "publicUrl": f"http://127.0.0.1:{port}",
        "store": tmp, "control": {"socket": f"{tmp}/control.sock"}, "serve": {"port": port},
        "skipSignatureVerification": skip, "inboundPolicy": "open", "maxConcurrentCalls": 1000, "inboundGreeting": "",
        "telnyx": {"apiKey": fake.api_key, "connectionId": fake.connection_id, "publicKey": fake.public_key_b64,
                   "apiBaseUrl": fake.base_url}}, {})
    daemon = Daemon(cfg)
    daemon.start()
    return daemon


def per_call(seconds: float, n: int) -> float:
    return seconds / n * 1e6


def bench_handler(fake: FakeTelnyx, daemon: Daemon, n: int) -> float:
    requests_ = []
    for _ in range(n):
        body = event()
        headers = _telnyx_wire.signature_headers(fake.signing_key, body)
        environ = EnvironBuilder(method="POST", path="/voice/webhook", data=body, headers=headers,
                                 content_type="application/json").get_environ()
        requests_.append(Request(environ))
    for r in requests_:
        r.get_data(cache=True)
    start = time.perf_counter()
    for r in requests_:
        response = daemon.provider.handle_webhook(r)
        assert response.status_code == 200, response.get_data()
    return per_call(time.perf_counter() - start, n)


def bench_verify(fake: FakeTelnyx, n: int) -> float:
    key = telnyx_signature.load_public_key(fake.public_key_b64)
    signed = []
    for _ in range(n):
        body = event()
        h = _telnyx_wire.signature_headers(fake.signing_key, body)
        signed.append((body, h[_telnyx_wire.SIGNATURE_HEADER], h[_telnyx_wire.TIMESTAMP_HEADER]))
    now = time.time()
    start = time.perf_counter()
    for body, sig, ts in signed:
        telnyx_signature.verify(key, signature_b64=sig, timestamp=ts, raw_body=body, now=now)
    return per_call(time.perf_counter() - start, n)


def bench_http(fake: FakeTelnyx, url: str, bodies: list[bytes]) -> list[float]:
    latencies = []
    for body in bodies:
        headers = {"Content-Type": "application/json", **_telnyx_wire.signature_headers(fake.signing_key, body)}
        start = time.perf_counter()
        response = requests.post(url, data=body, headers=headers, timeout=10)
        latencies.append(time.perf_counter() - start)
        assert response.status_code == 200, response.text
    return latencies


def slow_api_bodies(fake: FakeTelnyx, n: int) -> tuple[list[str], list[bytes]]:
    """call.initiated webhooks of n inbound calls; each makes the daemon send
    an answer command. The fake's own webhooks for them go to a closed port,
    so the daemon sees only these."""
    nowhere = f"http://127.0.0.1:{free_port()}/"
    ccids = [fake.inbound_call("+15557770000", "+15550009999", nowhere, ring_timeout=600) for _ in range(n)]
    bodies = []
    for ccid in ccids:
        payload = fake.calls[ccid].base_payload()
        bodies.append(_telnyx_wire.encode({
            "data": {"record_type": "event", "event_type": "call.initiated", "id": str(uuid.uuid4()),
                     "occurred_at": _telnyx_wire.iso_now(), "payload": payload},
            "meta": {"attempt": 1, "delivered_to": nowhere}}))
    return ccids, bodies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="webhooks per in-process run")
    parser.add_argument("--http", type=int, default=300, help="webhooks per HTTP run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rest-latency", type=float, default=0.2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the daemon's per-request and warning lines are noise here

    results: dict[str, Any] = {}
    with FakeTelnyx(answer_after=0.01) as fake:
        for skip in (False, True):
            with tempfile.TemporaryDirectory(prefix="vc-bench-", dir="/tmp") as tmp:
                daemon = start_daemon(fake, tmp, skip)
                try:
                    label = "skip" if skip else "verify"
                    results[f"handler_{label}_us"] = min(bench_handler(fake, daemon, args.n)
                                                         for _ in range(args.repeat))
                    if not skip:
                        url = f"http://127.0.0.1:{daemon.webhook_port}{daemon.config.serve.path}"
                        runs = [bench_http(fake, url, [event() for _ in range(args.http)])
                                for _ in range(args.repeat)]
                        best = min(runs, key=statistics.median)
                        results["http_ack_p50_ms"] = statistics.median(best) * 1e3
                        results["http_ack_p99_ms"] = pct(best, 0.99) * 1e3
                        slow_n = min(args.http, 50)
                        ccids, bodies = slow_api_bodies(fake, slow_n)
                        fake.timing.rest_latency = args.rest_latency
                        slow = bench_http(fake, url, bodies)
                        results["slow_api_ack_p50_ms"] = statistics.median(slow) * 1e3
                        results["slow_api_ack_max_ms"] = max(slow) * 1e3
                        results["slow_api_rest_latency_ms"] = args.rest_latency * 1e3
                        fake.wait_for(lambda ids=ccids: all(fake.calls[c].answered for c in ids), timeout=60,
                                      what="every inbound call answered")
                        fake.timing.rest_latency = 0.0
                finally:
                    daemon.manager.shutdown(0)
                    daemon.provider.stop()
                    daemon.control and daemon.control.close()
                    daemon.webhook_server.shutdown()
                    daemon.timers.stop()
                    daemon.pool.stop()
                    daemon.store.close()
        results["verify_only_us"] = min(bench_verify(fake, args.n) for _ in range(args.repeat))

    rows = [
        ("handler, signature verified", f"{results['handler_verify_us']:.1f} us/webhook"),
        ("handler, skipSignatureVerification", f"{results['handler_skip_us']:.1f} us/webhook"),
        ("Ed25519 verify alone", f"{results['verify_only_us']:.1f} us/webhook"),
        ("http ack p50 / p99", f"{results['http_ack_p50_ms']:.2f} / {results['http_ack_p99_ms']:.2f} ms"),
        (f"http ack, REST at {args.rest_latency * 1e3:.0f} ms: p50 / max",
         f"{results['slow_api_ack_p50_ms']:.2f} / {results['slow_api_ack_max_ms']:.2f} ms"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(json.dumps({"benchmark": "telnyx_webhooks", **{k: round(v, 3) for k, v in results.items()}}))


if __name__ == "__main__":
    main()
