"""One log line per call event, always with the callId.

At info level a line says what happened without personal data: phone
numbers are masked to their last four digits (voicecalld.phone.mask), and
what was said or keyed in (which may be a PIN, an address, a card number)
appears only as a length. With ``-v`` (debug) the same events are logged
again in full, for troubleshooting on a machine the operator controls.
Secrets never reach this module: events carry call records, not settings.
"""

from __future__ import annotations

import logging
from typing import Any

from .events import EventBus, EventParams
from .phone import mask

log = logging.getLogger("voicecalld.calls")


def _parties(call: dict[str, Any], full: bool) -> str:
    show = (lambda n: n or "<none>") if full else mask
    if call.get("direction") == "inbound":
        return f"inbound from {show(call.get('from'))}"
    return f"outbound to {show(call.get('to'))}"


def log_event(params: EventParams) -> None:
    """An EventBus subscriber: formats and logs; never raises, never blocks on I/O of its own."""
    name, call_id = params.get("event"), params.get("callId")
    call, data = params.get("call") or {}, params.get("data") or {}
    if name == "call.state":
        new = data.get("to")
        log.info("call %s: %s -> %s (%s)", call_id, data.get("from"), new, _parties(call, False))
        log.debug("call %s: %s, state %s, %s via %s", call_id, _parties(call, True), new,
                  call.get("providerCallId"), call.get("provider"))
    elif name == "call.transcript":
        text = str(data.get("text") or "")
        final = "final" if data.get("isFinal", True) else "partial"
        if final == "final":  # partials come many per utterance: debug detail
            log.info("call %s: %s said %d characters", call_id, data.get("speaker"), len(text))
        log.debug("call %s: %s said %r (%s)", call_id, data.get("speaker"), text, final)
    elif name == "call.dtmf":
        digits = str(data.get("digits") or "")
        who = "bot sent" if data.get("direction") == "sent" else "callee pressed"
        log.info("call %s: %s %d key(s)", call_id, who, len(digits))
        log.debug("call %s: %s %r", call_id, who, digits)
    elif name == "call.ended":
        # The manager already logs "ended" at info level.
        log.debug("call %s: ended %s (%s)", call_id, data.get("reason"), _parties(call, True))
    else:
        log.debug("call %s: event %s", call_id, name)


def attach(bus: EventBus) -> None:
    bus.subscribe(log_event)
