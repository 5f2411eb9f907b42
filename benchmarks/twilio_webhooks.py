"""Cost of the Twilio webhook path, in-process (no sockets), best of several repeats:

* validate: one X-Twilio-Signature check of a typical status callback
  (about 30 form parameters; both port variants are computed, as always);
* twiml: building a conversation utterance document (Gather around a Say);
* webhook: a signed status callback through the WSGI app (parse, verify,
  replay check, dispatch, answer);
* replay: the same request again, answered from the replay cache.

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from werkzeug.test import Client  # noqa: E402

from voicecalld import config as cfgmod  # noqa: E402
from voicecalld.manager import CallManager  # noqa: E402
from voicecalld.providers import twiml  # noqa: E402
from voicecalld.providers.twilio import TwilioProvider  # noqa: E402
from voicecalld.providers.twilio_signature import compute_signature, validate  # noqa: E402
from voicecalld.store import Store  # noqa: E402
from voicecalld.timers import TimerService  # noqa: E402
from voicecalld.webhook import WebhookApp  # noqa: E402
from voicecalld.workerpool import WorkerPool  # noqa: E402

TOKEN = "fa4e0000" * 4
PUBLIC = "https://voice.example.com"


def status_params(n: int) -> list[tuple[str, str]]:
    params = [("AccountSid", "AC" + "0" * 32), ("ApiVersion", "2010-04-01"), ("CallSid", f"CA{n:032x}"),
              ("CallStatus", "ringing"), ("Direction", "outbound-api"), ("From", "+15550001111"),
              ("To", "+15550002222"), ("Caller", "+15550001111"), ("Called", "+15550002222"),
              ("SequenceNumber", "1"), ("Timestamp", "Mon, 23 Nov 2026 22:00:00 +0000"),
              ("CallbackSource", "call-progress-events")]
    for prefix in ("From", "To", "Caller", "Called"):
        params += [(f"{prefix}City", ""), (f"{prefix}State", ""), (f"{prefix}Zip", ""), (f"{prefix}Country", "US")]
    return params


def best(fn: Callable[[], int], repeats: int) -> float:
    """Seconds per operation, best of ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        count = fn()
        times.append((time.perf_counter() - start) / count)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2000, help="operations per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n = args.n

    url = PUBLIC + "/voice/webhook?type=status"
    params = status_params(1)
    signature = compute_signature(TOKEN, url, params)

    def bench_validate() -> int:
        for _ in range(n):
            validate(TOKEN, url, signature, params)
        return n

    def bench_twiml() -> int:
        for _ in range(n):
            twiml.utterances(["Would you like to ship version 2 today?"], played_url=url + "&turn=t",
                             voice=None, language="en-US", gather_action=url + "&turn=t")
        return n

    with tempfile.TemporaryDirectory() as tmp:
        cfg = cfgmod.from_mapping({"provider": "twilio", "fromNumber": "+15550001111", "publicUrl": PUBLIC,
                                   "store": tmp, "twilio": {"accountSid": "AC" + "0" * 32, "authToken": TOKEN}},
                                  env={})
        pool = WorkerPool(2)
        timers = TimerService(pool)
        store = Store(tmp)
        provider = TwilioProvider()
        provider.public_url = PUBLIC
        CallManager(cfg, provider, store, timers)
        client = Client(WebhookApp(provider, cfg.serve.path, lambda: {"status": "ok"}))
        requests = []
        for i in range(n * args.repeats):
            p = status_params(i)
            headers = {"X-Twilio-Signature": compute_signature(TOKEN, url, p),
                       "I-Twilio-Idempotency-Token": str(uuid.uuid4())}
            requests.append((urlencode(p), headers))
        fresh = iter(requests)

        def bench_webhook() -> int:
            for _ in range(n):
                body, headers = next(fresh)
                resp = client.post("/voice/webhook?type=status", data=body, headers=headers,
                                   content_type="application/x-www-form-urlencoded")
                assert resp.status_code == 200, resp.status_code
            return n

        def bench_replay() -> int:
            body, headers = requests[0]
            for _ in range(n):
                resp = client.post("/voice/webhook?type=status", data=body, headers=headers,
                                   content_type="application/x-www-form-urlencoded")
                assert resp.status_code == 200
            return n

        results = {"validate": best(bench_validate, args.repeats), "twiml": best(bench_twiml, args.repeats),
                   "webhook": best(bench_webhook, args.repeats), "replay": best(bench_replay, args.repeats)}
        store.close()

    print(f"{'operation':<10} {'us/op':>10} {'ops/s':>12}")
    for name, seconds in results.items():
        print(f"{name:<10} {seconds * 1e6:>10.1f} {1 / seconds:>12.0f}")
    print(json.dumps({"benchmark": "twilio_webhooks", "n": n, "repeats": args.repeats,
                      "us_per_op": {k: round(v * 1e6, 2) for k, v in results.items()}}))


if __name__ == "__main__":
    main()
