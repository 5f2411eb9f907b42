"""The simulated phone network behind the fake Telnyx.

It owns the calls and turns happenings (ringing, answering, speech, keys,
hang-ups, timeouts) into state changes plus webhook events. Methods expect
the caller to hold ``lock``; timed happenings take it themselves when they
fire on the scheduler thread. Network I/O never happens under the lock:
``emit`` only queues the event for the deliverer.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _telnyx_wire as wire
from ._scheduler import Scheduler
from ._telnyx_calls import SIP_CAUSES, Callee, FakeCall, SpeakJob
from ._telnyx_media import Streams
from ._telnyx_params import DialParams, TransferParams
from ._telnyx_webhooks import Deliverer, Event

Happening = Callable[[], None]
DTMF_DIGITS = frozenset("0123456789*#ABCD")


@dataclass
class Timing:
    """Pacing of the simulated world, in seconds unless named otherwise.
    Mutable: a test may change it while the fake runs."""

    ms_per_char: float = 5.0           # TTS and remote speech, per character
    answer_after: float = 0.05         # ringing before the default callee acts
    timeout_scale: float = 1.0         # multiplies timeout_secs / time_limit_secs
    inbound_ring_timeout: float = 30.0  # unanswered inbound call is cancelled after this
    webhook_latency: float = 0.0       # happening -> its webhook
    amd_delay: float = 0.05            # answer -> machine detection result
    dtmf_gap: float = 0.01             # between digits of one callee_presses
    playback_secs: float = 0.05        # playback_start -> call.playback.ended
    rest_latency: float = 0.0          # every REST request waits this long before it is handled
    greeting_secs: float | None = None  # a machine's greeting, from the answer to its beep (None: amd_delay
                                        # after the verdict)
    recording_delay: float = 0.05      # end of a recording -> call.recording.saved


class Simulation:
    def __init__(self, lock: threading.RLock, ids: wire.Ids, scheduler: Scheduler, deliverer: Deliverer,
                 timing: Timing, connection_id: str) -> None:
        self.lock = lock
        self.timing = timing
        self.calls: dict[str, FakeCall] = {}
        self.last_call: FakeCall | None = None
        self._ids = ids
        self._scheduler = scheduler
        self._deliverer = deliverer
        self._connection_id = connection_id
        #: Media streaming (``_telnyx_media.Streams``), once the fake sets it.
        self.media: Streams | None = None

    # -- creating calls ------------------------------------------------------------

    def new_call(self, direction: str, from_: str, to: str, webhook_url: str, client_state: str | None,
                 *, status: str) -> FakeCall:
        call = FakeCall(self._ids.call_control_id(), self._ids.uuid(), self._ids.uuid(), self._connection_id,
                        direction, from_, to, webhook_url, client_state, status, wire.iso_now())
        self.calls[call.call_control_id] = call
        self.last_call = call
        return call

    def start_outbound(self, call: FakeCall, dial: DialParams, callee: Callee) -> None:
        call.callee, call.amd, call.timeout_secs = callee, dial.amd, dial.timeout_secs
        call.time_limit_secs, call.transcribe_on_answer = dial.time_limit_secs, dial.transcription_tracks
        self.emit(call, "call.initiated")
        after = self.timing.answer_after if callee.after is None else callee.after
        self.later(after, lambda: self._callee_acts(call, callee.behaviour))
        self.later(dial.timeout_secs * self.timing.timeout_scale,
                   lambda: self._end_if(call, "ringing", "timeout", call.local_source()))

    def start_inbound(self, from_: str, to: str, webhook_url: str, ring_timeout: float | None) -> FakeCall:
        call = self.new_call("incoming", from_, to, webhook_url, None, status="parked")
        self.emit(call, "call.initiated")
        wait = self.timing.inbound_ring_timeout if ring_timeout is None else ring_timeout
        # The caller gives up waiting: Telnyx reports the originator's cancel.
        self.later(wait, lambda: self._end_if(call, "parked", "originator_cancel", call.remote_source()))
        return call

    # -- call progress -------------------------------------------------------------

    def connect(self, call: FakeCall) -> None:
        call.status, call.answered_at = "answered", time.monotonic()
        call.transcription_tracks = call.transcribe_on_answer
        self.emit(call, "call.answered", codec="PCMU", sampling_rate=8000)
        self.open_streams(call)
        if call.time_limit_secs is not None:
            self.later(call.time_limit_secs * self.timing.timeout_scale,
                       lambda: self._end_if(call, "answered", "time_limit", "unknown"))

    def end(self, call: FakeCall, cause: str, source: str) -> None:
        for job in call.speak_jobs:
            # Speech cut off by the hangup reports call_hangup; queued speech
            # that never started is dropped silently.
            if job.started and not job.ended:
                self.emit(call, "call.speak.ended", status="call_hangup")
            job.ended = True
        if self.media is not None:
            self.media.ended(call)  # streaming.stopped, before the hang-up
        call.status, call.ended_at, call.end_time = "ended", time.monotonic(), wire.iso_now()
        call.hangup_cause, call.hangup_source = cause, source
        self.emit(call, "call.hangup", hangup_cause=cause, hangup_source=source,
                  sip_hangup_cause=SIP_CAUSES[cause], end_time=call.end_time)
        self.stop_recording(call)
        other = call.bridged_with
        if other is not None and other.alive:  # a bridge ends with either side
            self.end(other, "normal_clearing", other.remote_source())

    def request_stream(self, call: FakeCall, params: dict[str, Any]) -> None:
        if self.media is not None:
            self.media.request(call, params)

    def open_streams(self, call: FakeCall) -> None:
        if self.media is not None and call.status == "answered":
            self.media.answered(call)

    def _callee_acts(self, call: FakeCall, behaviour: str) -> None:
        if call.status != "ringing":
            return  # cancelled or timed out first
        if behaviour in ("answer", "machine"):
            self.connect(call)
            self.later(self.timing.amd_delay, lambda: self._detect_machine(call, behaviour == "machine"))
        elif behaviour != "no_answer":
            cause = {"busy": "user_busy", "reject": "call_rejected", "not_found": "not_found"}[behaviour]
            self.end(call, cause, call.remote_source())

    def _detect_machine(self, call: FakeCall, machine: bool) -> None:
        if call.amd in (None, "disabled") or not call.alive:
            return
        if call.amd == "premium":
            self.emit(call, "call.machine.premium.detection.ended",
                      result="machine" if machine else "human_residence")
        else:
            self.emit(call, "call.machine.detection.ended", result="machine" if machine else "human")
        if machine and call.amd in ("detect_beep", "greeting_end", "premium"):
            greeting = ("call.machine.premium.greeting.ended" if call.amd == "premium"
                        else "call.machine.greeting.ended")
            after = self.timing.amd_delay
            if self.timing.greeting_secs is not None and call.answered_at is not None:
                after = max(0.0, call.answered_at + self.timing.greeting_secs - time.monotonic())
            self.later(after, lambda: self._beep(call, greeting))

    def _beep(self, call: FakeCall, event_type: str) -> None:
        if call.alive:
            call.beeped_at = time.monotonic()
            self.emit(call, event_type, result="beep_detected")

    def _end_if(self, call: FakeCall, status: str, cause: str, source: str) -> None:
        if call.status == status:
            self.end(call, cause, source)

    # -- speech out: TTS and playback --------------------------------------------

    def speech_secs(self, text: str) -> float:
        return len(text) * self.timing.ms_per_char / 1000

    def queue_speech(self, call: FakeCall, job: SpeakJob) -> None:
        # Telnyx queues speak commands: each starts when the previous ends.
        start = max(time.monotonic(), call.speech_busy_until)
        call.speech_busy_until = start + self.speech_secs(job.text)
        call.speak_jobs.append(job)
        self.at(start, lambda: self._speak_started(call, job))
        self.at(call.speech_busy_until, lambda: self._speak_ended(call, job))

    def play(self, call: FakeCall, extra: dict[str, Any]) -> None:
        self.emit(call, "call.playback.started", **extra)
        self.later(self.timing.playback_secs,
                   lambda: self.emit_if_alive(call, "call.playback.ended", status="completed", **extra))

    def _speak_started(self, call: FakeCall, job: SpeakJob) -> None:
        if not job.ended and call.alive:
            job.started, job.started_at = True, time.monotonic()
            self.emit(call, "call.speak.started")

    def _speak_ended(self, call: FakeCall, job: SpeakJob) -> None:
        if job.ended or not call.alive:
            return
        job.ended = True
        self.emit(call, "call.speak.ended", status="completed")
        if call.transcription_tracks in ("outbound", "both"):
            # Transcribing the outbound track hears the daemon's own speech;
            # a receiver must not mistake it for the remote party.
            self.emit(call, "call.transcription", transcription_data={
                "transcript": job.text, "is_final": True, "confidence": 0.99,
                "transcription_track": "outbound"})

    # -- the remote party ----------------------------------------------------------

    def remote_says(self, call: FakeCall, words: list[str], confidence: float) -> bool:
        text = " ".join(words)
        if not self._hears_remote(call):
            call.dropped_speech.append(text)
            return False
        start = max(time.monotonic(), call.listen_busy_until)
        # Interims are strict prefixes where possible, so a receiver that
        # treats an interim as final records a visibly truncated sentence.
        for count in sorted({max(1, len(words) // 2), max(1, len(words) - 1)}):
            partial = " ".join(words[:count])
            self.at(start + self.speech_secs(partial), functools.partial(self._transcript, call, partial, None))
        call.listen_busy_until = start + self.speech_secs(text)
        self.at(call.listen_busy_until, lambda: self._transcript(call, text, confidence))
        return True

    def remote_presses(self, call: FakeCall, digits: str) -> bool:
        if call.status != "answered":
            return False
        for index, digit in enumerate(digits):
            self.later(index * self.timing.dtmf_gap, functools.partial(self._dtmf, call, digit))
        return True

    def remote_hangs_up(self, call: FakeCall) -> bool:
        # While ringing, hanging up is declining; while parked, giving up.
        cause = {"answered": "normal_clearing", "ringing": "call_rejected",
                 "parked": "originator_cancel"}.get(call.status)
        if cause is None:
            return False
        self.end(call, cause, call.remote_source())
        return True

    def _hears_remote(self, call: FakeCall) -> bool:
        return call.status == "answered" and call.transcription_tracks in ("inbound", "both")

    def _transcript(self, call: FakeCall, text: str, confidence: float | None) -> None:
        final = confidence is not None
        if not self._hears_remote(call):
            if final:  # transcription stopped, or the call ended, mid-sentence
                call.dropped_speech.append(text)
            return
        data: dict[str, Any] = {"transcript": text, "is_final": final, "transcription_track": "inbound"}
        if final:
            data["confidence"] = confidence
            call.heard.append(text)
        self.emit(call, "call.transcription", transcription_data=data)

    def _dtmf(self, call: FakeCall, digit: str) -> None:
        if call.status == "answered":
            call.dtmf.append(digit)
            self.emit(call, "call.dtmf.received", digit=digit)

    # -- call control: transfer, recording --------------------------------------------

    def transfer(self, call: FakeCall, params: TransferParams, callee: Callee) -> FakeCall:
        """Dial leg B for ``call``; B reports itself with its own webhooks
        (``target_leg_client_state``): initiated, then answered and bridged
        (with ``call``), or hung up with the reason (``call`` stays up)."""
        last = self.last_call
        leg = self.new_call("outgoing", params.from_ or call.to, params.to, params.webhook_url or call.webhook_url,
                            params.target_leg_client_state, status="ringing")
        self.last_call = last  # tests mean the calls they made, not the legs of transfers
        leg.callee, leg.timeout_secs, leg.transfer_of = callee, params.timeout_secs, call
        call.transfers.append(leg)
        self.emit(leg, "call.initiated")
        after = self.timing.answer_after if callee.after is None else callee.after
        self.later(after, lambda: self._target_acts(call, leg, callee.behaviour))
        self.later(params.timeout_secs * self.timing.timeout_scale,
                   lambda: self._end_if(leg, "ringing", "timeout", leg.local_source()))
        return leg

    def _target_acts(self, call: FakeCall, leg: FakeCall, behaviour: str) -> None:
        if leg.status != "ringing":
            return
        if not call.alive:
            self.end(leg, "originator_cancel", leg.local_source())
        elif behaviour in ("answer", "machine"):
            leg.status, leg.answered_at = "answered", time.monotonic()
            self.emit(leg, "call.answered")
            call.bridged_with, leg.bridged_with = leg, call
            self.emit(call, "call.bridged")
            self.emit(leg, "call.bridged")
        elif behaviour != "no_answer":
            cause = {"busy": "user_busy", "reject": "call_rejected", "not_found": "not_found"}[behaviour]
            self.end(leg, cause, leg.remote_source())

    def start_recording(self, call: FakeCall, options: dict[str, Any]) -> None:
        call.recording = {**options, "started_at": wire.iso_now()}

    def stop_recording(self, call: FakeCall) -> None:
        """The recording ends (record_stop, or the call ended); it is reported
        once "processed", after the call's own webhooks."""
        recording, call.recording = call.recording, None
        if recording is None:
            return
        fmt = recording["format"]
        url = f"https://s3.amazonaws.com/telnyx-recordings/{call.call_leg_id}-{int(time.time())}.{fmt}"
        payload = {"channels": recording["channels"], "recording_started_at": recording["started_at"],
                   "recording_ended_at": wire.iso_now(), "recording_urls": {fmt: url}, "public_recording_urls": {}}
        call.recordings.append(payload)
        self.later(self.timing.recording_delay, lambda: self.emit(call, "call.recording.saved", **payload))

    # -- plumbing --------------------------------------------------------------------

    def later(self, delay: float, happening: Happening) -> None:
        self.at(time.monotonic() + max(0.0, delay), happening)

    def at(self, due: float, happening: Happening) -> None:
        def locked() -> None:
            with self.lock:
                happening()
        self._scheduler.call_at(due, locked)

    def emit_if_alive(self, call: FakeCall, event_type: str, **extra: Any) -> None:
        if call.alive:
            self.emit(call, event_type, **extra)

    def emit(self, call: FakeCall, event_type: str, **extra: Any) -> None:
        """Capture the event now (the call's current client_state included)
        and queue it for delivery."""
        event = self.event(call, event_type, **extra)
        self._scheduler.call_later(self.timing.webhook_latency, lambda: self._deliverer.dispatch(event))

    def event(self, call: FakeCall, event_type: str, **extra: Any) -> Event:
        return Event(event_type, self._ids.uuid(), wire.iso_now(), call.call_control_id, call.webhook_url,
                     {**call.base_payload(), **extra})
