"""What the benchmarks share: starting a real voicecalld on a config file
and waiting until its control socket answers, and stopping it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_daemon(tmp: Path, config: str, socket_path: str, timeout: float = 20.0,
                 root: Path = ROOT) -> subprocess.Popen:
    """Write ``config`` to ``tmp/v.toml``, run the daemon from the source
    tree ``root`` (this one by default; stderr to ``tmp/daemon.log``), and
    return once ``socket_path`` accepts."""
    (tmp / "v.toml").write_text(config)
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.Popen([sys.executable, "-m", "voicecalld", "--config", str(tmp / "v.toml")], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "daemon.log", "wb"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(socket_path)
            return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"voicecalld did not start; see {tmp / 'daemon.log'}:\n{(tmp / 'daemon.log').read_text()[-2000:]}")


def stop_daemon(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_jiffies() -> tuple[int, int, int]:
    """(busy, stolen, total) CPU time of the whole machine so far, in clock
    ticks (/proc/stat). Busy counts every process, ours and anyone else's;
    stolen is time the hypervisor gave our virtual CPUs to someone else."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    steal = fields[7] if len(fields) > 7 else 0
    total = sum(fields[:8])
    return total - idle - steal, steal, total


def machine_use(before: tuple[int, int, int], after: tuple[int, int, int]) -> dict[str, float]:
    """Cores busy and cores stolen between two ``machine_jiffies``."""
    total = max(1, after[2] - before[2])
    cpus = os.cpu_count() or 1
    return {"busy": round(cpus * (after[0] - before[0]) / total, 2),
            "stolen": round(cpus * (after[1] - before[1]) / total, 2)}


class SpeedProbe:
    """How slow the CPU runs, apart from stolen time: a thread that, every
    ``every`` seconds, runs the same small pure-Python loop and notes the
    CPU time it took (``time.thread_time``). On a virtual machine whose
    cores share their silicon with other tenants (hyperthreads, caches,
    clock speed), the same work costs more CPU time although nothing is
    stolen. ``stop`` returns the median cost over the cheapest seen, which
    starts as the best of 20 runs made when the probe is created."""

    def __init__(self, every: float = 0.25, work: int = 20_000) -> None:
        self._every, self._work = every, work
        self._costs: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="speed-probe", daemon=True)
        self.best = min(self._measure() for _ in range(20))

    def _measure(self) -> float:
        started = time.thread_time()
        total = 0
        for i in range(self._work):
            total += i * i % 7
        return time.thread_time() - started

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._costs.append(self._measure())

    def start(self) -> SpeedProbe:
        self._thread.start()
        return self

    def stop(self) -> float:
        """The median slowdown while it ran (1.0: as fast as the reference)."""
        self._stop.set()
        self._thread.join(5)
        costs = sorted(self._costs) or [self.best]
        self.best = min(self.best, costs[0])
        return round(costs[len(costs) // 2] / self.best, 2)
