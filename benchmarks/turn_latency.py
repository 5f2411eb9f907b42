"""Turn latency as a caller hears it: the real daemon, simulated Twilio media
streams, and the fake OpenAI given realistic latencies.

Each conversation is an outbound Twilio call (FakeTwilio) whose media stream
a simulated caller (MediaStreamClient, in a process of its own) feeds in
real time: speech, then silence while the bot answers, turn after turn
(conversations start at different phases of that cycle). The fake OpenAI
(a process of its own) runs the Realtime transcription with its energy VAD
and answers the final transcript ``--stt-ms`` after the end of the turn;
Chat Completions stream the reply's first token after ``--first-token-ms``
and one more every ``--token-ms``; text-to-speech sends its first audio
after ``--tts-first-ms`` and then ``--tts-rtf`` times real time.

The clock runs at the caller: from the last voiced frame it sent to the
first non-silent frame of the reply it receives. Next to the figures, two
bounds computed from the configured latencies:

* pipelined: VAD silence + STT + first token + the rest of the first
  sentence's tokens + TTS first audio (what a perfect pipeline costs);
* sequential: the same with the whole reply's tokens (what a daemon that
  waits for the complete reply before synthesizing costs).

Targets: p50 within 60 ms of the pipelined bound, p95 within 150 ms, for 1
and for 50 concurrent conversations. The same runs with a chat server that
ignores ``stream`` (one JSON body once the reply is generated) show the
sequential cost for comparison. "Daemon share" is the total minus the
bound: what voicecalld (and the simulated network) add. The daemon's own
measurement (the record's ``turns``, speech_stopped to first frame sent)
is reported too, and the CPU (cores) the daemon, the fake OpenAI and the
simulated callers used, next to the whole machine's busy and stolen time
(a virtual machine's hypervisor may give its CPUs to others: on a shared
2-core machine the three processes and everything else compete for what
is left, and the tail latencies show it), and how slowly the CPU ran
(``_harness.SpeedProbe``: cores shared with other tenants run the same
work slower with nothing stolen).

With ``--mode realtime`` each round also runs with ``[realtime]`` on: one
OpenAI Realtime speech-to-speech session per call, the fake model
answering ``--realtime-delay-ms`` after its VAD ends the turn; its bound
is VAD silence + that delay, and its targets p50 within 40 ms of it, p95
within 100 ms. The realtime and cascaded rows come from the one run.
(``benchmarks/turn_latency_realtime.py`` measures realtime barge-in.)

A turn with no reply before the caller's next turn (or the end of the run)
is counted as unanswered, not left out: it is slower than every figure in
the list, so a round with one does not meet the target. "lag" is how long
the caller's audio took to reach the fake STT (sent by the caller ->
appended at the fake, one monotonic clock): a daemon that falls behind
reading its media streams hears the caller late, and its turns are late or
unanswered although nothing is lost.

Prints a table and one JSON line.

    python benchmarks/turn_latency.py [--conversations 1,50] [--turns 3] [--mode realtime]
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import SpeedProbe, cpu_seconds, machine_jiffies, machine_use, start_daemon, stop_daemon  # noqa: E402
from media import Pacer, quiet_gc  # noqa: E402  (benchmarks/media.py: callers' audio at real-time pace)

SID, TOKEN = "AC" + "5" * 32, "turn-latency-token"
FRAME = 160  # 20 ms of µ-law
OPENING = "Hello."
REPLY = ("Sure, I can help with that. I have a table for two at seven thirty tonight, or one at eight "
         "fifteen if you would rather eat later; which one would suit you best?")
SPEECH_S = 1.2     # each caller turn: this much speech...
ANSWER_S = 7.0     # ...then silence while the bot answers (long enough for the whole reply to play)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def first_sentence_tokens() -> int:
    """The tokens the fake streams before the reply's first sentence is complete."""
    from voicecalld.sentences import SentenceCutter
    from voicecalld.testing._openai_chat import tokens

    return len(tokens(SentenceCutter().feed(REPLY + " ")[0]))


def bounds(args: argparse.Namespace) -> tuple[float, float]:
    """(pipelined, sequential) lower bounds in ms, from the configured latencies."""
    from voicecalld.testing._openai_chat import tokens

    first_tokens, all_tokens = first_sentence_tokens(), len(tokens(REPLY))
    fixed = args.silence_ms + args.stt_ms + args.first_token_ms + args.tts_first_ms
    return fixed + (first_tokens - 1) * args.token_ms, fixed + (all_tokens - 1) * args.token_ms


# --- the fake OpenAI, in its own process -------------------------------------------------------


def openai_process(conn: Any, settings: dict[str, Any]) -> None:
    from voicecalld.testing.fake_openai import FakeOpenAI

    quiet_gc()
    fake = FakeOpenAI(api_key="sk-bench", default_transcript="a table for two tonight please",
                      default_chat_reply=REPLY, tts_ms_per_char=settings["tts_ms_per_char"])
    fake.transcription_delay_s = settings["stt_ms"] / 1000
    fake.chat_first_token_s = settings["first_token_ms"] / 1000
    fake.chat_token_s = settings["token_ms"] / 1000
    fake.speech_delay_s = settings["tts_first_ms"] / 1000
    fake.tts_realtime_factor = settings["tts_rtf"]
    fake.chat_streaming = settings["streaming"]
    # The speech-to-speech model (--mode realtime) says the same reply, as long as the TTS would.
    fake.voice.reply_delay_s = settings["realtime_delay_ms"] / 1000
    fake.voice.default_reply = REPLY
    fake.voice.ms_per_char = settings["tts_ms_per_char"]
    fake.start()
    conn.send((fake.base_url, fake.realtime_url, fake.voice_url))
    conn.recv()
    # When each session's audio reached the fake, to set against when the
    # caller sent it: how far behind the daemon is. Per append: the audio
    # received so far (bytes) and when (the daemon may join frames).
    arrivals = []
    for r in fake.realtime_sessions:
        sizes = [len(base64.b64decode(e["audio"])) for e in r.events if e.get("type") == "input_audio_buffer.append"]
        arrivals.append(list(zip(itertools.accumulate(sizes), r.append_times, strict=False)))
    # How late the fake itself was, past its configured schedule (its own
    # process competes for the same cores): the token that ends the reply's
    # first sentence, and the TTS's first audio.
    k = settings["first_sentence_tokens"]
    late = {"chat": [(r.token_at[k - 1] - r.at - fake.chat_first_token_s - (k - 1) * fake.chat_token_s) * 1000
                     for r in fake.chat_requests if len(r.token_at) >= k],
            "tts": [(r.first_audio_at - r.at - fake.speech_delay_s) * 1000 for r in fake.speech_requests
                    if r.first_audio_at is not None]}
    fake.stop()
    conn.send((arrivals, late))


# --- the simulated callers, in their own process -------------------------------------------------


def voiced(payload: bytes) -> bool:
    from voicecalld.media import mulaw

    pcm = memoryview(mulaw.decode(payload)).cast("h")
    return max(abs(s) for s in pcm) > 300


def clients_process(requests: Any, results: Any, port: int) -> None:
    from voicecalld.testing.media_client import MediaStreamClient, silence, speech_like

    quiet_gc()
    clients: list[Any] = []
    while True:
        item = requests.get()
        if item[0] == "stream":
            _, path, headers, params, call_sid, stream_sid = item
            client = MediaStreamClient(f"ws://127.0.0.1:{port}{path}", headers=headers, custom_parameters=params,
                                       call_sid=call_sid, stream_sid=stream_sid)
            client.connect(timeout=30)
            clients.append(client)
            results.put(("connected", len(clients)))
        elif item[0] == "play":
            turns, earliest_ms = item[1], item[2]
            cycle = speech_like(SPEECH_S) + silence(ANSWER_S)
            audios, phases = [], []
            for index in range(len(clients)):
                # Conversations do not all take their turns in the same instant.
                lead = random.Random(index).randrange(0, round((SPEECH_S + ANSWER_S) * 8000), FRAME) \
                    if len(clients) > 1 else 0
                audios.append(silence(1.0) + silence(lead / 8000) + cycle * turns)
                phases.append(int(8000 * 1.0) + lead)
            pacer = Pacer(clients, audios)
            pacer.thread.join(3600)
            time.sleep(0.5)
            out: list[float | None] = []
            for client, sent, phase in zip(clients, pacer.sent, phases, strict=True):
                out += measure(client, sent, phase, turns, earliest_ms)
            results.put(("latencies", out, pacer.sent))
        else:
            for client in clients:
                client.close()
            results.put(("stopped", None))
            return


def measure(client: Any, sent: list[float], phase: int, turns: int, earliest_ms: float) -> list[float | None]:
    """Per turn: last voiced frame sent -> first voiced reply frame received
    (ms), None if no reply came before the caller's next turn (or the end).
    A reply to this turn cannot start before the VAD's silence and the
    STT's delay have passed (``earliest_ms``): audio before that is an
    earlier turn's reply, late (a daemon that hears its callers late answers
    them late), and is not counted as this turn's."""
    out: list[float | None] = []
    # round(), not int(): 8.2 * 50 is 409.99999999999994
    speech_frames, cycle_frames = round(SPEECH_S * 50), round((SPEECH_S + ANSWER_S) * 50)
    received = [(m.at, m.payload) for m in list(client.received_media)]
    for turn in range(turns):
        last = phase // FRAME + turn * cycle_frames + speech_frames - 1
        end = phase // FRAME + (turn + 1) * cycle_frames
        if end >= len(sent):
            end = len(sent) - 1
        t0, t1 = sent[last], sent[end]
        floor = t0 + earliest_ms / 1000
        reply = next((at for at, payload in received if floor < at < t1 and voiced(payload)), None)
        out.append(None if reply is None else (reply - t0) * 1000)
    return out


def audio_lag(sent: list[list[float]], arrivals: list[list[tuple[int, float]]]) -> list[float]:
    """Per append at the fake STT: its last caller frame sent -> appended
    (ms), both on the machine's monotonic clock. A session is paired with
    the caller that sent as much audio (callers that sent as much had the
    same schedule, so which is which does not matter); a call whose audio
    went to more than one session (a reconnect) is left out."""
    by_count: dict[int, list[list[float]]] = {}
    for times in sent:
        by_count.setdefault(len(times) * FRAME, []).append(times)
    lags = []
    for appended in arrivals:
        callers = by_count.get(appended[-1][0] if appended else -1)
        if not callers:
            continue
        times = callers.pop()
        lags += [(at - times[total // FRAME - 1]) * 1000 for total, at in appended if total >= FRAME]
    return lags


# --- one round ------------------------------------------------------------------------------------


def run_round(n: int, turns: int, streaming: bool, args: argparse.Namespace, realtime: bool = False
              ) -> dict[str, Any]:
    from voicecalld.control.client import Client
    from voicecalld.testing.fake_twilio import FakeTwilio
    from voicecalld.testing.ports import free_port

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    settings = {k: getattr(args, k) for k in ("stt_ms", "first_token_ms", "token_ms", "tts_first_ms", "tts_rtf",
                                              "tts_ms_per_char", "realtime_delay_ms")}
    settings["first_sentence_tokens"] = first_sentence_tokens()
    openai = ctx.Process(target=openai_process, args=(child, {**settings, "streaming": streaming}), daemon=True)
    openai.start()
    base_url, realtime_url, voice_url = parent.recv()
    port = free_port()
    requests, results = ctx.Queue(), ctx.Queue()
    host = ctx.Process(target=clients_process, args=(requests, results, port), daemon=True)
    host.start()
    twilio = FakeTwilio(SID, TOKEN, ms_per_char=1, time_scale=0.05)
    twilio.start()
    twilio.on_stream = lambda req: requests.put(("stream", urlsplit(req.url).path, dict(req.headers),
                                                 dict(req.parameters), req.call_sid, req.stream_sid))
    tmp = Path(tempfile.mkdtemp(prefix="vc-turn-", dir=args.tmp))
    sock = str(tmp / "control.sock")
    config = (
        f'provider = "twilio"\nfromNumber = "+15550001111"\ntoNumber = "+15550002222"\n'
        f'publicUrl = "http://127.0.0.1:{port}"\nmaxConcurrentCalls = {n + 10}\nresponder = "llm"\n'
        f'responseBaseUrl = "{base_url}"\nresponseApiKey = "sk-bench"\nresponseTimeoutMs = 15000\n'
        f'store = "{tmp}/state"\nmaxDurationSeconds = 900\n'
        f'[serve]\nport = {port}\n[control]\nsocket = "{sock}"\n'
        f'[twilio]\naccountSid = "{SID}"\nauthToken = "{TOKEN}"\napiBaseUrl = "{twilio.base_url}"\n'
        f'[streaming]\nenabled = true\nopenaiApiKey = "sk-bench"\nrealtimeUrl = "{realtime_url}"\n'
        f'silenceDurationMs = {args.silence_ms}\nmaxStreams = {n + 10}\nmaxPendingStreams = {n + 10}\n'
        f'[tts]\nbaseUrl = "{base_url}"\n'
        + (f'[realtime]\nenabled = true\nurl = "{voice_url}"\n' if realtime else ""))
    proc = start_daemon(tmp, config, sock)
    call_ids: list[str] = []
    try:
        with Client(sock, timeout=60) as c:
            for _ in range(n):
                call_ids.append(c.call("voicecall.initiate", {"message": OPENING, "mode": "conversation"})["callId"])
        connected = 0
        while connected < n:
            kind, value = results.get(timeout=60)
            if kind == "connected":
                connected = value
        time.sleep(1.0)  # the openings play
        requests.put(("play", turns, args.silence_ms + args.stt_ms))
        pids = (proc.pid, openai.pid, host.pid)
        cpu0, machine0 = [cpu_seconds(pid) for pid in pids], machine_jiffies()
        probe = SpeedProbe().start()
        started = time.monotonic()
        kind, per_turn, sent = results.get(timeout=3600)
        elapsed = time.monotonic() - started
        slowdown = probe.stop()
        cpu = [round((cpu_seconds(pid) - before) / elapsed, 2) for pid, before in zip(pids, cpu0, strict=True)]
        machine = {**machine_use(machine0, machine_jiffies()), "slowdown": slowdown}
        with Client(sock, timeout=60) as c:
            records = [c.call("voicecall.status", {"callId": call_id}) for call_id in call_ids]
            for call_id in call_ids:
                try:
                    c.call("voicecall.end", {"callId": call_id})
                except Exception:  # noqa: BLE001 - a call that already ended is fine
                    pass
    finally:
        requests.put(("stop",))
        try:
            results.get(timeout=30)
        except Exception:  # noqa: BLE001
            pass
        stop_daemon(proc)
        twilio.stop()
        parent.send("stop")
        arrivals, fake_late = parent.recv()
        if args.keep_logs:
            print(f"daemon log: {tmp / 'daemon.log'}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    measured = [t["latencyMs"] for r in records for t in r.get("turns") or ()]
    return {"latencies": [x for x in per_turn if x is not None], "daemon_measured": measured, "expected": n * turns,
            "cpu": cpu, "machine": machine, "audio_lag": audio_lag(sent, arrivals), "fake_late": fake_late}


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    return {"p50": round(percentile(values, 0.5), 1), "p95": round(percentile(values, 0.95), 1),
            "max": round(max(values), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conversations", default="1,50", help="comma-separated concurrent conversations per round")
    p.add_argument("--turns", type=int, default=3, help="caller turns per conversation")
    p.add_argument("--single-turns", type=int, default=12, help="turns when there is one conversation")
    p.add_argument("--silence-ms", type=int, default=800, help="streaming.silenceDurationMs (VAD silence)")
    p.add_argument("--stt-ms", type=float, default=300, help="final transcript after the end of the turn")
    p.add_argument("--first-token-ms", type=float, default=350)
    p.add_argument("--token-ms", type=float, default=30)
    p.add_argument("--tts-first-ms", type=float, default=200)
    p.add_argument("--tts-rtf", type=float, default=4.0, help="TTS audio seconds per second after the first")
    p.add_argument("--tts-ms-per-char", type=float, default=25, help="length of the fake's speech")
    p.add_argument("--no-compare", action="store_true", help="skip the runs without pipelining")
    p.add_argument("--mode", choices=("cascaded", "realtime"), default="cascaded",
                   help="realtime: also run each round with [realtime] speech-to-speech on")
    p.add_argument("--realtime-delay-ms", type=float, default=300,
                   help="the fake speech-to-speech model answers this long after the end of the turn")
    p.add_argument("--per-turn", action="store_true", help="print every turn")
    p.add_argument("--tmp", metavar="DIR", help="where the call log goes (default: the temp dir; /dev/shm takes "
                   "the disk's fsyncs out of the picture)")
    p.add_argument("--keep-logs", action="store_true", help="keep each round's daemon log (its path is printed)")
    args = p.parse_args()
    pipelined, sequential = bounds(args)
    load = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    for n in [int(x) for x in args.conversations.split(",")]:
        turns = args.single_turns if n == 1 else args.turns
        kinds = [("pipelined", True), *([] if args.no_compare else [("not pipelined", False)])]
        if args.mode == "realtime":
            kinds.insert(0, ("realtime", True))
        for mode, streaming in kinds:
            realtime = mode == "realtime"
            result = run_round(n, turns, streaming, args, realtime=realtime)
            bound = args.silence_ms + args.realtime_delay_ms if realtime else pipelined if streaming else sequential
            lat = result["latencies"]
            row = {"conversations": n, "mode": mode, "pipelined": streaming, "turns": len(lat),
                   "expected": result["expected"],
                   **summary(lat), "bound": bound,
                   "share_p50": None if not lat else round(percentile(lat, 0.5) - bound, 1),
                   "share_p95": None if not lat else round(percentile(lat, 0.95) - bound, 1),
                   "daemon_measured": summary(result["daemon_measured"]),
                   "cpu_daemon": result["cpu"][0], "cpu_fake_openai": result["cpu"][1],
                   "cpu_callers": result["cpu"][2], "machine_busy": result["machine"]["busy"],
                   "machine_stolen": result["machine"]["stolen"], "cpu_slowdown": result["machine"]["slowdown"],
                   "audio_lag": summary(result["audio_lag"]),
                   "fake_late_chat": summary(result["fake_late"]["chat"]),
                   "fake_late_tts": summary(result["fake_late"]["tts"])}
            # A turn left unanswered is slower than any figure in the list.
            answered = len(lat) == result["expected"]
            if realtime and lat:
                row["target_met"] = bool(answered and percentile(lat, 0.5) - bound <= 40
                                         and percentile(lat, 0.95) - bound <= 100)
            elif streaming and lat:
                row["target_met"] = bool(answered and percentile(lat, 0.5) - pipelined <= 60
                                         and percentile(lat, 0.95) - pipelined <= 150)
            rows.append(row)
            if args.per_turn:
                print(f"  {n} conversations, {mode}: "
                      + " ".join(f"{x:.0f}" for x in lat), flush=True)
    print(f"turn latency, caller's last voiced frame -> first voiced reply frame; load average {load:.1f} on "
          f"{os.cpu_count()} CPUs")
    print(f"configured: VAD silence {args.silence_ms} ms, STT {args.stt_ms:g} ms, first token "
          f"{args.first_token_ms:g} ms + {args.token_ms:g} ms/token, TTS first audio {args.tts_first_ms:g} ms at "
          f"{args.tts_rtf:g}x real time")
    print(f"bounds: pipelined {pipelined:.0f} ms, sequential {sequential:.0f} ms"
          + (f", realtime {args.silence_ms + args.realtime_delay_ms:.0f} ms (VAD silence + the model's "
             f"{args.realtime_delay_ms:g} ms)" if args.mode == "realtime" else "")
          + "; turns: answered before the caller's next turn / taken; lag: caller audio sent -> received by the "
          "STT (ms), the daemon's input backlog; CPU (cores) used by the daemon / fake OpenAI / simulated "
          "callers, and the machine busy in all / stolen by the hypervisor; slow: how much more CPU time a fixed "
          "piece of work took during the round than at its fastest (a shared host's cores run slower when its "
          "other tenants are busy, stolen time aside); fake late: p95 ms the fake OpenAI's "
          "token ending the first sentence / first TTS audio came after its schedule (the fakes' own share)")
    print(f"{'conversations':>13} {'mode':>13} {'turns':>9} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} "
          f"{'bound':>6} {'share p50':>9} {'share p95':>9} {'daemon p50':>10} {'lag p95/max':>13} {'CPU d/f/c':>14} "
          f"{'busy/stolen':>11} {'slow':>5} {'fake late':>10} {'target':>7}")
    for r in rows:
        mode = r["mode"]
        target = "" if "target_met" not in r else ("met" if r["target_met"] else "NOT met")
        lag = f"{r['audio_lag']['p95']}/{r['audio_lag']['max']}"
        print(f"{r['conversations']:>13} {mode:>13} {r['turns']:>4}/{r['expected']:<4} {r['p50']!s:>8} "
              f"{r['p95']!s:>8} {r['max']!s:>8} {r['bound']:>6.0f} {r['share_p50']!s:>9} {r['share_p95']!s:>9} "
              f"{r['daemon_measured']['p50']!s:>10} {lag:>13} "
              f"{r['cpu_daemon']:>4}/{r['cpu_fake_openai']:>4}/{r['cpu_callers']:<4} "
              f"{r['machine_busy']:>5}/{r['machine_stolen']:<5} {r['cpu_slowdown']:>5} "
              f"{r['fake_late_chat']['p95']!s:>4}/{r['fake_late_tts']['p95']!s:<5} {target:>7}")
    print(json.dumps({"benchmark": "turn_latency", "load_average": round(load, 2), "cpus": os.cpu_count(),
                      "bound_pipelined_ms": pipelined, "bound_sequential_ms": sequential,
                      "config": {k: getattr(args, k) for k in ("silence_ms", "stt_ms", "first_token_ms", "token_ms",
                                                               "tts_first_ms", "tts_rtf", "mode",
                                                               "realtime_delay_ms")},
                      "rows": rows}))


if __name__ == "__main__":
    main()
