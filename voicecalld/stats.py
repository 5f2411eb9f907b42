"""Call statistics: ``voicecallctl stats`` over the call log, and the live
figures of ``daemon.status``, in one shape.

``voicecallctl stats`` reads ``<store>/calls.jsonl`` itself (read-only), so
it works with the daemon stopped. Like everything ``voicecallctl`` imports,
this module uses the standard library only.

Figures (voicecallctl(1)):

* ``byEndReason``, ``byDirection``: ended calls; ``active``: calls whose
  last record has no end yet (in progress, or cut off by a crash);
* ``answerRate``: of the ended outbound calls, those answered (by anyone or
  anything: a voicemail counts), None without any;
* ``averageDurationSec``: from answer to end, over the answered calls;
* ``turnLatencyMs``: ``p50``, ``p95`` (nearest rank) and ``max`` of every
  measured turn (``turns`` of the records), and how many there were.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``1h``, ``24h``, ``7d``, ``2w`` -> seconds; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"expected a duration like 1h, 24h or 7d, got {text!r}")
    return float(int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def quantile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile of sorted values (None if there are none)."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def latency_summary(values: Iterable[float]) -> dict[str, Any]:
    ordered = sorted(values)

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v, 1)

    return {"turns": len(ordered), "p50": ms(quantile(ordered, 0.5)), "p95": ms(quantile(ordered, 0.95)),
            "max": ms(ordered[-1] if ordered else None)}


def read_log(path: str) -> dict[str, dict[str, Any]]:
    """The last snapshot of every call in the log at ``path`` (torn or
    corrupt lines are skipped, as the daemon skips them). OSError if unreadable."""
    records: dict[str, dict[str, Any]] = {}
    with open(path, "rb") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(record, dict) and isinstance(record.get("callId"), str):
                records[record["callId"]] = record
    return records


def _ms(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def summarize(records: Iterable[Mapping[str, Any]], since_ms: int | None = None) -> dict[str, Any]:
    """The figures over the calls started at or after ``since_ms`` (all without it)."""
    by_reason: dict[str, int] = {}
    by_direction: dict[str, int] = {}
    active = ended = outbound_ended = outbound_answered = 0
    durations: list[float] = []
    latencies: list[float] = []
    for record in records:
        started = _ms(record.get("startedAt")) or 0
        if since_ms is not None and started < since_ms:
            continue
        for turn in record.get("turns") or ():
            latency = turn.get("latencyMs") if isinstance(turn, dict) else None
            if isinstance(latency, (int, float)) and not isinstance(latency, bool):
                latencies.append(float(latency))
        reason = record.get("endReason")
        if _ms(record.get("endedAt")) is None or not isinstance(reason, str):
            active += 1
            continue
        ended += 1
        direction = str(record.get("direction") or "unknown")
        by_reason[reason] = by_reason.get(reason, 0) + 1
        by_direction[direction] = by_direction.get(direction, 0) + 1
        answered, end = _ms(record.get("answeredAt")), _ms(record.get("endedAt"))
        if direction == "outbound":
            outbound_ended += 1
            outbound_answered += answered is not None
        if answered is not None and end is not None and end >= answered:
            durations.append((end - answered) / 1000)
    return {
        "calls": ended, "active": active,
        "byEndReason": dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))),
        "byDirection": dict(sorted(by_direction.items())),
        "answerRate": round(outbound_answered / outbound_ended, 4) if outbound_ended else None,
        "averageDurationSec": round(sum(durations) / len(durations), 1) if durations else None,
        "turnLatencyMs": latency_summary(latencies),
    }


class _Recent(Protocol):
    @property
    def recent(self) -> Iterable[float] | None: ...


def live(calls: Mapping[tuple[str, ...], float], turn_latency: _Recent) -> dict[str, Any]:
    """``daemon.status``'s figures since the daemon started: the ended calls
    (from the ``voicecalld_calls_total`` counts by (direction, reason)) and
    the turn latency of the last measured turns (seconds, kept by the
    histogram)."""
    by_reason: dict[str, int] = {}
    by_direction: dict[str, int] = {}
    for (direction, reason), count in calls.items():
        if count:
            by_reason[reason] = by_reason.get(reason, 0) + int(count)
            by_direction[direction] = by_direction.get(direction, 0) + int(count)
    recent = list(turn_latency.recent or ())
    return {"calls": sum(by_reason.values()),
            "byEndReason": dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))),
            "byDirection": dict(sorted(by_direction.items())),
            "turnLatencyMs": latency_summary(v * 1000 for v in recent)}
