"""Twilio's side of call control, without I/O: DTMF and transfer TwiML, how
a ``<Dial>`` ended, and recordings (request parameters, status callbacks).

* DTMF: ``<Play digits="...">`` (``w`` waits half a second), after the
  speech queued before it; then back to the call's script, like speech
  (https://www.twilio.com/docs/voice/twiml/play#attributes-digits).
* Transfer: the message as ``<Say>``, then ``<Dial action timeout>`` with
  one ``<Number statusCallbackEvent="answered" statusCallback>``. Twilio
  posts the ``<Number>``'s status callback when the target answers (the
  transfer succeeded: the call is the target's now) and requests the
  ``action`` when the dial is over, with ``DialCallStatus`` ``completed`` or
  ``answered`` (it was answered), or ``busy``, ``no-answer``, ``failed``,
  ``canceled`` (it was not: the original call goes on with whatever the
  action answers) (https://www.twilio.com/docs/voice/twiml/dial#dialcallstatus,
  https://www.twilio.com/docs/voice/twiml/number#attributes-status-callback-event).
* Recording: ``Record=true`` with ``RecordingChannels`` (``mono`` or
  ``dual``) and a ``RecordingStatusCallback`` on call create
  (https://www.twilio.com/docs/voice/api/call-resource#create-a-call-resource);
  a call Twilio did not create for us (inbound) starts its first document
  with ``<Start><Recording channels recordingStatusCallback>``
  (https://www.twilio.com/docs/voice/twiml/recording).
  The callback carries ``RecordingStatus`` (``completed``, ``absent``...),
  ``RecordingUrl``, ``RecordingDuration`` (seconds) and
  ``RecordingChannels`` (1 or 2)
  (https://www.twilio.com/docs/voice/api/recording#recordingstatuscallback);
  it is signed like every webhook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .twilio_wire import first, to_int

#: ``DialCallStatus`` values of a dial the target answered.
DIAL_ANSWERED = frozenset({"completed", "answered"})
_DIAL_FAILURES = {
    "busy": "the target was busy",
    "no-answer": "the target did not answer",
    "failed": "Twilio could not reach the target",
    "canceled": "the dial was canceled",
}
#: Recording callbacks asked for: the recording is ready, or there is none.
RECORDING_EVENTS = "completed absent"
#: The ``<Number>``'s status callback for an answered target says ``in-progress``.
ANSWERED_STATUS = "in-progress"


@dataclass(frozen=True)
class DialOutcome:
    answered: bool
    why: str = ""


def dial_outcome(params: list[tuple[str, str]]) -> DialOutcome:
    """How a ``<Dial>`` ended, from its action request."""
    status = first(params, "DialCallStatus") or ""
    if status in DIAL_ANSWERED:
        return DialOutcome(True)
    why = _DIAL_FAILURES.get(status, f"Twilio reported DialCallStatus {status or 'nothing'}")
    code = first(params, "ErrorCode")
    return DialOutcome(False, why + (f" (Twilio error {code})" if code else ""))


def recording_params(callback_url: str, channels: str) -> list[tuple[str, str]]:
    """The recording parameters of a call create, besides ``Record``."""
    return [("RecordingChannels", "dual" if channels == "dual" else "mono"),
            ("RecordingStatusCallback", callback_url), ("RecordingStatusCallbackMethod", "POST"),
            ("RecordingStatusCallbackEvent", RECORDING_EVENTS)]


@dataclass(frozen=True)
class RecordingReport:
    status: str
    recording: dict[str, Any] | None  # url, durationSec, channels; None unless completed


def recording_report(params: list[tuple[str, str]]) -> RecordingReport:
    """A recording status callback: its status and, once completed, the
    recording as the call record keeps it."""
    status = first(params, "RecordingStatus") or ""
    url = first(params, "RecordingUrl")
    if status != "completed" or not url:
        return RecordingReport(status, None)
    channels = {"1": "mono", "2": "dual"}.get(first(params, "RecordingChannels") or "")
    return RecordingReport(status, {"url": url, "durationSec": to_int(first(params, "RecordingDuration")),
                                    "channels": channels})
