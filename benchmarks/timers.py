"""Timer wheel vs a heapq scheduler.

Two workloads, each run on both structures in the same process, best of
several repeats (the machine is shared, so ratios, not absolute times,
are what to compare):

* schedule+cancel: N timers scheduled and then cancelled before they fire
  (the common case for call deadlines: ring timeouts cancelled on answer,
  transcript waits cancelled on reply);
* schedule+cancel+expire: the same, then time runs past every deadline. A
  heap cancels lazily, so it pays for its cancelled entries only when they
  reach the top; this row shows that deferred cost (and the memory the heap
  holds until then), which the first row hides;
* fire: N timers with random deadlines, all run to expiry in tick order.

Deadlines are spread over 5 minutes of 10 ms ticks, the span of the default
maximum call duration.

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voicecalld.timers import TimerWheel  # noqa: E402


class HeapScheduler:
    """The usual alternative: a binary heap with lazy cancellation."""

    def __init__(self) -> None:
        self._heap: list[list] = []
        self._seq = itertools.count()
        self.now = 0

    def schedule(self, ticks: int, callback: Callable[[], object]) -> list:
        entry = [self.now + max(1, ticks), next(self._seq), callback, True]
        heapq.heappush(self._heap, entry)
        return entry

    def cancel(self, entry: list) -> bool:
        was, entry[3] = entry[3], False
        return was

    def advance(self, to_tick: int) -> list[Callable[[], object]]:
        due = []
        heap = self._heap
        while heap and heap[0][0] <= to_tick:
            entry = heapq.heappop(heap)
            if entry[3]:
                entry[3] = False
                due.append(entry[2])
        self.now = to_tick
        return due


def noop() -> None:
    pass


def bench_schedule_cancel(make, n: int, delays: list[int]) -> float:
    sched = make()
    start = time.perf_counter()
    handles = [sched.schedule(d, noop) for d in delays]
    for h in handles:
        sched.cancel(h)
    return time.perf_counter() - start


def bench_cancel_expire(make, n: int, delays: list[int], horizon: int) -> float:
    sched = make()
    start = time.perf_counter()
    handles = [sched.schedule(d, noop) for d in delays]
    for h in handles:
        sched.cancel(h)
    for tick in range(1, horizon + 1):
        for cb in sched.advance(tick):
            cb()
    return time.perf_counter() - start


def bench_fire(make, n: int, delays: list[int], horizon: int) -> float:
    sched = make()
    fired = 0
    start = time.perf_counter()
    for d in delays:
        sched.schedule(d, noop)
    for tick in range(1, horizon + 1):
        for cb in sched.advance(tick):
            cb()
            fired += 1
    elapsed = time.perf_counter() - start
    assert fired == n, (fired, n)
    return elapsed


def best(fn: Callable[[], float], repeats: int) -> float:
    return min(fn() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200_000, help="timers per workload (200000)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--horizon", type=int, default=30_000,
                        help="deadlines spread over this many ticks (30000 = 5 min at 10 ms)")
    args = parser.parse_args()
    rng = random.Random(1)
    delays = [rng.randint(1, args.horizon) for _ in range(args.n)]

    rows = []
    for name, workload in [
        ("schedule+cancel", lambda make: bench_schedule_cancel(make, args.n, delays)),
        ("schedule+cancel+expire", lambda make: bench_cancel_expire(make, args.n, delays, args.horizon)),
        ("fire", lambda make: bench_fire(make, args.n, delays, args.horizon)),
    ]:
        wheel = best(lambda w=workload: w(TimerWheel), args.repeats)
        heap = best(lambda w=workload: w(HeapScheduler), args.repeats)
        rows.append((name, wheel, heap, heap / wheel))

    print(f"{'workload':<24}{'wheel s':>10}{'heapq s':>10}{'heapq/wheel':>13}{'wheel ns/timer':>16}")
    for name, wheel, heap, ratio in rows:
        print(f"{name:<24}{wheel:>10.3f}{heap:>10.3f}{ratio:>13.2f}{wheel / args.n * 1e9:>16.0f}")
    result: dict[str, object] = {"benchmark": "timers", "n": args.n, "repeats": args.repeats,
                                 "horizon_ticks": args.horizon}
    for name, wheel, heap, ratio in rows:
        result[name.replace("+", "_")] = {"wheel_s": round(wheel, 4), "heapq_s": round(heap, 4),
                                          "ratio_heapq_over_wheel": round(ratio, 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
