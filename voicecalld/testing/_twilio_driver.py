"""Drives one call on its own thread, the way Twilio's call engine does.

Dial (outbound) -> status callbacks -> fetch TwiML -> interpret verbs until
the document runs out, the call is hung up, or a REST update replaces the
running TwiML. Every request sent to the daemon is signed over the exact
URL requested; see ``_webhooks.py``.

Blocking points (ringing, a Say, a Pause, a Gather, an open stream) all go
through ``FakeCall.wait``, so a hang-up or an update takes effect the moment
it arrives rather than at the next verb boundary.
"""

from __future__ import annotations

import time
import traceback
import uuid
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urljoin

from . import _twilio_twiml as tw
from ._twilio_amd import FakeTwilio as DetectingFake
from ._twilio_amd import amd_result, start_async_amd
from ._twilio_model import (
    Callee,
    CallOver,
    Delivery,
    DialRecord,
    FakeCall,
    FakeError,
    Fetch,
    GatherRecord,
    Inline,
    Interrupted,
    RecordingRequest,
    SayRecord,
    Source,
    StreamRequest,
)
from ._twilio_rest import Recorder, is_http_url
from ._twilio_signing import Params
from ._twilio_webhooks import WebhookSender, child_params, recording_params, standard_params, status_params

_XML_TYPES = ("text/xml", "application/xml", "text/html")
_SIP_CODES = {"completed": "200", "busy": "486", "no-answer": "487", "canceled": "487", "failed": "500"}


class AppError(Exception):
    """What Twilio calls an application error: log the code, end the call."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class FakeTwilio(DetectingFake, Recorder, Protocol):
    """What a call's run (and detection, which it hands the fake to) uses of ``fake_twilio.FakeTwilio``."""

    time_scale: float
    ms_per_char: float
    answer_delay: float
    dial_delay: float

    @property
    def _webhooks(self) -> WebhookSender: ...
    def sign(self, url: str, params: Params | None = None) -> str: ...
    def _dial_target(self, number: str) -> Callee: ...
    def _take_callback_fault(self, kind: str, call_sid: str, call_status: str) -> bool: ...
    def _record_stream(self, stream: StreamRequest) -> None: ...
    def _run_stream_hook(self, call: FakeCall, request: StreamRequest) -> bool: ...


class CallRunner:
    def __init__(self, fake: FakeTwilio, call: FakeCall) -> None:
        self.fake = fake
        self.call = call
        self._sequence = 0
        self._held: list[tuple[list[tuple[str, str]], str]] = []

    # -- top level --

    def run(self) -> None:
        try:
            if self.call.direction == "inbound":
                self._converse(self.call.source)
            else:
                self._dial()
                self._converse(self.call.source)
        except CallOver:
            pass
        except Exception as exc:  # noqa: BLE001 - a bug in the fake itself: stop() re-raises it
            self.fake._internal_error(self.call, exc, traceback.format_exc())
            self.call.hang_up("fake-internal-error")
        finally:
            self._finish()

    def _finish(self) -> None:
        call = self.call
        call.hang_up("twiml-ended")  # no-op if already ended
        for stream in call.streams:
            if stream.ended_at is None:
                stream.ended_at = time.time()
            stream.ended.set()
        if not call._silent:
            self._status_event("completed")
            self._flush_held()
            self._recordings_done()

    # -- dialing an outbound call --

    def _dial(self) -> None:
        call, fake = self.call, self.fake
        callee = call.callee
        call.wait(fake.dial_delay)
        self._status_event("initiated")
        if callee.outcome in ("failed", "busy"):
            # Neither rings: the carrier refuses or the line signals busy at once.
            call.wait(fake.dial_delay)
            call.end(callee.outcome, f"callee-{callee.outcome}")
            raise CallOver()
        call.set_status("ringing")
        self._status_event("ringing")
        ring_limit = call.timeout * fake.time_scale
        answer_after = fake.answer_delay if callee.answer_after is None else callee.answer_after
        if callee.outcome == "no-answer" or answer_after >= ring_limit:
            call.wait(ring_limit)
            call.end("no-answer", "ring-timeout")
            raise CallOver()
        call.wait(answer_after)
        self._answer()

    def _answer(self) -> None:
        call, callee = self.call, self.call.callee
        if call.machine_detection and call.amd_callback is None:
            # Synchronous detection: the TwiML fetch waits for the verdict,
            # which DetectMessageEnd gives a machine only once it beeped.
            if callee.machine and call.machine_detection == "DetectMessageEnd":
                call.greeting_started = time.time()
                call.wait(callee.greeting)
                call.beeped = time.time()
            call.answered_by = amd_result(call)
        call.set_status("in-progress")
        if callee.hangup_after is not None:
            call.schedule_hangup(callee.hangup_after)
        self._status_event("answered")
        if call.recording is not None:
            self.fake._start_recording(call, call.recording)  # Record=true records from the answer on
        if call.amd_callback is not None:
            start_async_amd(self.fake, call)

    # -- status callbacks --

    def _status_event(self, event: str) -> None:
        call = self.call
        if not call.status_callback or event not in call.status_events or call._silent:
            return
        call_status = {"answered": "in-progress"}.get(event, call.status if event == "completed" else event)
        extra: list[tuple[str, str]] = []
        if event == "completed":
            seconds = call.duration or 0
            extra += [("CallDuration", str(seconds)), ("Duration", str(-(-seconds // 60))),
                      ("SipResponseCode", _SIP_CODES.get(call.status, "200"))]
        params = status_params(call, call_status, self._sequence, extra)
        self._sequence += 1
        token = str(uuid.uuid4())
        if self.fake._take_callback_fault("delay", call.sid, call_status):
            self._held.append((params, token))  # sent after the next one: out of order
            return
        self._send_status(params, token, call_status)
        self._flush_held()

    def _send_status(self, params: list[tuple[str, str]], token: str, call_status: str) -> None:
        call = self.call
        url = call.status_callback or ""
        self.fake._webhooks.deliver(call, "status", url, call.status_callback_method, params, token)
        if self.fake._take_callback_fault("duplicate", call.sid, call_status):
            self.fake._webhooks.deliver(call, "status", url, call.status_callback_method, params, token,
                                        replay=True)

    def _flush_held(self) -> None:
        held, self._held = self._held, []
        for params, token in held:
            self._send_status(params, token, dict(params)["CallStatus"])

    # -- running TwiML --

    def _converse(self, source: Source | None) -> None:
        call = self.call
        if source is None:
            # ApplicationSid calls would fetch the app's VoiceUrl; the fake has none.
            self._app_error(11200, "No TwiML source for this call")
        while source is not None:
            try:
                verbs, doc_url = self._load(source)
                source = self._execute(verbs, doc_url)
            except Interrupted as update:
                source = update.source
            except AppError as err:
                self._app_error(err.code, str(err))
        self._ensure_answered()
        call.end("completed", "twiml-ended")
        raise CallOver()

    def _app_error(self, code: int, message: str) -> None:
        # Twilio says "an application error has occurred" and hangs up.
        self.call.errors.append(FakeError(code, message))
        self.call.hang_up("application-error")
        raise CallOver()

    def _load(self, source: Source) -> tuple[list[tw.Verb], str | None]:
        call = self.call
        if isinstance(source, Inline):
            text, doc_url = source.twiml, None
        else:
            text, doc_url = self._fetch(source), source.url
        call.twiml.append(text)
        try:
            return tw.parse(text), doc_url
        except tw.TwimlError as exc:
            raise AppError(exc.code, str(exc)) from None

    def _fetch(self, source: Fetch) -> str:
        call = self.call
        call.check()  # a call that has ended (or been redirected) fetches nothing more
        params = standard_params(call) + list(source.extra)
        delivery = self.fake._webhooks.deliver(call, source.kind, source.url, source.method, params)
        call.check()  # a hang-up or update may have arrived while we waited
        return _twiml_body(delivery)

    def _execute(self, verbs: list[tw.Verb], doc_url: str | None) -> Source | None:
        for verb in verbs:
            self.call.check()
            if isinstance(verb, tw.Reject):
                self._reject(verb)
            self._ensure_answered()
            following = self._run_verb(verb, doc_url)
            if following is not None:
                return following
        return None

    def _ensure_answered(self) -> None:
        # An inbound call is answered by the first verb that is not <Reject>.
        if self.call.start_time is None and self.call.direction == "inbound":
            self.call.set_status("in-progress")

    def _reject(self, verb: tw.Reject) -> None:
        call = self.call
        if call.start_time is None:
            call.end("busy" if verb.reason == "busy" else "no-answer", "rejected")
        else:
            call.end("completed", "twiml-reject")
        raise CallOver()

    def _run_verb(self, verb: tw.Verb, doc_url: str | None) -> Source | None:
        call = self.call
        if isinstance(verb, tw.Say):
            self._say(verb)
        elif isinstance(verb, tw.Pause):
            call.wait(verb.length * self.fake.time_scale)
        elif isinstance(verb, tw.Play):
            self._play(verb)
        elif isinstance(verb, tw.Hangup):
            call.end("completed", "twiml-hangup")
            raise CallOver()
        elif isinstance(verb, tw.Redirect):
            return Fetch(self._resolve(verb.url, doc_url), verb.method, "redirect")
        elif isinstance(verb, tw.Gather):
            return self._gather(verb, doc_url)
        elif isinstance(verb, tw.Connect):
            return self._connect(verb, doc_url)
        elif isinstance(verb, tw.Dial):
            return self._dial_verb(verb, doc_url)
        elif isinstance(verb, tw.Start) and verb.stream is not None:
            self._open_stream(verb.stream, bidirectional=False)
        elif isinstance(verb, tw.Start) and verb.recording is not None:
            self._start_recording(verb.recording, doc_url)
        elif isinstance(verb, tw.Stop):
            self._stop_stream(verb.name)
        return None

    def _resolve(self, url: str, doc_url: str | None) -> str:
        full = urljoin(doc_url, url) if doc_url else url
        if not is_http_url(full):
            raise AppError(11200, f"Cannot resolve URL {url!r} (document URL {doc_url!r})")
        return full

    # -- Say --

    def _say(self, verb: tw.Say, *, in_gather: bool = False, barge_in: bool = False) -> bool:
        """Play a Say; True if the callee barged in (only inside a Gather)."""
        record = SayRecord(verb.text, verb.voice, verb.language, time.time(), in_gather=in_gather)
        self.call.says.append(record)
        per_loop = len(verb.text) * self.fake.ms_per_char / 1000
        seconds = None if verb.loop == 0 else per_loop * verb.loop
        until = self.call.has_input if barge_in else None
        try:
            cut = self.call.wait(seconds, until)
        except (CallOver, Interrupted):
            record.interrupted = True
            raise
        finally:
            record.ended = time.time()
        record.interrupted = cut
        return cut

    # -- Gather --

    def _gather(self, verb: tw.Gather, doc_url: str | None) -> Source | None:
        call = self.call
        record = GatherRecord(verb, time.time())
        call.gathers.append(record)
        try:
            heard = self._listen(verb)
        except CallOver:
            record.outcome, record.ended = "hangup", time.time()
            raise
        except Interrupted:
            record.outcome, record.ended = "interrupted", time.time()
            raise
        record.ended = time.time()
        extra: list[tuple[str, str]] = []
        if heard is None:
            record.outcome = "timeout"
            if not verb.action_on_empty_result:
                return None  # Twilio moves on to the next verb
        elif heard[0] == "speech":
            record.outcome, record.speech, record.confidence = "speech", heard[1], heard[2]
            extra = [("SpeechResult", heard[1]), ("Confidence", f"{heard[2]:g}")]
        else:
            record.outcome, record.digits = "dtmf", heard[1]
            extra = [("Digits", heard[1])]
        action = verb.action or doc_url
        if action is None:
            # Inline TwiML has no document URL to fall back on.
            call.errors.append(FakeError(11200, "<Gather> without action in inline TwiML: result dropped"))
            return None
        return Fetch(self._resolve(action, doc_url), verb.method, "gather", tuple(extra))

    def _listen(self, verb: tw.Gather) -> tuple[str, str, float] | None:
        """Prompts (with barge-in), then wait up to ``timeout`` for input."""
        call = self.call
        try:
            if verb.barge_in:
                call.listen(verb.input)
            for prompt in verb.prompts:
                if self._prompt(prompt, verb.barge_in):
                    return call.stop_listening()
            if not verb.barge_in:
                call.listen(verb.input)
            call.wait(verb.timeout * self.fake.time_scale, call.has_input)
            return call.stop_listening()
        finally:
            call.stop_listening()

    def _prompt(self, prompt: tw.Say | tw.Pause | tw.Play, barge_in: bool) -> bool:
        if isinstance(prompt, tw.Say):
            return self._say(prompt, in_gather=True, barge_in=barge_in)
        if isinstance(prompt, tw.Play):
            return self._play(prompt, self.call.has_input if barge_in else None)
        return self.call.wait(prompt.length * self.fake.time_scale,
                              self.call.has_input if barge_in else None)

    # -- Play (audio, or DTMF digits) --

    def _play(self, verb: tw.Play, until: Callable[[], bool] | None = None) -> bool:
        """Play a URL (instantly: the fake fetches no audio) or ``digits``,
        which take their time: 100 ms a tone and 100 ms between, w 0.5 s,
        W 1 s, scaled like every other duration."""
        call = self.call
        if verb.url:
            call.played.append(verb.url)
        if not verb.digits:
            return call.wait(0, until)
        seconds = sum({"w": 0.5, "W": 1.0}.get(c, 0.2) for c in verb.digits) * self.fake.time_scale
        cut = call.wait(seconds, until)
        if not cut:
            call.digits_played.append(verb.digits)
        return cut

    # -- Dial (a transfer) --

    def _dial_verb(self, verb: tw.Dial, doc_url: str | None) -> Source | None:
        """Dial the number: the target (``FakeTwilio.set_callee``) answers,
        is busy, fails or rings out; an answered dial lasts until the target
        hangs up (its ``hangup_after``, or ``FakeTwilio.end_dial``). Then the
        action gets ``DialCallStatus``."""
        call, fake = self.call, self.fake
        target = fake._dial_target(verb.number.number)
        record = DialRecord(verb.number.number, "CA" + uuid.uuid4().hex, time.time())
        call.dials.append(record)
        call.start_dial()
        ring_limit = verb.timeout * fake.time_scale
        answer_after = fake.answer_delay if target.answer_after is None else target.answer_after
        if target.outcome in ("busy", "failed"):
            call.wait(fake.dial_delay)
            record.status = target.outcome
        elif target.outcome == "no-answer" or answer_after >= ring_limit:
            call.wait(ring_limit)
            record.status = "no-answer"
        else:
            call.wait(answer_after)
            record.status, record.answered_at = "in-progress", time.time()
            self._number_event(verb.number, record, "answered", doc_url)
            call.wait(target.hangup_after, call.dial_over)
            record.status = "completed"
            self._number_event(verb.number, record, "completed", doc_url)
        record.ended = time.time()
        record.dial_call_status = record.status
        if verb.action is None:
            return None
        extra = [("DialCallStatus", record.status), ("DialCallSid", record.child_sid)]
        if record.answered_at is not None:
            extra.append(("DialCallDuration", str(round(record.ended - record.answered_at))))
        return Fetch(self._resolve(verb.action, doc_url), verb.method, "dial-action", tuple(extra))

    def _number_event(self, number: tw.Number, record: DialRecord, event: str, doc_url: str | None) -> None:
        if number.status_callback is None or event not in number.status_events:
            return
        status = {"answered": "in-progress"}.get(event, record.status)
        params = child_params(self.call, record.child_sid, record.number, status)
        self.fake._webhooks.deliver(self.call, "number-status", self._resolve(number.status_callback, doc_url),
                                    number.status_callback_method, params)

    # -- recordings --

    def _start_recording(self, verb: tw.Recording, doc_url: str | None) -> None:
        callback = None if verb.status_callback is None else self._resolve(verb.status_callback, doc_url)
        request = RecordingRequest(verb.channels, callback, verb.status_callback_method, verb.status_events,
                                   "StartCallRecordingTwiML")
        self.fake._start_recording(self.call, request)

    def _recordings_done(self) -> None:
        """The call is over: its recordings are processed and reported."""
        call = self.call
        for recording in call.recordings:
            if recording.status != "in-progress":
                continue
            end = call.end_time or time.time()
            recording.duration, recording.status = max(0, round(end - recording.started)), "completed"
            request = call.recording
            if request is None or request.callback is None or "completed" not in request.events:
                continue
            self.fake._webhooks.deliver(call, "recording", request.callback, request.callback_method,
                                        recording_params(call, recording))

    # -- Streams --

    def _connect(self, verb: tw.Connect, doc_url: str | None) -> Source | None:
        stream = self._open_stream(verb.stream, bidirectional=True)
        if stream is not None:
            try:
                # <Connect> blocks until the stream ends (test or simulator
                # calls end_stream, as the daemon closing its WebSocket would).
                self.call.wait(None, self.call.stream_closed)
            finally:
                stream.ended_at = time.time()
                stream.ended.set()
        if verb.action:
            return Fetch(self._resolve(verb.action, doc_url), verb.method, "connect-action")
        return None

    def _open_stream(self, verb: tw.Stream, *, bidirectional: bool) -> StreamRequest | None:
        call, fake = self.call, self.fake
        problem = tw.stream_url_problem(verb.url)
        if problem is not None:
            call.errors.append(FakeError(*problem))
            return None
        request = StreamRequest(
            call_sid=call.sid, account_sid=call.account_sid, stream_sid="MZ" + uuid.uuid4().hex,
            url=verb.url, name=verb.name, parameters=dict(verb.parameters),
            headers={"X-Twilio-Signature": fake.sign(verb.url)}, bidirectional=bidirectional)
        call.streams.append(request)
        fake._record_stream(request)
        if bidirectional:
            call.open_stream()
        if not fake._run_stream_hook(call, request):
            call.close_stream()
            request.ended_at = time.time()
            request.ended.set()
            return None
        return request

    def _stop_stream(self, name: str | None) -> None:
        for stream in self.call.streams:
            if not stream.bidirectional and stream.ended_at is None and stream.name == name:
                stream.ended_at = time.time()
                stream.ended.set()


def _twiml_body(delivery: Delivery) -> str:
    if delivery.status is None:
        raise AppError(11200, f"HTTP retrieval failure: {delivery.error} ({delivery.url})")
    if not 200 <= delivery.status < 300:
        raise AppError(11200, f"HTTP retrieval failure: status {delivery.status} from {delivery.url}")
    mime = delivery.content_type.split(";")[0].strip().lower()
    if mime not in _XML_TYPES:
        raise AppError(12300, f"Invalid Content-Type {delivery.content_type!r} from {delivery.url}")
    return delivery.body
