"""Process-wide metrics, and their rendering in the Prometheus text
exposition format 0.0.4 (voicecalld(8), Monitoring).

The metric objects are module globals, so a hot path updates one with a
single call and no plumbing (``metrics.MEDIA_FORWARD.observe(seconds)``).
An update takes one uncontended lock: a few hundred nanoseconds, against
the ~20 ms of audio a media frame carries (benchmarks/media.py and
benchmarks/webhook.py measure it with ``--metrics on|off``). A lock rather
than relying on the interpreter lock: ``x += 1`` is not atomic across
threads, and the tests compare counts exactly.

Two kinds of metric:

* *per call* (``CALLS``, ``TURN_LATENCY``): a few updates per call; always
  recorded, because ``daemon.status`` reports them too;
* *per frame / request / append* (the rest): recorded only while a metrics
  listener is configured (``enable``), so a daemon without one pays nothing
  but a flag test on its hot paths.

Cardinality is bounded by construction: the only labels are the call's
direction, its end reason and a webhook's outcome, all from fixed sets. No
call id or phone number is ever a label.

Gauges that describe state owned elsewhere (active calls, open streams,
the process) are read when scraped, through callbacks the daemon installs
(``gauge_source``).
"""

from __future__ import annotations

import collections
import math
import os
import resource
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

#: Histogram buckets (seconds) for latencies between about 5 ms and 10 s:
#: turn latency, LLM first token, TTS first audio.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
                   10.0)
#: Forwarding a frame takes microseconds; a write to the log a millisecond or so (fsync).
FAST_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Hot-path metrics record only while this is true (a metrics listener is configured).
_enabled = False


def enable(on: bool) -> None:
    global _enabled
    _enabled = on


def enabled() -> bool:
    return _enabled


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class Metric:
    kind = ""

    def __init__(self, name: str, help_: str, *, always: bool = False) -> None:
        self.name = name
        self.help = help_
        #: Recorded even without a metrics listener (daemon.status reads it).
        self.always = always
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError


class Counter(Metric):
    """A count that only goes up, optionally by labels from fixed sets
    (``known`` pre-creates them, so a rate starts at 0, not at absence)."""

    kind = "counter"

    def __init__(self, name: str, help_: str, labels: Sequence[str] = (),
                 known: Iterable[tuple[str, ...]] = (), *, always: bool = False) -> None:
        super().__init__(name, help_, always=always)
        self.labels = tuple(labels)
        self._known = [tuple(k) for k in known] or ([()] if not self.labels else [])
        self._values: dict[tuple[str, ...], float] = dict.fromkeys(self._known, 0.0)

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        if not (_enabled or self.always):
            return
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def values(self) -> dict[tuple[str, ...], float]:
        with self._lock:
            return dict(self._values)

    def reset(self) -> None:
        with self._lock:
            self._values = dict.fromkeys(self._known, 0.0)

    def render(self) -> list[str]:
        return [f"{self.name}{_labels(self.labels, key)} {_number(v)}" for key, v in sorted(self.values().items())]


class Histogram(Metric):
    """Observations counted into cumulative buckets (``le``), with their sum."""

    kind = "histogram"

    def __init__(self, name: str, help_: str, buckets: Sequence[float], *, always: bool = False,
                 keep: int = 0) -> None:
        super().__init__(name, help_, always=always)
        self.bounds = tuple(sorted(buckets))
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        #: The last ``keep`` observations, for exact quantiles in daemon.status.
        self.recent: collections.deque[float] | None = collections.deque(maxlen=keep) if keep else None

    def observe(self, value: float) -> None:
        if not (_enabled or self.always):
            return
        i = bisect_left(self.bounds, value)  # le: a value equal to a bound falls in that bucket
        with self._lock:
            self._counts[i] += 1
            self._sum += value
        if self.recent is not None:
            self.recent.append(value)  # deque.append is atomic

    def snapshot(self) -> tuple[list[int], float]:
        """(cumulative counts per bound, +Inf last; sum)."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        running = 0
        for i, c in enumerate(counts):
            running += c
            counts[i] = running
        return counts, total

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts = [0] * (len(self.bounds) + 1)
            self._sum = 0.0
        if self.recent is not None:
            self.recent.clear()

    def render(self) -> list[str]:
        counts, total = self.snapshot()
        lines = [f'{self.name}_bucket{{le="{_number(b)}"}} {c}' for b, c in zip(self.bounds, counts, strict=False)]
        lines += [f'{self.name}_bucket{{le="+Inf"}} {counts[-1]}', f"{self.name}_sum {_number(total)}",
                  f"{self.name}_count {counts[-1]}"]
        return lines


class Gauge(Metric):
    """A value read when scraped, from a callback (None: not available, not
    rendered). ``kind="counter"`` for a total kept elsewhere (CPU time)."""

    def __init__(self, name: str, help_: str, default: Callable[[], float | None] | None = None,
                 kind: str = "gauge") -> None:
        super().__init__(name, help_)
        self.kind = kind
        self._default = default
        self.source = default

    def reset(self) -> None:
        self.source = self._default

    def value(self) -> float | None:
        source = self.source
        if source is None:
            return 0.0
        try:
            return source()
        except Exception:  # noqa: BLE001 - a scrape must not fail for one figure
            return None

    def render(self) -> list[str]:
        value = self.value()
        return [] if value is None else [f"{self.name} {_number(value)}"]


# --- the process ----------------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> float | None:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return float(int(fh.read().split()[1]) * _PAGE)
    except (OSError, ValueError, IndexError):
        return None


def _cpu() -> float | None:
    t = os.times()
    return t.user + t.system


def _open_fds() -> float | None:
    try:
        return float(len(os.listdir("/proc/self/fd")) - 1)  # minus the one listdir holds
    except OSError:
        return None


def _max_fds() -> float:
    return float(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


_STARTED = time.time()

# --- the metrics ------------------------------------------------------------------------------------

DIRECTIONS = ("inbound", "outbound")
END_REASONS = ("completed", "hangup-user", "hangup-bot", "timeout", "error", "failed", "no-answer", "busy",
               "voicemail")
WEBHOOK_OUTCOMES = ("accepted", "rejected", "replay", "error")

CALLS = Counter("voicecalld_calls_total", "Calls that ended, by direction and end reason.",
                ("direction", "end_reason"), [(d, r) for d in DIRECTIONS for r in END_REASONS], always=True)
CALLS_ACTIVE = Gauge("voicecalld_calls_active", "Calls in progress (counted against maxConcurrentCalls).")
CALLS_QUEUED = Gauge("voicecalld_calls_queued", "Outbound calls waiting for their dial slot.")
TURN_LATENCY = Histogram("voicecalld_turn_latency_seconds",
                         "Turn latency: from the caller's last word to the first audio of the reply at the "
                         "carrier.", LATENCY_BUCKETS, always=True, keep=10_000)
LLM_FIRST_TOKEN = Histogram("voicecalld_llm_first_token_seconds",
                            "From the auto-responder's Chat Completions request to the first token of the reply.",
                            LATENCY_BUCKETS)
TTS_FIRST_AUDIO = Histogram("voicecalld_tts_first_audio_seconds",
                            "From a text-to-speech request to its first audio.", LATENCY_BUCKETS)
MEDIA_FORWARD = Histogram("voicecalld_media_forward_seconds",
                          "From reading a caller's media frame off its socket to handing it to speech-to-text.",
                          FAST_BUCKETS)
MEDIA_STREAMS = Gauge("voicecalld_media_streams", "Media streams open.")
WEBHOOKS = Counter("voicecalld_webhook_requests_total",
                   "Carrier webhook requests by outcome: accepted, rejected (failed authentication), replay "
                   "(a repeated delivery answered from the replay cache) or error.",
                   ("outcome",), [(o,) for o in WEBHOOK_OUTCOMES])
STT_RECONNECTS = Counter("voicecalld_stt_reconnects_total", "Speech-to-text sessions that dropped and reconnected.")
STORE_APPEND = Histogram("voicecalld_store_append_seconds",
                         "Time to append a record to the call log, fsync included.", STORE_BUCKETS)
PROCESS = (
    Gauge("process_resident_memory_bytes", "Resident memory size in bytes.", _rss),
    Gauge("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", _cpu, kind="counter"),
    Gauge("process_open_fds", "Number of open file descriptors.", _open_fds),
    Gauge("process_max_fds", "Maximum number of open file descriptors.", _max_fds),
    Gauge("process_threads", "Number of threads.", lambda: float(threading.active_count())),
    Gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
          lambda: _STARTED),
)

ALL: tuple[Metric, ...] = (CALLS, CALLS_ACTIVE, CALLS_QUEUED, TURN_LATENCY, LLM_FIRST_TOKEN, TTS_FIRST_AUDIO,
                           MEDIA_FORWARD, MEDIA_STREAMS, WEBHOOKS, STT_RECONNECTS, STORE_APPEND, *PROCESS)


def call_ended(direction: str, reason: str) -> None:
    """A call reached its end reason (once per call)."""
    CALLS.inc(direction, reason)


def observe_turn(seconds: float) -> None:
    """One measured turn latency (``CallManager.note_turn`` calls it)."""
    TURN_LATENCY.observe(seconds)


def webhook(outcome: str) -> None:
    """One carrier webhook request: accepted, rejected, replay or error."""
    WEBHOOKS.inc(outcome)


def gauge_source(gauge: Gauge, source: Callable[[], float | None]) -> None:
    gauge.source = source


def reset() -> None:
    """Back to zero and to the default gauge sources (a daemon that stops, tests)."""
    for metric in ALL:
        metric.reset()


def render() -> bytes:
    """Every metric, in the text exposition format."""
    lines: list[str] = []
    for metric in ALL:
        body = metric.render()
        if body:
            lines += metric.header() + body
    return ("\n".join(lines) + "\n").encode("utf-8")
