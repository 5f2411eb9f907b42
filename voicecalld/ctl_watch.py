"""``voicecallctl`` commands that follow calls live: ``tail``, ``call
--follow`` and ``watch --call-id`` (voicecallctl(1)).

Events are read on a connection of their own, subscribed *before* the call
is placed or looked up, so nothing that happens in between is missed (a
connection that sends a request skips the notifications that arrive before
its answer). ``call --follow`` and ``watch`` end when the call does, with
exit status 0 if it ended ``completed``, ``hangup-user``, ``hangup-bot`` or
``transferred``, else 1.

On a terminal the lines are for people (``ctl_format``); otherwise each
record and event is one JSON object per line, as ``tail -f`` prints them.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from . import ctl_format
from .control.client import Client
from .phone import mask

#: End reasons after which ``call --follow`` / ``watch`` exit 0.
GOOD_ENDS = frozenset({"completed", "hangup-user", "hangup-bot", "transferred"})
EX_OK, EX_ERROR = 0, 1


def exit_status(reason: object) -> int:
    return EX_OK if reason in GOOD_ENDS else EX_ERROR


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _json_line(value: Any) -> None:
    _emit(json.dumps(value, ensure_ascii=False))


def tail(client: Client, events: Client | None, n: int, human: bool) -> int:
    """The last ``n`` records of the log; with ``events`` (subscribed), then live events."""
    if n:
        for record in client.call("voicecall.history", {"limit": n})["calls"]:
            _emit(ctl_format.record_line(record)) if human else _json_line(record)
    sys.stdout.flush()
    if events is None:
        return EX_OK
    try:
        for event in events.events():
            _print_event(event, human)
    except KeyboardInterrupt:
        return EX_OK
    return EX_OK


def _print_event(event: dict[str, Any], human: bool) -> None:
    if not human:
        _json_line(event)
        return
    line = ctl_format.event_line(event)
    if line is not None:
        _emit(line)


def _until_ended(events: Client, call_id: str, human: bool) -> int:
    """Print the events of ``call_id`` until it ends; its exit status."""
    for event in events.events():
        if event.get("callId") != call_id:
            continue
        _print_event(event, human)
        if event.get("event") == "call.ended":
            data = event.get("data") or {}
            call = event.get("call") or {}
            return exit_status(data.get("reason") or call.get("endReason"))
    return EX_ERROR  # pragma: no cover - events() ends only by raising


def call_follow(client: Client, events: Client, params: dict[str, Any], human: bool) -> int:
    """``call --follow``: place the call, then print it live until it ends."""
    events.call("events.subscribe")  # every call: the new call's id is not known yet
    result = client.call("voicecall.initiate", params)
    call_id = str(result["callId"])
    if human:
        to = params.get("to")
        _emit(f"{ctl_format.clock(int(time.time() * 1000))}  {ctl_format.short_id(call_id)}  placed call "
              f"{call_id}" + (f" to {mask(to)}" if to else ""))
    else:
        _json_line(result)
    return _until_ended(events, call_id, human)


def watch(client: Client, events: Client, call_id: str, human: bool) -> int:
    """``watch --call-id``: the call as it stands, then live until it ends."""
    events.call("events.subscribe", {"callId": call_id})
    record = client.call("voicecall.status", {"callId": call_id})
    _emit(ctl_format.record_line(record)) if human else _json_line(record)
    if record.get("endedAt") is not None:
        return exit_status(record.get("endReason"))
    return _until_ended(events, call_id, human)
