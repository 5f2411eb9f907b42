"""Turn latency through the real daemon on Twilio: realtime speech-to-speech
(``[realtime]``) and the cascaded path (speech-to-text, the LLM responder,
text-to-speech), measured the same way in one run.

A real voicecalld (subprocess) on the twilio provider with streaming on;
FakeTwilio places the calls and, per call, a MediaStreamClient plays
Twilio's side of the stream; FakeOpenAI is every OpenAI service. Each call
waits for its opening to play, then the caller speaks (0.8 s of a
speech-like signal, then silence). The turn latency is the time from the
caller's last voiced frame leaving the client to the first frame of the
reply arriving at it. The fake answers ``--delay`` after its VAD declared
the end of the turn (``--silence`` of quiet), so the floor is
``delay + silence``: realtime, the model's first audio ``--delay`` after
the turn; cascaded, the chat reply ``--delay`` after the turn (the fake's
transcription and TTS answer at once).

Barge-in (realtime): the model's reply is long; once the caller has heard
some of it, they speak again, and the time from the fake sending
``input_audio_buffer.speech_started`` to the client receiving the
daemon's ``clear`` is measured.

Two more columns say where a realtime turn's time goes: ``vad lag`` is how
late the fake's VAD declared the end of the turn (past its silence; the
fake's own CPU, not the daemon's), ``daemon`` the time from the fake
sending the reply's first audio to that audio's first frame reaching the
client (the daemon's share).

``benchmarks/turn_latency.py --mode realtime`` is the turn-latency
comparison with realistic cascaded latencies; this one adds barge-in and
the split of a realtime turn between the fake and the daemon.

Prints one row per mode and concurrency, and one JSON line.

    python benchmarks/turn_latency_realtime.py [--calls 1,50] [--rounds 10] [--delay 0.3] [--silence 300]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import start_daemon, stop_daemon  # noqa: E402

from voicecalld.control.client import Client  # noqa: E402
from voicecalld.testing.fake_openai import FakeOpenAI, VoiceRecord  # noqa: E402
from voicecalld.testing.fake_twilio import FakeTwilio, StreamRequest  # noqa: E402
from voicecalld.testing.media_client import MediaStreamClient, silence, speech_like  # noqa: E402
from voicecalld.testing.ports import free_port  # noqa: E402

SID = "AC" + "1" * 32
TOKEN = "twilio-bench-token"
SPEECH_S = 0.8
LONG_REPLY = "Here is a long answer that goes on for a while so that the caller can interrupt it. " * 3


class OpenAIProcess:
    """FakeOpenAI in a process of its own, so its VAD and its streaming
    (Python, per caller frame) do not compete with the simulated Twilio
    side for one interpreter lock. ``time.monotonic`` is the same clock in
    both processes, so its timestamps compare with the clients'."""

    def __init__(self, delay: float) -> None:
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_openai_main, args=(child, delay), daemon=True)
        self.proc.start()
        self.base_url, self.realtime_url, self.voice_url = self.conn.recv()

    def call(self, *request: Any) -> Any:
        self.conn.send(request)
        return self.conn.recv()

    def stop(self) -> None:
        self.call("stop")
        self.proc.join(10)


def _openai_main(conn: Any, delay: float) -> None:
    fake = FakeOpenAI(api_key="sk-bench", tts_ms_per_char=4).start()
    fake.voice.reply_delay_s = delay
    fake.chat_delay_s = delay
    conn.send((fake.base_url, fake.realtime_url, fake.voice_url))
    while True:
        request = conn.recv()
        if request[0] == "stop":
            fake.stop()
            conn.send(None)
            return
        if request[0] == "replies":
            for voice, chat in request[1]:
                fake.voice.replies.put(voice)
                fake.chat_replies.put(chat)
            conn.send(None)
        elif request[0] == "times":
            sessions = [s for s in fake.realtime_sessions if isinstance(s, VoiceRecord)]
            conn.send({"speech_started_at": [t for s in sessions for t in s.speech_started_at],
                       "speech_stopped_at": [t for s in sessions for t in s.speech_stopped_at],
                       "first_audio_at": [t for s in sessions for t in s.first_audio_at]})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def toml_value(value: Any) -> str:
    return json.dumps(value)  # strings, numbers and booleans: JSON's forms are TOML's


class Run:
    """One daemon, its fakes, and the calls of one round."""

    def __init__(self, mode: str, calls: int, delay: float, silence_ms: int) -> None:
        self.mode, self.delay, self.silence_ms = mode, delay, silence_ms
        self.tmp = Path(tempfile.mkdtemp(prefix=f"turn-{mode}-"))
        self.openai = OpenAIProcess(delay)  # forked before this process starts any thread of its own
        self.twilio = FakeTwilio(SID, TOKEN, ms_per_char=1, time_scale=0.05).start()
        self.port = free_port()
        self.sock = str(self.tmp / "control.sock")
        self.clients: dict[str, MediaStreamClient] = {}
        self.daemon_share: list[float] = []  # fake's first reply audio sent -> first frame at the client, ms
        self.vad_lag: list[float] = []  # the fake's speech_stopped, late by this much past its silence (ms)
        self.firsts: list[tuple[float, float]] = []  # (caller's last voiced frame, first reply frame)
        self.cleared: list[float] = []  # when each barge-in's clear arrived
        self._lock = threading.Lock()
        self.twilio.on_stream = self._on_stream
        n = calls + 10
        config = (
            f'provider = "twilio"\nfromNumber = "+15550001111"\ntoNumber = "+15550002222"\n'
            f'publicUrl = "http://127.0.0.1:{self.port}"\nmaxConcurrentCalls = {n}\nresponder = "llm"\n'
            f'responseBaseUrl = {toml_value(self.openai.base_url)}\nstore = "{self.tmp}/state"\n'
            f'maxDurationSeconds = 600\n[outbound]\ndialsPerSecond = 1000\n'
            f'[serve]\nport = {self.port}\n[control]\nsocket = "{self.sock}"\n'
            f'[twilio]\naccountSid = "{SID}"\nauthToken = "{TOKEN}"\napiBaseUrl = "{self.twilio.base_url}"\n'
            f'[streaming]\nenabled = true\nopenaiApiKey = "sk-bench"\nrealtimeUrl = "{self.openai.realtime_url}"\n'
            f'silenceDurationMs = {silence_ms}\nmaxStreams = {2 * n}\nmaxPendingStreams = {n}\n'
            f'[tts]\nbaseUrl = "{self.openai.base_url}"\n'
            f'[realtime]\nenabled = {toml_value(mode == "realtime")}\nurl = "{self.openai.voice_url}"\n')
        self.proc = start_daemon(self.tmp, config, self.sock)

    def _on_stream(self, req: StreamRequest) -> None:
        url = f"ws://127.0.0.1:{self.port}{urlsplit(req.url).path}"
        client = MediaStreamClient(url, headers=req.headers, custom_parameters=req.parameters,
                                   call_sid=req.call_sid, stream_sid=req.stream_sid)
        with self._lock:
            self.clients[req.parameters.get("callId", req.call_sid)] = client

        def run() -> None:
            client.connect()
            req.ended.wait(600)
            client.stop()

        threading.Thread(target=run, daemon=True).start()

    def close(self) -> None:
        stop_daemon(self.proc)
        for client in self.clients.values():
            client.close()
        self.twilio.stop()
        self.openai.stop()

    def round(self, calls: int, barge_in: bool) -> tuple[list[float], list[float]]:
        """Place ``calls`` calls at once; (turn latencies, barge-in latencies) in ms."""
        self.openai.call("replies", [(LONG_REPLY if barge_in else "Sure.", "Sure.")] * calls)
        with Client(self.sock, timeout=60) as c:
            ids = [c.call("voicecall.initiate", {"message": "Hi.", "mode": "conversation"})["callId"]
                   for _ in range(calls)]
        turns: list[float] = []
        barges: list[float] = []
        threads = [threading.Thread(target=self._one_call, args=(call_id, turns, barges, barge_in))
                   for call_id in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        times = self.openai.call("times")
        for last_voiced, first in self.firsts:
            sent = [t for t in times["first_audio_at"] if last_voiced < t <= first]
            if sent:
                self.daemon_share.append((first - max(sent)) * 1000)
            stopped = [t for t in times["speech_stopped_at"] if last_voiced < t <= first]
            if stopped:
                self.vad_lag.append((min(stopped) - last_voiced) * 1000 - self.silence_ms)
        for cleared in self.cleared:
            started = [t for t in times["speech_started_at"] if cleared - 1.0 < t <= cleared]
            if started:
                barges.append((cleared - max(started)) * 1000)
        self.firsts.clear()
        self.cleared.clear()
        with Client(self.sock, timeout=60) as c:
            for call_id in ids:
                try:
                    c.call("voicecall.end", {"callId": call_id})
                except Exception:  # noqa: BLE001 - an ended call is fine here
                    pass
        return turns, barges

    def _client(self, call_id: str, timeout: float = 30.0) -> MediaStreamClient:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                client = self.clients.get(call_id)
            if client is not None and client.connected:
                return client
            time.sleep(0.01)
        raise TimeoutError(f"no stream for call {call_id}")

    def _one_call(self, call_id: str, turns: list[float], barges: list[float], barge_in: bool) -> None:
        client = self._client(call_id)
        # The opening ("Hi.") plays to its end first (over the stream on a
        # realtime call, by <Say> before it on a cascaded one): the call listens.
        with Client(self.sock, timeout=60) as c:
            deadline = time.monotonic() + 30
            while c.call("voicecall.status", {"callId": call_id})["state"] != "listening":
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)
        time.sleep(0.2)
        before = len(client.sent_frames)
        client.play(speech_like(SPEECH_S))
        last_voiced = client.sent_frames[before + int(SPEECH_S / 0.02) - 1].sent_at
        client.start_streaming_in_background(silence(self.delay + self.silence_ms / 1000 + 2.5))
        if client.wait_for(lambda: any(m.at > last_voiced for m in client.received_media), timeout=30):
            first = next(m.at for m in client.received_media if m.at > last_voiced)
            with self._lock:
                turns.append((first - last_voiced) * 1000)
                self.firsts.append((last_voiced, first))
        if barge_in and self.mode == "realtime":
            client.wait_for(lambda: sum(1 for m in client.received_media if m.at > last_voiced) > 25, timeout=30)
            client.wait_streaming(30)
            clears = len(client.clears)
            client.start_streaming_in_background(speech_like(0.5) + silence(0.5))
            if client.wait_for(lambda: len(client.clears) > clears, timeout=30):
                with self._lock:
                    self.cleared.append(client.clears[clears])
        client.wait_streaming(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", default="1,50", help="concurrent calls, comma-separated")
    parser.add_argument("--rounds", type=int, default=10, help="rounds at one call (more samples)")
    parser.add_argument("--delay", type=float, default=0.3, help="the fake's answer delay after end of speech (s)")
    parser.add_argument("--silence", type=int, default=300, help="the VAD's silence that ends a turn (ms)")
    parser.add_argument("--modes", default="realtime,cascaded")
    args = parser.parse_args()
    floor = args.delay * 1000 + args.silence
    rows: list[dict[str, Any]] = []
    for mode in args.modes.split(","):
        for calls in (int(c) for c in args.calls.split(",")):
            run = Run(mode, calls, args.delay, args.silence)
            turns: list[float] = []
            barges: list[float] = []
            share, lag = run.daemon_share, run.vad_lag
            try:
                for _ in range(args.rounds if calls == 1 else 1):
                    t, b = run.round(calls, barge_in=True)
                    turns += t
                    barges += b
            finally:
                run.close()
            rows.append({"mode": mode, "calls": calls, "samples": len(turns), "floorMs": floor,
                         "p50Ms": round(percentile(turns, 0.5), 1), "p95Ms": round(percentile(turns, 0.95), 1),
                         "p50OverFloorMs": round(percentile(turns, 0.5) - floor, 1),
                         "p95OverFloorMs": round(percentile(turns, 0.95) - floor, 1),
                         "meanMs": round(statistics.fmean(turns), 1) if turns else None,
                         "fakeVadLagP50Ms": round(percentile(lag, 0.5), 1) if lag else None,
                         "daemonShareP50Ms": round(percentile(share, 0.5), 1) if share else None,
                         "daemonShareP95Ms": round(percentile(share, 0.95), 1) if share else None,
                         "bargeInSamples": len(barges),
                         "bargeInP50Ms": round(percentile(barges, 0.5), 1) if barges else None,
                         "bargeInP99Ms": round(percentile(barges, 0.99), 1) if barges else None})
    print(f"turn latency: caller's last voiced frame -> first reply frame (floor = delay {args.delay * 1000:.0f} ms"
          f" + VAD silence {args.silence} ms = {floor:.0f} ms)")
    print(f"{'mode':<10}{'calls':>6}{'n':>5}{'p50 ms':>9}{'p95 ms':>9}{'p50-floor':>11}{'p95-floor':>11}"
          f"{'vad lag':>9}{'daemon p50':>11}{'p95':>7}{'barge-in n':>12}{'p50':>7}{'p99':>7}")
    for r in rows:
        barge = (f"{r['bargeInSamples']:>12}{r['bargeInP50Ms']:>7}{r['bargeInP99Ms']:>7}" if r["bargeInSamples"]
                 else f"{'-':>12}{'-':>7}{'-':>7}")
        share = (f"{r['fakeVadLagP50Ms'] or '-':>9}{r['daemonShareP50Ms'] or '-':>11}"
                 f"{r['daemonShareP95Ms'] or '-':>7}")
        print(f"{r['mode']:<10}{r['calls']:>6}{r['samples']:>5}{r['p50Ms']:>9}{r['p95Ms']:>9}"
              f"{r['p50OverFloorMs']:>11}{r['p95OverFloorMs']:>11}{share}{barge}")
    print(json.dumps({"benchmark": "turn_latency_realtime", "rows": rows}))


if __name__ == "__main__":
    main()
