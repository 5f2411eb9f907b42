"""Control-plane speed of a real voicecalld (mock carrier):

* ``voicecall.status`` round trips over the Unix socket on one connection
  per client, with 1 and with 8 clients (each client a separate process,
  so the load generator does not share the daemon's GIL): p50/p99 latency
  and requests per second;
* ``voicecallctl status`` wall time against ``python -c pass`` measured in
  the same run (the ratio is what matters on a shared machine).

Targets (issue 3): p99 status round trip under 2 ms; voicecallctl under
2.5x bare interpreter start. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _harness import start_daemon, stop_daemon  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rpc(sock: socket.socket, buf: bytearray, rid: int, method: str, params: dict) -> dict:
    sock.sendall(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}).encode() + b"\n")
    while b"\n" not in buf:
        buf += sock.recv(65536)
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return json.loads(line)


def client(path: str, call_id: str, seconds: float, start_at: float, out: multiprocessing.Queue) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    buf = bytearray()
    for i in range(50):  # warm-up
        rpc(s, buf, i, "voicecall.status", {"callId": call_id})
    while time.time() < start_at:
        time.sleep(0.001)
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    rid = 0
    while time.perf_counter() < end:
        rid += 1
        t0 = time.perf_counter()
        reply = rpc(s, buf, rid, "voicecall.status", {"callId": call_id})
        latencies.append(time.perf_counter() - t0)
        assert reply.get("result", {}).get("callId") == call_id, reply
    s.close()
    out.put(latencies)


def load(path: str, call_id: str, clients: int, seconds: float) -> dict[str, float]:
    out: multiprocessing.Queue = multiprocessing.Queue()
    start_at = time.time() + 0.5
    procs = [multiprocessing.Process(target=client, args=(path, call_id, seconds, start_at, out))
             for _ in range(clients)]
    for p in procs:
        p.start()
    latencies: list[float] = []
    for _ in procs:
        latencies += out.get(timeout=seconds + 60)
    for p in procs:
        p.join()
    return {"clients": clients, "requests": len(latencies), "rps": len(latencies) / seconds,
            "p50_ms": percentile(latencies, 0.50) * 1e3, "p99_ms": percentile(latencies, 0.99) * 1e3}


def wall(cmd: list[str], runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="load duration per row (3)")
    parser.add_argument("--runs", type=int, default=30, help="process starts per command for the CLI rows (30)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vc-bench-"))
    path = str(tmp / "control.sock")
    config = (f'store = "{tmp}/state"\nmaxConcurrentCalls = 4\nringTimeoutMs = 3600000\n'
              f'[serve]\nport = 0\n[control]\nsocket = "{path}"\n[mock]\nanswerDelayMs = 3600000\n')
    proc = start_daemon(tmp, config, path)
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            call_id = rpc(s, bytearray(), 1, "voicecall.initiate",
                          {"message": "benchmark", "to": "+15550001234"})["result"]["callId"]
        rows = [load(path, call_id, n, args.seconds) for n in (1, 8)]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        ctl = shutil.which("voicecallctl")
        ctl_cmd = [ctl] if ctl else [sys.executable, "-m", "voicecalld.ctl"]
        bare = wall([sys.executable, "-c", "pass"], args.runs, env)
        ctl_time = wall([*ctl_cmd, "--socket", path, "status", "--call-id", call_id], args.runs, env)
    finally:
        stop_daemon(proc)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{'voicecall.status':<20}{'requests':>10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for r in rows:
        print(f"{str(r['clients']) + ' client(s)':<20}{r['requests']:>10}{r['rps']:>10.0f}"
              f"{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}")
    print(f"\n{'command':<34}{'median ms':>10}")
    print(f"{'python -c pass':<34}{bare * 1e3:>10.1f}")
    print(f"{'voicecallctl status':<34}{ctl_time * 1e3:>10.1f}   ratio {ctl_time / bare:.2f}")
    print(json.dumps({
        "benchmark": "control", "seconds": args.seconds,
        "status": [{k: round(v, 4) for k, v in r.items()} for r in rows],
        "cli": {"bare_python_ms": round(bare * 1e3, 2), "voicecallctl_status_ms": round(ctl_time * 1e3, 2),
                "ratio": round(ctl_time / bare, 3), "via": "console script" if ctl else "python -m"},
        "targets": {"status_p99_ms": 2.0, "cli_ratio": 2.5},
    }))


if __name__ == "__main__":
    main()
