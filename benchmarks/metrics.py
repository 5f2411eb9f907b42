"""What one metric update costs on a hot path, and what a scrape costs.

Times ``Histogram.observe`` and ``Counter.inc`` with metrics on and off
(off: no metrics listener, the update returns after a flag test), against
an empty function call as the floor, single-threaded and with 4 threads
updating the same metric at once (the lock contended), plus ``render()``
(a scrape). For scale: a media frame carries 20 ms of audio, and a webhook
request costs the daemon about a millisecond of CPU. Prints a table and
one JSON line.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voicecalld import metrics  # noqa: E402

N = 1_000_000


def per_call(fn: Callable[[], None], n: int = N, threads: int = 1) -> float:
    """Nanoseconds per call of ``fn`` (best of 3), each of ``threads`` threads making ``n // threads`` calls."""
    best = float("inf")
    per_thread = n // threads

    def run() -> None:
        for _ in range(per_thread):
            fn()

    for _ in range(3):
        workers = [threading.Thread(target=run) for _ in range(threads)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, (time.perf_counter() - t0) / (per_thread * threads) * 1e9)
    return best


def main() -> None:
    def nothing() -> None:
        pass

    def observe() -> None:
        metrics.MEDIA_FORWARD.observe(0.0003)

    def inc() -> None:
        metrics.WEBHOOKS.inc("accepted")

    rows: dict[str, float] = {"empty function call": per_call(nothing)}
    metrics.enable(False)
    rows["observe, metrics off"] = per_call(observe)
    rows["inc, metrics off"] = per_call(inc)
    metrics.enable(True)
    rows["observe, metrics on"] = per_call(observe)
    rows["inc, metrics on"] = per_call(inc)
    rows["observe, on, 4 threads"] = per_call(observe, threads=4)
    for seconds in (0.01, 0.2, 1.5):
        metrics.TURN_LATENCY.observe(seconds)
    t0 = time.perf_counter()
    for _ in range(1000):
        metrics.render()
    rows["render (one scrape)"] = (time.perf_counter() - t0) / 1000 * 1e9
    width = max(map(len, rows))
    for name, ns in rows.items():
        print(f"{name:<{width}}  {ns / 1000:9.3f} µs" if ns > 10_000 else f"{name:<{width}}  {ns:9.0f} ns")
    print(json.dumps({"benchmark": "metrics", "ns": {k: round(v, 1) for k, v in rows.items()}}))


if __name__ == "__main__":
    main()
