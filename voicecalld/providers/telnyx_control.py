"""Telnyx's side of call control: DTMF, cold transfer and recording, on
Call Control v2 (https://developers.telnyx.com/api/call-control).

* DTMF: ``actions/send_dtmf`` with ``digits`` (``0-9 A-D * #``; ``w`` a
  0.5 s pause) and ``duration_millis`` (100-500; 100, as the tones we make
  in-band) (https://developers.telnyx.com/api/call-control/send-dtmf).
* Transfer: ``actions/transfer`` with ``to``, ``timeout_secs`` and a
  ``target_leg_client_state`` that marks the new leg (B) as our call's
  transfer (https://developers.telnyx.com/api/call-control/transfer-call).
  Telnyx dials B and reports it with B's own webhooks: ``call.answered``
  (the transfer succeeded: the call is B's now) or, if it failed,
  ``call.hangup`` ("the original call will remain active"), whose
  ``hangup_cause`` says why. A message is said first: the transfer is
  sent once its ``call.speak.ended`` arrives, as Telnyx would otherwise
  transfer while it speaks.
* Recording: ``actions/record_start`` with ``channels`` (``single`` or
  ``dual``) and ``format`` once the call is answered
  (https://developers.telnyx.com/api/call-control/start-call-record); the
  recording is reported by ``call.recording.saved``, signed like every
  webhook, with ``recording_urls`` (valid for 10 minutes) and
  ``public_recording_urls`` (kept while the file exists, where enabled),
  ``recording_started_at``/``recording_ended_at`` and ``channels`` (the
  record_start page's callback schema, and ``CallRecordingSavedWebhookEvent``
  in team-telnyx/telnyx-python).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from ..calls import CallEvent, CallRecord, EventType, SendDtmf, Speak, Transfer
from ..errors import ProviderError
from . import telnyx_events as wire
from .telnyx_events import ring_timeout_secs
from .telnyx_legs import Leg, LegTable

if TYPE_CHECKING:  # pragma: no cover
    from .base import CallSink

log = logging.getLogger("voicecalld.providers.telnyx")

DTMF_MILLIS = 100
RECORDING_FORMAT = "mp3"
_TRANSFER_PREFIX = "transfer:"
_TRANSFER_UTTERANCE = "transfer-"  # the id of a transfer's message (not an utterance of the call's)
_CALL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: ``hangup_cause`` of a transfer's leg B that never answered -> why.
_TRANSFER_FAILURES = {
    "user_busy": "the target was busy",
    "call_rejected": "the target declined the call",
    "timeout": "the target did not answer",
    "no_answer": "the target did not answer",
    "not_found": "the target number cannot be reached",
}


def is_transfer_message(utterance_id: str) -> bool:
    return utterance_id.startswith(_TRANSFER_UTTERANCE)


def encode_transfer_state(call_id: str) -> str:
    """B's ``client_state``: names our call, and is not a call id itself, so
    B's webhooks are never taken for our call's own."""
    return base64.b64encode((_TRANSFER_PREFIX + call_id).encode("utf-8")).decode("ascii")


def transfer_of(hook: wire.Webhook) -> str | None:
    """Our call id if ``hook`` is about a transfer's leg B, else None."""
    value = hook.payload.get("client_state")
    if not isinstance(value, str) or len(value) > 512:
        return None
    try:
        text = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    call_id = text.removeprefix(_TRANSFER_PREFIX)
    return call_id if call_id != text and _CALL_ID.fullmatch(call_id) else None


def _url(urls: object) -> str | None:
    if not isinstance(urls, dict):
        return None
    for kind in (RECORDING_FORMAT, "wav", "mp3"):
        value = urls.get(kind)
        if isinstance(value, str) and value:
            return value
    return None


def _when(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def recording_saved(payload: dict[str, Any]) -> dict[str, Any] | None:
    """A ``call.recording.saved`` payload as the call record keeps it, or
    None without a URL. The public URL is preferred: the other expires."""
    url = _url(payload.get("public_recording_urls")) or _url(payload.get("recording_urls"))
    if url is None:
        return None
    started, ended = _when(payload.get("recording_started_at")), _when(payload.get("recording_ended_at"))
    duration = None
    if started is not None and ended is not None and started.tzinfo is not None and ended.tzinfo is not None:
        duration = max(0, round((ended - started).total_seconds()))
    channels = {"dual": "dual", "single": "mono"}.get(str(payload.get("channels")))
    return {"url": url, "durationSec": duration, "channels": channels}


class Host(Protocol):
    """What call control uses of the Telnyx provider."""

    _legs: LegTable
    _lock: threading.Lock

    @property
    def sink(self) -> CallSink: ...
    @property
    def _config(self) -> Any: ...
    def _command(self, ccid: str, name: str, body: dict[str, Any], what: str, *,
                 ended_ok: bool = False) -> bool: ...
    def _ccid(self, record: CallRecord) -> str: ...
    def speak_with_telnyx(self, record: CallRecord, action: Speak) -> None: ...
    def emit(self, event: CallEvent) -> None: ...


class TelnyxControl:
    def __init__(self, host: Host) -> None:
        self.host = host

    def send_dtmf(self, record: CallRecord, action: SendDtmf) -> None:
        self.host._command(self.host._ccid(record), "send_dtmf",
                           {"digits": action.digits, "duration_millis": DTMF_MILLIS}, "send DTMF", ended_ok=True)

    def start_recording(self, record: CallRecord) -> None:
        channels = "dual" if self.host._config.recording.channels == "dual" else "single"
        self.host._command(self.host._ccid(record), "record_start",
                           {"channels": channels, "format": RECORDING_FORMAT}, "start recording", ended_ok=True)

    def transfer(self, record: CallRecord, action: Transfer) -> None:
        if not action.message:
            self._transfer(record.callId, self.host._ccid(record), action)
            return
        leg = self.host._legs.for_record(record)
        utterance = f"{_TRANSFER_UTTERANCE}{uuid.uuid4().hex[:12]}"
        with self.host._lock:
            leg.transfer = (utterance, action)
        try:
            # Telnyx's own speech even on a streamed call: its call.speak.ended
            # is what sends the transfer.
            self.host.speak_with_telnyx(record, Speak(action.message, utterance))
        except Exception:
            with self.host._lock:
                leg.transfer = None
            raise

    def _transfer(self, call_id: str, ccid: str, action: Transfer) -> None:
        body = {"to": action.to, "timeout_secs": ring_timeout_secs(self.host._config.ringTimeoutMs),
                "target_leg_client_state": encode_transfer_state(call_id)}
        if not self.host._command(ccid, "transfer", body, "transfer the call", ended_ok=True):
            raise ProviderError("the call ended before it could be transferred")

    def speak_ended(self, leg: Leg, utterance: str, hook: wire.Webhook) -> bool:
        """On ``call.speak.ended``: True if the utterance was a transfer's
        message (then the transfer goes out now, if it was said to the end)."""
        with self.host._lock:
            pending = leg.transfer
            if pending is None or pending[0] != utterance:
                return False
            leg.transfer = None
        if (hook.text("status") or "completed") != "completed" or leg.call_id is None or leg.ccid is None:
            return True  # cut off by the hang-up: the call ends anyway
        try:
            self._transfer(leg.call_id, leg.ccid, pending[1])
        except ProviderError as exc:
            self.host.emit(CallEvent(EventType.TRANSFER_FAILED, hook.id + ":transfer", call_id=leg.call_id,
                                     provider_call_id=leg.ccid, message=exc.message))
        return True

    def handle(self, hook: wire.Webhook) -> bool:
        """Webhooks of a transfer's leg B, and recordings; True if handled."""
        if hook.type == "call.recording.saved":
            self._recording(hook)
            return True
        call_id = transfer_of(hook)
        if call_id is None:
            return False
        if hook.type == "call.answered":
            self.host.emit(CallEvent(EventType.TRANSFERRED, hook.id, call_id=call_id))
        elif hook.type == "call.hangup":
            cause = hook.payload.get("hangup_cause")
            why = _TRANSFER_FAILURES.get(cause if isinstance(cause, str) else "",
                                         f"the target's call ended ({cause or 'no cause given'})")
            # After an answer this is the end of the bridge, and our call is
            # over already: the engine ignores it then.
            self.host.emit(CallEvent(EventType.TRANSFER_FAILED, hook.id, call_id=call_id, message=why))
        return True  # B's other webhooks (initiated, bridged...) change nothing of ours

    def _recording(self, hook: wire.Webhook) -> None:
        recording = recording_saved(dict(hook.payload))
        if recording is None:
            log.warning("a Telnyx call.recording.saved without a recording URL was ignored")
            return
        self.host.sink.report_recording(hook.call_id, hook.call_control_id, recording)
