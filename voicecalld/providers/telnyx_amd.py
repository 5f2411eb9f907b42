"""Telnyx answering-machine detection, as the provider uses it. Pure.

https://developers.telnyx.com/docs/voice/programmable-voice/answering-machine-detection:
a dial's ``answering_machine_detection`` chooses the detector.

* ``outbound.voicemail = leave-message`` dials with ``premium``. Its
  verdict, ``call.machine.premium.detection.ended``, is one of
  ``human_residence``, ``human_business``, ``machine``, ``silence``,
  ``fax_detected`` or ``not_sure``; for a machine,
  ``call.machine.premium.greeting.ended`` follows when its greeting ends
  (``beep_detected``, or ``no_beep_detected``;
  https://developers.telnyx.com/api-reference/callbacks/call-machine-premium-greeting-ended):
  the moment to leave the message.
* ``telnyx.machineDetection`` alone dials with ``detect``: the verdict
  ``call.machine.detection.ended`` is ``human``, ``machine`` or
  ``not_sure``, and the provider hangs up on a machine (the call ends as
  voicemail), as it always did.
"""

from __future__ import annotations

from typing import Any

#: Results that are an answering machine.
MACHINE_RESULTS = frozenset({"machine"})
#: Results (plain and premium) as the record's ``answeredBy`` says them.
ANSWERED_BY = {"human": "human", "human_residence": "human", "human_business": "human", "machine": "machine",
               "fax_detected": "fax", "silence": "unknown", "not_sure": "unknown"}


def dial_mode(config: Any) -> str | None:
    """The dial's ``answering_machine_detection`` under ``config`` (a ``Config``); None: off."""
    if config.outbound.voicemail == "leave-message":
        return "premium"
    return "detect" if config.telnyx.machineDetection else None


def leaves_messages(config: Any) -> bool:
    return bool(config.outbound.voicemail == "leave-message")


def answered_by(result: str | None) -> str | None:
    """The record's ``answeredBy`` for a detection result; None if absent."""
    return None if result is None else ANSWERED_BY.get(result, "unknown")
