"""Twilio's answering-machine detection (AMD), as the provider uses it.
Pure functions: no state, no network.

https://www.twilio.com/docs/voice/answering-machine-detection: a call
created with ``MachineDetection`` reports who answered as ``AnsweredBy``:
``human``, ``machine_start`` (``Enable``: a machine, known as soon as it
starts its greeting), ``machine_end_beep``, ``machine_end_silence``,
``machine_end_other`` (``DetectMessageEnd``: a machine, reported once its
greeting ended, "usually indicated by a beep"), ``fax`` or ``unknown``.

Two ways of asking, chosen by ``outbound.voicemail``:

* ``hangup`` with ``twilio.machineDetection`` (``sync``):
  ``MachineDetection=Enable``. Twilio holds the call's TwiML fetch until it
  knows and sends ``AnsweredBy`` with it (and with the status callbacks);
  the provider hangs up on a machine, as it always did.
* ``leave-message`` (``async``): ``MachineDetection=DetectMessageEnd`` with
  ``AsyncAmd=true``: the TwiML runs from the answer while Twilio listens,
  and the verdict is posted to ``AsyncAmdStatusCallback`` (``CallSid``,
  ``AccountSid``, ``AnsweredBy``, ``MachineDetectionDuration``), signed
  like every webhook (https://www.twilio.com/docs/usage/security). The
  callback URL is the call's webhook with ``type=amd``. A machine's verdict
  comes when its greeting has ended: the moment to leave the message.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlencode

Mode = Literal["off", "sync", "async"]

#: ``AnsweredBy`` as the call record's ``answeredBy`` says it.
ANSWERED_BY: dict[str, str] = {
    "human": "human", "machine_start": "machine", "machine_end_beep": "machine",
    "machine_end_silence": "machine", "machine_end_other": "machine", "fax": "fax", "unknown": "unknown",
}
#: Verdicts that mean the machine's greeting is over (DetectMessageEnd).
GREETING_ENDED = frozenset({"machine_end_beep", "machine_end_silence", "machine_end_other"})


def mode(config: Any) -> Mode:
    """How detection is asked for, under ``config`` (a ``Config``)."""
    if config.outbound.voicemail == "leave-message":
        return "async"
    return "sync" if config.twilio.machineDetection else "off"


def create_params(how: Mode, webhook_url: str, call_id: str) -> list[tuple[str, str]]:
    """The Calls-resource parameters that ask for detection."""
    if how == "sync":
        return [("MachineDetection", "Enable")]
    if how == "async":
        callback = f"{webhook_url}?{urlencode({'callId': call_id, 'type': 'amd'})}"
        return [("MachineDetection", "DetectMessageEnd"), ("AsyncAmd", "true"),
                ("AsyncAmdStatusCallback", callback), ("AsyncAmdStatusCallbackMethod", "POST")]
    return []


def answered_by(value: str | None) -> str | None:
    """The record's ``answeredBy`` for Twilio's ``AnsweredBy``; None if absent."""
    if not value:
        return None
    return ANSWERED_BY.get(value, "unknown")
