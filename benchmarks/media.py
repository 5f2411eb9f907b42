"""Media streaming at scale: N simulated Twilio (or Telnyx) calls streaming
real-time µ-law through a real voicecalld to the fake OpenAI Realtime service;
``--carrier twilio,telnyx`` puts both carriers' rows side by side from one run.

For each N (10, 50, 100, 200 by default) it starts a fresh daemon (the
carrier's provider, streaming on) against its fake, places N conversation calls,
lets every call's media stream send speech-and-silence audio at real-time
pace for a while, and in the middle makes every call speak (TTS through the
fake, paced back to the simulated Twilio). The fake OpenAI service and the
simulated Twilio media clients run in their own processes, so the load
generators do not share the daemon's (or each other's) interpreter lock;
all times are CLOCK_MONOTONIC, which is system-wide.

Reported per N: per-frame forwarding latency p50/p99 (a frame leaving the
simulated Twilio to its arrival at the speech-to-text service, so it also
holds the load generators' own delays on the same two cores), the
daemon's own share of it (``daemon.status`` media.forwarding: socket read
to speech-to-text send), frames
lost, daemon CPU (% of one core) and RSS per call, and TTS pacing jitter
p99: the daemon's own figure (``daemon.status`` media.pacing: each
frame's send time against its due time), plus, for information, the
inter-arrival jitter the simulated Twilio observes (which includes that
process's own scheduling noise). Each call speaks once, at a random moment
in the middle half of the run; each caller's speech/silence cycle starts at
its own phase (``--sync-turns`` makes all of them start and stop together,
the worst case for the speech-to-text events that follow every turn).
``--servers`` measures several servers in turn, round by round, under the
same load: voicecalld from this tree, voicecalld from another source tree
(``base=PATH``, e.g. a checkout of main, to compare a change against it),
and ``asyncio``, the plain asyncio bridge of benchmarks/asyncio_bridge.py
(the clients stream to it directly; it forwards and never speaks, so
compare it with ``--no-speak`` rounds). ``--repeat`` runs every pairing
more than once and prints the range of each figure.
``--metrics compare`` measures what the metrics cost instead: for each N,
rounds with and without a metrics listener, alternating, comparing the
daemon's CPU per forwarded frame (target: on / off under 1.03).
Targets (issue 6):
100 concurrent streams with p99 forwarding under 20 ms, no frame lost and
pacing jitter p99 under 5 ms. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import multiprocessing as mp
import os
import queue
import random
import shutil
import subprocess
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
from _media_carriers import Carrier, media_client  # noqa: E402

from voicecalld.testing.ports import free_port  # noqa: E402

FRAME = 160
LEAD_FRAMES = 3


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- the fake OpenAI service, in its own process --------------------------------------------


def quiet_gc() -> None:
    """The load generators keep every message they exchange (tens of
    thousands of objects); their garbage collector's pauses would show up as
    daemon latency, so it is off in their processes. The daemon is untouched."""
    gc.freeze()
    gc.disable()


def openai_process(conn: Any) -> None:
    from voicecalld.testing.fake_openai import FakeOpenAI

    quiet_gc()
    fake = FakeOpenAI(api_key="sk-bench", default_transcript="okay", tts_ms_per_char=10)
    fake.start()
    conn.send((fake.base_url, fake.realtime_url))
    while True:
        command = conn.recv()
        if command == "stats":
            conn.send([{"marker": bytes(s.audio_bytes[:8]), "bytes": len(s.audio_bytes),
                        "append_times": list(s.append_times)} for s in fake.realtime_sessions])
        else:
            fake.stop()
            conn.send("stopped")
            return


# --- simulated Twilio media clients, in their own process ------------------------------------


class Pacer:
    """Every stream's caller audio at real-time pace, from one thread: at
    each 20 ms tick, one ``media`` frame to every stream, each frame built
    (JSON, WebSocket framing, masking) before the run. MediaStreamClient's
    own ``play`` does the same per stream with a thread each, which costs
    this machine's two cores more than the server being measured."""

    def __init__(self, clients: list[Any], audios: list[bytes]) -> None:
        from voicecalld.media.wsframes import masked_text_frame

        self.clients = clients
        self.frames = []
        for client, audio in zip(clients, audios, strict=True):
            frames = []
            for n, offset in enumerate(range(0, len(audio), FRAME)):
                message = client.wire.media(n + 1, n * 20, base64.b64encode(audio[offset:offset + FRAME]).decode())
                message = {"event": "media", client.wire.sequence_key: str(n + 2), **message}
                frames.append(masked_text_frame(json.dumps(message).encode()))
            self.frames.append(frames)
        self.sent: list[list[float]] = [[] for _ in clients]
        self.thread = threading.Thread(target=self._run, name="pacer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        start = time.monotonic() + 0.05
        for n in range(max(len(f) for f in self.frames)):
            time.sleep(max(0.0, start + n * 0.02 - time.monotonic()))
            for client, frames, sent in zip(self.clients, self.frames, self.sent, strict=True):
                if n < len(frames):
                    with client._send_lock:  # after any mark echo the client is writing
                        client._ws.sock.sendall(frames[n])
                    sent.append(time.monotonic())

    def join(self) -> None:
        self.thread.join(120)


def clients_process(requests: Any, results: Any, port: int) -> None:
    from voicecalld.testing.media_client import silence, speech_like

    quiet_gc()
    clients: list[tuple[int, Any]] = []
    pattern = b""
    while True:
        item = requests.get()
        if item[0] == "stream":
            _, index, path, spec = item
            client = media_client(f"ws://127.0.0.1:{port}{path}", spec)
            client.connect(timeout=30)
            clients.append((index, client))
            results.put(("connected", index))
        elif item[0] == "play":
            seconds, sync_turns = item[1], item[2]
            pattern = (speech_like(1.0) + silence(1.0)) * int(seconds // 2 + 1)
            pattern = pattern[:int(seconds * 8000) // FRAME * FRAME]
            audios = []
            for index, _ in clients:
                marker = b"MARK" + index.to_bytes(4, "big")
                audio = pattern
                if not sync_turns:
                    # Callers do not all stop talking in the same 20 ms: each
                    # one's speech/silence cycle starts at its own phase.
                    shift = random.Random(index).randrange(0, 2 * 8000, FRAME)
                    audio = pattern[shift:] + pattern[:shift]
                audios.append(marker + b"\xff" * (FRAME - 8) + audio[FRAME:])
            pacer = Pacer([c for _, c in clients], audios)
            results.put(("playing", len(clients)))
        elif item[0] == "collect":
            pacer.join()
            out = []
            for (index, client), sent in zip(clients, pacer.sent, strict=True):
                out.append({"index": index, "sent": sent, "received": [m.at for m in client.received_media]})
            results.put(("stats", out))
        else:
            for _, client in clients:
                client.close()
            results.put(("stopped", None))
            return


# --- one round -------------------------------------------------------------------------------------


def proc_cpu_rss(pid: int) -> tuple[float, int]:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    with open(f"/proc/{pid}/status") as fh:
        rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    return cpu, rss


class Server:
    """What a round measures: a voicecalld (from a source tree) placing real
    calls through FakeTwilio, or the asyncio bridge that clients stream to
    directly."""

    def __init__(self, spec: str, metrics: bool = False, carrier: str = "twilio") -> None:
        self.metrics = metrics
        self.carrier = carrier
        self.label, _, path = spec.partition("=")
        self.asyncio = self.label == "asyncio"
        self.root = Path(path).resolve() if path else ROOT
        self.pid = 0

    def start(self, n: int, port: int, base_url: str, realtime_url: str, requests: list[Any]) -> None:
        self.call_ids: list[str] = []
        self.speak_errors: list[str] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="vc-media-"))
        if self.asyncio:
            self.proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "asyncio_bridge.py"), "--port",
                                          str(port), "--stt-url", realtime_url], stdout=subprocess.PIPE,
                                         stderr=open(self.tmp / "bridge.log", "wb"), text=True)
            assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "listening"
            self.pid = self.proc.pid
            time.sleep(0.5)
            self.rss_idle = proc_cpu_rss(self.pid)[1]
            for index in range(n):
                requests[index % len(requests)].put(("stream", index, "/stream", {
                    "custom_parameters": {"callId": f"c{index}"}}))
            return
        from voicecalld.control.client import Client

        self.fake = Carrier(self.carrier, requests)
        self.sock = str(self.tmp / "control.sock")
        config = (
            f'provider = "{self.carrier}"\nfromNumber = "+15550001111"\ntoNumber = "+15550002222"\n'
            f'publicUrl = "http://127.0.0.1:{port}"\nmaxConcurrentCalls = {n + 10}\nresponder = "off"\n'
            f'store = "{self.tmp}/state"\nmaxDurationSeconds = 600\n'
            f'[serve]\nport = {port}\n[control]\nsocket = "{self.sock}"\n'
            + self.fake.config()
            + f'[streaming]\nenabled = true\nopenaiApiKey = "sk-bench"\nrealtimeUrl = "{realtime_url}"\n'
            f'maxStreams = {n + 10}\nmaxPendingStreams = {n + 10}\n[tts]\nbaseUrl = "{base_url}"\n'
            + ('[metrics]\nlisten = "127.0.0.1:0"\n' if self.metrics else "")
            # Every call is dialled at once (a tree from before dial pacing has no such key).
            + ("[outbound]\ndialsPerSecond = 1000\n" if (self.root / "voicecalld" / "dialer.py").exists() else ""))
        self.proc = start_daemon(self.tmp, config, self.sock, root=self.root)
        self.pid = self.proc.pid
        time.sleep(0.5)
        self.rss_idle = proc_cpu_rss(self.pid)[1]
        with Client(self.sock, timeout=60) as c:
            for _ in range(n):
                self.call_ids.append(c.call("voicecall.initiate", {"message": "hi", "mode": "conversation"})["callId"])

    def speak(self, t0: float, seconds: float, n: int) -> None:
        """Each call speaks once, at a random moment in the middle half of the
        run, as callers in real conversations do (not all in one instant)."""
        from voicecalld.control.client import Client, RpcError

        rng = random.Random(n)
        schedule = sorted((seconds / 4 + rng.uniform(0, seconds / 2), call_id) for call_id in self.call_ids)
        with Client(self.sock, timeout=60) as c:
            for at, call_id in schedule:
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                try:
                    c.call("voicecall.speak", {"callId": call_id, "message": "This is a paced test announcement."})
                except RpcError as exc:  # reported with the round, not fatal to the whole run
                    self.speak_errors.append(exc.message)

    def status(self) -> dict[str, Any]:
        if self.asyncio:
            return {}
        from voicecalld.control.client import Client

        with Client(self.sock, timeout=60) as c:
            return dict(c.call("daemon.status"))

    def end_calls(self) -> None:
        if self.asyncio:
            return
        from voicecalld.control.client import Client

        with Client(self.sock, timeout=60) as c:
            for call_id in self.call_ids:
                try:
                    c.call("voicecall.end", {"callId": call_id})
                except Exception:  # noqa: BLE001 - a call the daemon already ended is fine here
                    pass

    def stop(self) -> None:
        if self.asyncio:
            self.proc.terminate()
            self.proc.wait(30)
        else:
            stop_daemon(self.proc)
            self.fake.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def run_round(n: int, seconds: float, client_procs: int, speak: bool = True, sync_turns: bool = False,
              dump: str | None = None, server_spec: str = "voicecalld", metrics: bool = False,
              carrier: str = "twilio") -> dict[str, Any]:
    server = Server(server_spec, metrics, carrier)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    openai = ctx.Process(target=openai_process, args=(child,), daemon=True)
    openai.start()
    base_url, realtime_url = parent.recv()
    port = free_port()
    requests = [ctx.Queue() for _ in range(client_procs)]
    results: Any = ctx.Queue()
    hosts = [ctx.Process(target=clients_process, args=(q, results, port), daemon=True) for q in requests]
    for h in hosts:
        h.start()
    try:
        server.start(n, port, base_url, realtime_url, requests)
        connected = 0
        deadline = time.monotonic() + 120
        while connected < n and time.monotonic() < deadline:
            try:
                kind, _ = results.get(timeout=1)
                connected += kind == "connected"
            except queue.Empty:
                pass
        time.sleep(1.0)
        cpu0, rss_connected = proc_cpu_rss(server.pid)
        t0 = time.monotonic()
        for q in requests:
            q.put(("play", seconds, sync_turns))
        for _ in requests:
            results.get(timeout=60)
        if speak and not server.asyncio:
            server.speak(t0, seconds, n)
        for q in requests:
            q.put(("collect",))
        client_stats: list[dict[str, Any]] = []
        for _ in requests:
            kind, payload = results.get(timeout=seconds + 120)
            client_stats += payload
        cpu1, rss_end = proc_cpu_rss(server.pid)
        busy = time.monotonic() - t0
        status = server.status()
        media = status.get("media", {})
        scraped = _forward_samples(status) if metrics else 0
        time.sleep(1.0)
        parent.send("stats")
        sessions = parent.recv()
        server.end_calls()
    finally:
        server.stop()
        for q in requests:
            q.put(("stop",))
        for h in hosts:
            h.join(30)
        parent.send("stop")
        openai.join(30)

    by_marker = {s["marker"]: s for s in sessions}
    latencies: list[float] = []
    sent_bytes = received_bytes = 0
    jitter: list[float] = []
    for client in client_stats:
        marker = b"MARK" + client["index"].to_bytes(4, "big")
        session = by_marker.get(marker)
        sent_bytes += len(client["sent"]) * FRAME
        if session is not None:
            received_bytes += session["bytes"]
            latencies += [b - a for a, b in zip(client["sent"], session["append_times"], strict=False)]
            if dump is not None:
                with open(dump, "a") as fh:
                    for a, b in zip(client["sent"], session["append_times"], strict=False):
                        fh.write(f"{n} {client['index']} {a:.6f} {b - a:.6f}\n")
        received = client["received"]
        runs: list[list[float]] = [[]]
        for t in received:  # split into utterances at gaps
            if runs[-1] and t - runs[-1][-1] > 0.1:
                runs.append([])
            runs[-1].append(t)
        for run in runs:
            paced = run[LEAD_FRAMES:]  # the first frames are sent ahead on purpose
            jitter += [abs((b - a) - 0.02) for a, b in zip(paced, paced[1:], strict=False)]
    return {
        "server": server.label, "carrier": "-" if server.asyncio else carrier, "n": n,
        "streams_connected": connected, "frames_sent": sent_bytes // FRAME,
        "frames_lost": max(0, (sent_bytes - received_bytes) // FRAME),
        "forward_p50_ms": percentile(latencies, 0.5) * 1e3, "forward_p99_ms": percentile(latencies, 0.99) * 1e3,
        "cpu_pct_per_call": (cpu1 - cpu0) / busy * 100 / n, "cpu_pct_total": (cpu1 - cpu0) / busy * 100,
        # Robust to a starved round (which forwards less): the server's CPU for each frame that reached STT.
        "cpu_us_per_frame": (cpu1 - cpu0) * 1e6 / max(1, received_bytes // FRAME),
        "rss_kib_per_call": (rss_connected - server.rss_idle) / n, "rss_kib_end": rss_end,
        "daemon_forward_p99_ms": media.get("forwarding", {}).get("p99Ms") or float("nan"),
        "pacing_p99_ms": media.get("pacing", {}).get("latenessP99Ms") or float("nan"),
        "pacing_frames": media.get("pacing", {}).get("frames", 0),
        "arrival_jitter_p99_ms": percentile(jitter, 0.99) * 1e3,
        "metrics": metrics, "metrics_forward_samples": scraped,
        "speak_errors": len(server.speak_errors), "speak_error_first": server.speak_errors[:1],
        "daemon_frames_late": media.get("framesLate", 0), "daemon_frames_lost": media.get("framesLost", 0),
    }


def _forward_samples(status: dict[str, Any]) -> int:
    """voicecalld_media_forward_seconds_count from the daemon's /metrics (proof the metrics were on)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{status['metrics']['listen']}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("voicecalld_media_forward_seconds_count "):
                return int(float(line.split()[1]))
    return 0


def compare(args: argparse.Namespace) -> None:
    """--metrics compare: per N, rounds with metrics off and on, alternating; the daemon's CPU per call
    and its own forwarding p99 for each."""
    rows = []
    for n in (int(x) for x in args.calls.split(",")):
        for _ in range(args.rounds):
            for flag in (False, True):
                rows.append(run_round(n, args.seconds, args.client_procs, not args.no_speak, args.sync_turns,
                                      None, "voicecalld", flag))
    print(f"{'N':>5}{'metrics':>9}{'CPU µs/frame':>14}{'cpu%/call':>11}{'own fwd p99':>13}{'fwd p99':>9}{'lost':>6}"
          f"{'samples':>9}")
    for r in rows:
        print(f"{r['n']:>5}{'on' if r['metrics'] else 'off':>9}{r['cpu_us_per_frame']:>14.1f}"
              f"{r['cpu_pct_per_call']:>11.3f}"
              f"{r['daemon_forward_p99_ms']:>13.3f}{r['forward_p99_ms']:>9.2f}{r['frames_lost']:>6}"
              f"{r['metrics_forward_samples']:>9}")
    summary = {}
    for n in sorted({r["n"] for r in rows}):
        off = [r["cpu_us_per_frame"] for r in rows if r["n"] == n and not r["metrics"]]
        on = [r["cpu_us_per_frame"] for r in rows if r["n"] == n and r["metrics"]]
        ratios = [b / a for a, b in zip(off, on, strict=True)]
        summary[n] = ratios
        print(f"N={n}: daemon CPU per frame on/off per round {', '.join(f'{x:.3f}' for x in ratios)}; "
              f"mean of on / mean of off {sum(on) / sum(off):.3f} (target < 1.03)")
    print(json.dumps({"benchmark": "media-metrics", "seconds": args.seconds, "rounds": args.rounds,
                      "rows": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                               for r in rows],
                      "cpu_ratios": {str(n): [round(x, 3) for x in v] for n, v in summary.items()},
                      "target_ratio": 1.03}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", default="10,50,100,200", help="comma-separated N values")
    parser.add_argument("--seconds", type=float, default=8.0, help="streaming time per round")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--no-speak", action="store_true", help="stream only; no TTS in the middle")
    parser.add_argument("--dump", metavar="FILE",
                        help="append every frame's latency to FILE (N, stream, sent at, seconds)")
    parser.add_argument("--sync-turns", action="store_true",
                        help="worst case: every caller starts and stops talking in the same frame")
    parser.add_argument("--servers", default="voicecalld", metavar="SPEC,...",
                        help="what to measure, taking turns round by round: voicecalld (this tree), "
                             "LABEL=PATH (voicecalld from another source tree, e.g. base=../main), "
                             "asyncio (benchmarks/asyncio_bridge.py; never speaks)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per server and N")
    parser.add_argument("--metrics", choices=("off", "on", "compare"), default="off",
                        help="the daemon's metrics listener ([metrics] listen); compare: rounds with and without, "
                        "alternating, and the cost in daemon CPU")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per setting with --metrics compare")
    parser.add_argument("--carrier", default="twilio", metavar="NAME,...",
                        help="carriers to simulate, taking turns round by round: twilio, telnyx, twilio,telnyx")
    args = parser.parse_args()
    if args.metrics == "compare":
        compare(args)
        return
    rows = []
    for _ in range(args.repeat):
        for n in args.calls.split(","):
            for spec in args.servers.split(","):
                for carrier in args.carrier.split(","):
                    rows.append(run_round(int(n), args.seconds, args.client_procs, not args.no_speak,
                                          args.sync_turns, args.dump, spec, args.metrics == "on", carrier))
                    # Each round's figures as it ends: they survive a later round's crash.
                    print(json.dumps({"round": rows[-1]}, default=str), file=sys.stderr, flush=True)
    header = (f"{'server':>10}{'carrier':>8}{'N':>5}{'conn':>6}{'fwd p50':>9}{'fwd p99':>9}{'own p99':>9}{'lost':>7}"
              f"{'cpu%/call':>11}{'cpu% all':>10}{'us/frame':>10}{'RSS KiB/call':>14}{'pacing p99':>12}"
              f"{'arrival jit p99':>17}")
    print(header)
    for r in rows:
        print(f"{r['server']:>10}{r['carrier']:>8}{r['n']:>5}{r['streams_connected']:>6}{r['forward_p50_ms']:>9.2f}"
              f"{r['forward_p99_ms']:>9.2f}{r['daemon_forward_p99_ms']:>9.2f}"
              f"{r['frames_lost']:>7}{r['cpu_pct_per_call']:>11.2f}{r['cpu_pct_total']:>10.1f}"
              f"{r['cpu_us_per_frame']:>10.1f}{r['rss_kib_per_call']:>14.0f}{r['pacing_p99_ms']:>12.2f}{r['arrival_jitter_p99_ms']:>17.2f}")
    print("(ms; fwd = simulated carrier's send to the fake STT's read, both processes sharing this machine's cores; "
          "own = the daemon's figure from daemon.status media.forwarding, socket read to STT send; "
          "pacing = the daemon's send time against each frame's due time; arrival jitter = the same as seen "
          "by the simulated carrier's process, including its own scheduling noise)")
    if args.repeat > 1:
        print("ranges over the rounds (min-max):")
        for spec, carrier in ((s, c) for s in args.servers.split(",") for c in args.carrier.split(",")):
            for n in args.calls.split(","):
                mine = [r for r in rows if r["server"] == Server(spec).label and r["n"] == int(n)
                        and r["carrier"] in (carrier, "-")]
                print(f"{Server(spec).label:>10}{carrier:>8}{n:>5}" + "".join(
                    f"  {key} {min(r[key] for r in mine):.2f}-{max(r[key] for r in mine):.2f}"
                    for key in ("forward_p50_ms", "forward_p99_ms", "cpu_pct_total", "cpu_us_per_frame")))
    ok = [r for r in rows if r["forward_p99_ms"] < 20 and r["frames_lost"] == 0 and r["pacing_p99_ms"] < 5
          and r["streams_connected"] == r["n"] and r["daemon_frames_lost"] == 0]
    print(json.dumps({"benchmark": "media", "seconds": args.seconds, "sync_turns": args.sync_turns,
                      "rows": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
                      "max_n_meeting_targets": max((r["n"] for r in ok), default=0),
                      "targets": {"n": 100, "forward_p99_ms": 20, "frames_lost": 0, "pacing_p99_ms": 5}}))


if __name__ == "__main__":
    main()
