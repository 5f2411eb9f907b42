"""``voicecallctl``'s output for people: aligned lines when stdout is a
terminal (voicecallctl(1), OUTPUT). Scripts get JSON; nothing here changes it.

A call is shown by the first 8 characters of its id, its direction, the
other party's number masked as in the daemon's logs (``+*******1234``), and
times in local time. Standard library only, like the rest of the CLI.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from .phone import mask

SPEAKERS = {"bot": "bot:", "user": "caller:"}


def short_id(call_id: object) -> str:
    return str(call_id or "?")[:8]


def clock(ms: object) -> str:
    """Epoch milliseconds as local HH:MM:SS ("--:--:--" if unknown)."""
    if not isinstance(ms, (int, float)) or isinstance(ms, bool):
        return "--:--:--"
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000))


def when(ms: object) -> str:
    """Epoch milliseconds as a local date and time."""
    if not isinstance(ms, (int, float)) or isinstance(ms, bool):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def duration(seconds: float | None) -> str:
    """``0:42``, ``12:05``, ``1:02:03``; "-" if unknown."""
    if seconds is None or seconds < 0:
        return "-"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def call_duration(record: Mapping[str, Any], now_ms: int | None = None) -> str:
    """From answer to end (to now for a live call); "-" if never answered."""
    answered = record.get("answeredAt")
    if not isinstance(answered, int):
        return "-"
    end = record.get("endedAt")
    if not isinstance(end, int):
        end = now_ms if now_ms is not None else int(time.time() * 1000)
    return duration((end - answered) / 1000)


def direction(record: Mapping[str, Any]) -> str:
    return {"outbound": "out", "inbound": "in"}.get(str(record.get("direction")), "?")


def party(record: Mapping[str, Any]) -> str:
    """The other party's number, masked: the callee of an outbound call, the caller of an inbound one."""
    number = record.get("from") if record.get("direction") == "inbound" else record.get("to")
    return mask(number)


def _head(record: Mapping[str, Any], at: object) -> str:
    return f"{clock(at)}  {short_id(record.get('callId'))}  {direction(record):<3}  {party(record):<14}"


def record_line(record: Mapping[str, Any]) -> str:
    """One call of the log: start time, who, how it ended (or its state), duration, its first line."""
    state = record.get("endReason") or record.get("state") or "?"
    first = next((t.get("text", "") for t in record.get("transcript") or () if isinstance(t, dict)), "")
    text = f"  {_clip(first, 60)!r}" if first else ""
    return f"{_head(record, record.get('startedAt'))}  {state:<11}  {call_duration(record):>7}{text}"


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def event_line(event: Mapping[str, Any], now_ms: int | None = None) -> str | None:
    """One live event as a line; None for what people need not see (partial transcripts)."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    call = event.get("call")
    record: dict[str, Any] = dict(call) if isinstance(call, dict) else {}
    record["callId"] = event.get("callId") or record.get("callId")
    raw = event.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    name = event.get("event")
    head = _head(record, now_ms)
    if name == "call.state":
        return f"{head}  {data.get('from', '?')} -> {data.get('to', '?')}"
    if name == "call.transcript":
        if not data.get("isFinal", True):
            return None
        speaker = SPEAKERS.get(str(data.get("speaker")), f"{data.get('speaker')}:")
        marks = " (interrupted)" if data.get("interrupted") else ""
        return f"{head}  {speaker:<7} {_clip(str(data.get('text', '')), 200)}{marks}"
    if name == "call.dtmf":
        return f"{head}  dtmf:   {data.get('digits', '')}"
    if name == "call.ended":
        return f"{head}  ended:  {data.get('reason', '?')} after {call_duration(record, now_ms)}"
    return f"{head}  {name}"


def list_table(calls: list[Mapping[str, Any]], now_ms: int | None = None) -> str:
    if not calls:
        return "no active calls"
    rows = [("STARTED", "CALL", "DIR", "NUMBER", "STATE", "MODE", "DURATION")]
    for r in calls:
        rows.append((clock(r.get("startedAt")), short_id(r.get("callId")), direction(r), party(r),
                     str(r.get("state", "?")), str(r.get("mode", "?")), call_duration(r, now_ms)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def status_block(record: Mapping[str, Any]) -> str:
    """A call record: who, when, how it ended, what was said, its turns."""
    state = str(record.get("state", "?"))
    ended = record.get("endReason")
    lines = [f"call      {record.get('callId')}",
             f"          {record.get('direction', '?')} {record.get('mode', '?')} call with {party(record)} "
             f"({record.get('provider', '?')})",
             f"state     {state}" + (f" (ended: {ended})" if ended and ended != state else ""),
             f"started   {when(record.get('startedAt'))}"]
    if record.get("answeredAt"):
        lines.append(f"answered  {when(record.get('answeredAt'))}")
    if record.get("endedAt"):
        lines.append(f"ended     {when(record.get('endedAt'))}")
    lines.append(f"duration  {call_duration(record)}")
    if record.get("error"):
        lines.append(f"error     {record['error']}")
    turns: list[float] = [t["latencyMs"] for t in record.get("turns") or ()
                          if isinstance(t, dict) and isinstance(t.get("latencyMs"), (int, float))]
    if turns:
        lines.append(f"turns     {len(turns)}, latency {_ms(sorted(turns)[len(turns) // 2])} median, "
                     f"{_ms(max(turns))} max")
    transcript = [t for t in record.get("transcript") or () if isinstance(t, dict)]
    if transcript:
        lines.append("")
        for t in transcript:
            speaker = SPEAKERS.get(str(t.get("speaker")), f"{t.get('speaker')}:")
            marks = "".join(f" ({m})" for m in ("interrupted", "undelivered") if t.get(m))
            lines.append(f"{clock(t.get('timestamp'))}  {speaker:<7} {t.get('text', '')}{marks}")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def stats_block(figures: Mapping[str, Any], since: str | None = None) -> str:
    latency = figures.get("turnLatencyMs") or {}
    rate = figures.get("answerRate")
    avg = figures.get("averageDurationSec")
    lines = [f"calls            {figures.get('calls', 0)} ended" + (f" in the last {since}" if since else "")
             + (f", {figures['active']} not ended" if figures.get("active") else ""),
             f"by end reason    {_counts(figures.get('byEndReason') or {})}",
             f"by direction     {_counts(figures.get('byDirection') or {})}"]
    if "answerRate" in figures:
        lines.append(f"answer rate      {'-' if rate is None else f'{rate * 100:.0f}%'} (outbound)")
    if "averageDurationSec" in figures:
        lines.append(f"average length   {duration(avg)}")
    lines.append(f"turn latency     p50 {_ms(latency.get('p50'))}, p95 {_ms(latency.get('p95'))}, "
                 f"max {_ms(latency.get('max'))} ({_plural(int(latency.get('turns') or 0), 'turn')})")
    return "\n".join(lines)
