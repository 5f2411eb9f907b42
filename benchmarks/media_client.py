"""How well the simulated Twilio (``voicecalld.testing.media_client``) keeps time.

The media benchmark and the streaming tests lean on ``MediaStreamClient``
to send 20 ms frames on schedule and to echo ``mark`` messages when the
audio before them has played. Its tests check the behaviour (absolute
schedule, never early, marks due at the end of the queued audio, a
``clear`` returning marks at once); this measures the timing, which on a
loaded machine is noise the tests must not depend on.

Against a local WebSocket server, for ``--seconds`` of audio:

* frame send lateness (send time against the frame's slot) p50/p99/max,
  and the median over the last tenth (drift would show there);
* mean inter-arrival gap at the server against the 20 ms period, and the
  total span of the arrivals against the schedule's;
* mark echo lateness (echo time against when the audio before it ends);
* ``clear`` to echo of the pending mark.

The reference is the 20 ms frame period: every figure is also given as a
share of it. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import base64
import json
import queue
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import simple_websocket  # noqa: E402
from werkzeug.wrappers import Request, Response  # noqa: E402

from voicecalld.testing._http import BackgroundServer, serve_websocket  # noqa: E402
from voicecalld.testing.media_client import FRAME_SECONDS, MediaStreamClient, silence, speech_like  # noqa: E402

_CLOSE = object()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Server:
    """The daemon's end of one stream: stamps what arrives, sends what it is given."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[dict[str, Any], float]] = []
        self.changed = threading.Condition()
        self.outbox: queue.Queue[Any] = queue.Queue()
        self.http = BackgroundServer(self.app)

    def app(self, environ: dict[str, Any], start_response: Any) -> Any:
        if Request(environ).path != "/stream":
            return Response("not found", status=404)(environ, start_response)
        serve_websocket(environ, self.session)

    def session(self, ws: simple_websocket.Server) -> None:
        while True:
            try:
                raw = ws.receive(timeout=0.001)
            except simple_websocket.ConnectionClosed:
                return
            if raw is not None:
                with self.changed:
                    self.arrivals.append((json.loads(raw), time.monotonic()))
                    self.changed.notify_all()
            while not self.outbox.empty():
                item = self.outbox.get()
                if item is _CLOSE:
                    ws.close()
                    return
                ws.send(json.dumps(item))

    def wait_for(self, event: str, count: int, timeout: float = 30.0) -> list[tuple[dict[str, Any], float]]:
        def matching() -> list[tuple[dict[str, Any], float]]:
            return [(m, t) for m, t in self.arrivals if m.get("event") == event]

        with self.changed:
            if not self.changed.wait_for(lambda: len(matching()) >= count, timeout):
                raise SystemExit(f"timed out waiting for {count} {event!r} messages")
            return matching()


def ms(seconds: float) -> float:
    return seconds * 1000


def run(seconds: float, marks: int) -> dict[str, float]:
    server = Server()
    server.http.start()
    client = MediaStreamClient(f"ws://127.0.0.1:{server.http.port}/stream")
    client.connect()
    try:
        frames = client.play(speech_like(seconds))
        arrivals = [t for _, t in server.wait_for("media", frames)]
        sent = client.sent_frames
        late = [f.sent_at - f.due for f in sent]
        tail = late[-max(1, len(late) // 10):]
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
        span_error = (arrivals[-1] - arrivals[0]) - (len(arrivals) - 1) * FRAME_SECONDS

        # Marks after 0.2 s of audio each: echoed when that audio has played.
        sid = client.stream_sid
        chunk = base64.b64encode(silence(0.2)).decode()
        long = base64.b64encode(silence(10.0)).decode()
        for i in range(marks):
            server.outbox.put({"event": "media", "streamSid": sid, "media": {"payload": chunk}})
            server.outbox.put({"event": "mark", "streamSid": sid, "mark": {"name": f"m{i}"}})
        for i in range(marks):
            client.wait_for_mark(f"m{i}", timeout=marks * 0.2 + 30)
        echo_late = [m.echoed_at - m.play_done for m in client.marks if m.echoed_at is not None]

        # Clear: each pending mark comes back at once, not when its audio would end.
        clear_delays = []
        for i in range(marks):
            server.outbox.put({"event": "media", "streamSid": sid, "media": {"payload": long}})
            server.outbox.put({"event": "mark", "streamSid": sid, "mark": {"name": f"c{i}"}})
            client.wait_for(lambda i=i: any(m.name == f"c{i}" for m in client.marks), 30)
            server.outbox.put({"event": "clear", "streamSid": sid})
            mark = client.wait_for_mark(f"c{i}", timeout=30)
            assert mark.cleared and mark.echoed_at is not None
            clear_delays.append(mark.echoed_at - client.clears[-1])
    finally:
        client.stop()
        server.outbox.put(_CLOSE)
        server.http.stop()
    return {
        "frames": float(len(sent)),
        "send_late_p50_ms": ms(statistics.median(late)), "send_late_p99_ms": ms(percentile(late, 0.99)),
        "send_late_max_ms": ms(max(late)), "send_late_last_tenth_p50_ms": ms(statistics.median(tail)),
        "early_frames": float(sum(x < 0 for x in late)),
        "arrival_gap_mean_ms": ms(statistics.mean(gaps)), "arrival_span_error_ms": ms(span_error),
        "mark_echo_late_p50_ms": ms(statistics.median(echo_late)),
        "mark_echo_late_p99_ms": ms(percentile(echo_late, 0.99)),
        "clear_to_echo_p50_ms": ms(statistics.median(clear_delays)),
        "clear_to_echo_max_ms": ms(max(clear_delays)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="audio streamed (50 frames a second)")
    parser.add_argument("--marks", type=int, default=20)
    args = parser.parse_args()
    result = run(args.seconds, args.marks)
    period = ms(FRAME_SECONDS)
    print(f"{'figure':<32}{'ms':>10}{'% of 20 ms frame':>18}")
    for key, value in result.items():
        if key.endswith("_ms"):
            print(f"{key[:-3]:<32}{value:>10.3f}{value / period * 100:>18.1f}")
    print(f"{'frames':<32}{result['frames']:>10.0f}\n{'early frames (must be 0)':<32}{result['early_frames']:>10.0f}")
    print(json.dumps({"benchmark": "media_client", "seconds": args.seconds, "marks": args.marks,
                      **{k: round(v, 3) for k, v in result.items()}}))


if __name__ == "__main__":
    main()
