"""Answering Twilio's webhooks: authenticate, deduplicate, dispatch, and
answer each with the call's next TwiML.

Webhooks are authenticated by ``X-Twilio-Signature`` over the URL Twilio
requested (the webhook URL + the request's query; ``X-Forwarded-*`` only when
``twilio.trustForwardedHeaders`` is on): see
https://www.twilio.com/docs/usage/security. A replayed
request (same ``I-Twilio-Idempotency-Token``, or same signature) is answered
from a bounded cache, never processed twice.

Which request is which (``twilio.py`` builds the URLs): ``type`` in the
query names it (``status`` callbacks; ``gather``, ``played`` and
``connect`` actions of a turn; ``twiml`` fetches of a stored document;
``amd``, the answering-machine verdict of ``twilio_amd``; a transfer's
``dial`` action and ``transfer`` callback, and ``recording`` status
callbacks: see ``twilio_control``), and ``callId`` names our call. The bare
webhook URL with neither is a call to one of our numbers. The parameters are Twilio's
(https://www.twilio.com/docs/voice/twiml and, for status callbacks,
https://www.twilio.com/docs/voice/api/call-resource).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from werkzeug.wrappers import Request, Response

from .. import metrics
from ..calls import CallEvent, EventType, State
from ..errors import ProviderError
from ..ratelog import RateLimitedLog
from . import twilio_amd, twiml
from .base import CallSink
from .replay import ReplayGuard
from .twilio_control import ANSWERED_STATUS, dial_outcome, recording_report
from .twilio_rest import CallsApi
from .twilio_script import CallScript, Style, Urls
from .twilio_signature import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, validate
from .twilio_wire import (
    LIVE_STATUSES,
    Answer,
    classify_status,
    confidence,
    first,
    form_params,
    signed_urls,
    text_answer,
    to_int,
    xml_answer,
)

log = logging.getLogger(__name__)

REPLAY_WINDOW = 600.0        # seconds a delivery is remembered
REPLAY_SIZE = 4096           # deliveries remembered at most
DUPLICATE_WAIT = 10.0        # a duplicate waits this long for the first delivery's answer


class Calls(Protocol):
    """What answering a webhook needs of the Twilio provider."""

    public_url: str | None

    @property
    def sink(self) -> CallSink: ...
    @property
    def webhook_url(self) -> str: ...
    def adopt(self, call_id: str, sid: str | None) -> CallScript | None:
        """The live call's script (made for calls this run did not start)."""
    def incoming(self, call_id: str, sid: str) -> CallScript:
        """The script of an inbound call just accepted."""
    def urls(self, call_id: str) -> Urls: ...
    def style(self) -> Style: ...


class Webhooks:
    def __init__(self, calls: Calls, api: CallsApi) -> None:
        self._calls = calls
        self._api = api
        self._replays: ReplayGuard[Answer] = ReplayGuard(REPLAY_SIZE, REPLAY_WINDOW)
        self._rejections = RateLimitedLog(log)

    @property
    def _cfg(self) -> Any:
        return self._calls.sink.config

    def handle(self, request: Request) -> Response:
        cfg = self._cfg
        signature = request.headers.get(SIGNATURE_HEADER)
        if not cfg.skipSignatureVerification and not signature:
            return self._refuse(request, "no X-Twilio-Signature header").response()
        params, body = form_params(request)
        if params is None:
            metrics.webhook("error")
            return text_answer(415, "expected a form-encoded (or JSON) Twilio webhook").response()
        if not cfg.skipSignatureVerification:
            problem = self._verify(request, signature or "", params, body)
            if problem:
                return self._refuse(request, problem).response()
        token = request.headers.get(IDEMPOTENCY_HEADER)
        keys = [f"token:{token}" if token else "", f"signature:{signature}" if signature else ""]
        entry, first = self._replays.begin(keys)
        if not first:
            metrics.webhook("replay")
            answer = self._replays.wait(entry, DUPLICATE_WAIT)
            log.info("call %s: repeated Twilio webhook answered from cache, not processed again",
                     request.args.get("callId", "?"))
            if answer is None:
                return text_answer(409, "a copy of this request is still being processed").response()
            return answer.response()
        try:
            answer = self._dispatch(request.args.get("type") or "", request.args.get("callId"),
                                    request.args.get("turn"), params)
        except BaseException:
            self._replays.abandon(entry)
            raise
        self._replays.finish(entry, answer)
        metrics.webhook("accepted" if answer.status < 400 else "error")
        return answer.response()

    def _refuse(self, request: Request, problem: str) -> Answer:
        metrics.webhook("rejected")
        self._rejections.warning(problem, "rejected a webhook from %s: %s", request.remote_addr, problem)
        return text_answer(401, "webhook signature verification failed")

    def _verify(self, request: Request, signature: str, params: list[tuple[str, str]],
                body: bytes | None) -> str | None:
        auth_token = self._cfg.twilio.authToken or ""
        urls = signed_urls(request, self._calls.webhook_url if self._calls.public_url else None,
                           bool(self._cfg.twilio.trustForwardedHeaders))
        if not urls:
            return "no publicUrl to check the signature against"
        for url in urls:
            if validate(auth_token, url, signature, None if body is not None else params, body=body):
                return None
        log.debug("signature checked against %s", urls)
        return "X-Twilio-Signature does not match (check publicUrl and twilio.authToken)"

    def _dispatch(self, kind: str, call_id: str | None, turn: str | None,
                  params: list[tuple[str, str]]) -> Answer:
        sid = first(params, "CallSid")
        if kind == "status" or (not kind and first(params, "CallbackSource") == "call-progress-events"):
            return self._on_status(call_id, sid, params)
        if call_id is None:
            if kind:
                return text_answer(400, "a Twilio webhook with a type needs a callId")
            return self._on_incoming(sid, params)
        if kind == "recording":  # usually after the call has ended
            return self._on_recording(call_id, sid, params)
        if kind == "transfer":  # the target's own call: its CallSid is not ours
            return self._on_transfer_answered(call_id, turn, params)
        script = self._calls.adopt(call_id, sid)
        if script is None:
            # A call we no longer run: whatever Twilio is doing with it, stop.
            log.debug("call %s: webhook (%s) for an unknown or ended call; answering <Hangup/>",
                      call_id, kind or "voice")
            return xml_answer(twiml.hangup_now())
        if sid is not None and script.sid is not None and sid != script.sid:
            return text_answer(400, f"CallSid does not belong to call {call_id}")
        self._learn_sid(script, sid)
        if kind == "":
            return self._on_voice(script, params)
        if kind in ("gather", "played", "connect"):
            return self._on_turn(script, kind, turn, params)
        if kind == "twiml":
            return self._on_stored(script, turn)
        if kind == "amd":
            return self._on_amd(script, params)
        if kind == "dial":
            return self._on_dial(script, turn, params)
        return text_answer(400, f"unknown webhook type {kind!r}")

    def _emit(self, type_: EventType, event_id: str, script: CallScript, **fields: Any) -> None:
        self._calls.sink.handle_event(CallEvent(type_, event_id, call_id=script.call_id,
                                                provider_call_id=script.sid, **fields))

    def _learn_sid(self, script: CallScript, sid: str | None) -> None:
        if sid is None:
            return
        with script.lock:
            known, script.sid = script.sid, sid
        if known is None:
            # Twilio's first callback can beat initiate()'s own return.
            self._calls.sink.attach_provider_id(script.call_id, sid)

    def _next_document(self, script: CallScript) -> str:
        return script.compose(self._calls.urls(script.call_id), self._calls.style()).xml

    def _stale_answer(self, script: CallScript) -> str:
        return script.stale_answer(self._calls.urls(script.call_id), self._calls.style())

    @contextmanager
    def _answering(self, script: CallScript) -> Iterator[list[str]]:
        """While a webhook for ``script``'s call is being answered, whatever
        the call says goes into this answer. Yields a one-item list that
        receives the TwiML."""
        out: list[str] = []
        with script.lock:
            script.answering += 1
        try:
            yield out
        finally:
            with script.lock:
                script.answering -= 1
                if script.forgotten:
                    out.append(twiml.hangup_now())
                elif not out:
                    out.append(self._next_document(script))

    def _on_voice(self, script: CallScript, params: list[tuple[str, str]]) -> Answer:
        """Twilio fetches the call's TwiML: the call is answered (inbound: we
        answer it now)."""
        answered_by = first(params, "AnsweredBy")
        with self._answering(script) as out:
            with script.lock:
                script.fetched = True
            self._detected(script, answered_by)
            event = classify_status("in-progress", answered_by=answered_by or "human",
                                    machine_detection=twilio_amd.mode(self._cfg) == "sync")
            if event is not None and event.type == EventType.ENDED:
                log.info("call %s: %s; hanging up", script.call_id, event.message)
                out.append(twiml.hangup_now())
                self._emit(EventType.ENDED, f"{script.sid}:answered-by", script, reason=event.reason,
                           message=event.message)
            else:
                self._emit(EventType.ANSWERED, f"{script.sid}:answered", script)
        return xml_answer(out[0])

    def _on_turn(self, script: CallScript, kind: str, turn: str | None,
                 params: list[tuple[str, str]]) -> Answer:
        """Twilio moved past a document: its Gather heard something (gather),
        its speech ended (played), or its media stream closed (connect)."""
        with self._answering(script) as out:
            with script.lock:
                played = script.advance(turn)
                if played is None:
                    out.append(self._stale_answer(script))
                elif kind == "connect":
                    script.stream_failed = True
            if played is None:
                log.debug("call %s: %s request for a replaced document; ignored", script.call_id, kind)
                return xml_answer(out[0])
            for utterance in played:
                self._emit(EventType.PLAYED, f"{script.sid}:played:{utterance}", script, utterance_id=utterance)
            if kind == "connect":
                log.warning("call %s: the media stream ended (%s); listening with <Gather> from now on",
                            script.call_id, first(params, "ErrorCode") or "closed")
            speech = (first(params, "SpeechResult") or "").strip()
            if kind == "gather" and speech:
                self._emit(EventType.SPEECH, f"{script.sid}:speech:{turn}", script, transcript=speech,
                           is_final=True, confidence=confidence(first(params, "Confidence")))
            digits = first(params, "Digits") or ""
            if kind == "gather" and digits:
                self._emit(EventType.DTMF, f"{script.sid}:digits:{turn}", script, digits=digits)
        return xml_answer(out[0])

    # -- call control (twilio_control) --

    def _on_transfer_answered(self, call_id: str, turn: str | None, params: list[tuple[str, str]]) -> Answer:
        """The ``<Number>`` of a transfer's ``<Dial>`` answered: the call is theirs."""
        script = self._calls.adopt(call_id, None)
        if script is None:
            return xml_answer(twiml.empty())
        parent = first(params, "ParentCallSid")
        if parent is not None and script.sid is not None and parent != script.sid:
            return text_answer(400, f"ParentCallSid does not belong to call {call_id}")
        with script.lock:
            current = script.is_current(turn)
        if current and first(params, "CallStatus") == ANSWERED_STATUS:
            self._emit(EventType.TRANSFERRED, f"{script.sid}:transferred:{turn}", script)
        return xml_answer(twiml.empty())

    def _on_dial(self, script: CallScript, turn: str | None, params: list[tuple[str, str]]) -> Answer:
        """A transfer's ``<Dial>`` is over; if the target never answered, the
        call goes on with its next document."""
        outcome = dial_outcome(params)
        with self._answering(script) as out:
            with script.lock:
                played = script.advance(turn)
                if played is None:
                    out.append(self._stale_answer(script))
            if played is None:
                return xml_answer(out[0])
            for utterance in played:
                self._emit(EventType.PLAYED, f"{script.sid}:played:{utterance}", script, utterance_id=utterance)
            if outcome.answered:  # the same event as the target's answered callback, which may come first
                self._emit(EventType.TRANSFERRED, f"{script.sid}:transferred:{turn}", script)
            else:
                self._emit(EventType.TRANSFER_FAILED, f"{script.sid}:dial:{turn}", script, message=outcome.why)
        return xml_answer(out[0])

    def _on_recording(self, call_id: str, sid: str | None, params: list[tuple[str, str]]) -> Answer:
        report = recording_report(params)
        if report.recording is None:
            log.info("call %s: Twilio reports recording status %s; nothing to keep", call_id, report.status or "?")
        else:
            self._calls.sink.report_recording(call_id, sid, report.recording)
        return xml_answer(twiml.empty())

    def _on_stored(self, script: CallScript, turn: str | None) -> Answer:
        """Twilio fetches a document too long to send inline."""
        with script.lock:
            doc = script.stored.get(turn or "") if script.is_current(turn) else None
            if doc is None:
                doc = self._stale_answer(script)
        return xml_answer(doc)

    def _on_status(self, call_id: str | None, sid: str | None, params: list[tuple[str, str]]) -> Answer:
        call_status = first(params, "CallStatus") or ""
        if call_id is None and sid is not None:
            call_id = self._calls.sink.find_by_provider_id(sid)  # inbound: no callId in the URL
        script = self._calls.adopt(call_id, sid) if call_id else None
        if script is None:
            log.debug("status %s for an unknown or ended call (%s)", call_status, call_id)
            return xml_answer(twiml.empty())
        if sid is not None and script.sid is not None and sid != script.sid:
            return text_answer(400, f"CallSid does not belong to call {call_id}")
        self._learn_sid(script, sid)
        sequence = to_int(first(params, "SequenceNumber"))
        with script.lock:
            stale = sequence is not None and sequence <= script.sequence
            if sequence is not None:
                script.sequence = max(script.sequence, sequence)
            closing = script.closing
        if call_status == "in-progress":
            self._detected(script, first(params, "AnsweredBy"))
        event = classify_status(call_status, answered_by=first(params, "AnsweredBy"),
                                machine_detection=twilio_amd.mode(self._cfg) == "sync", closing=closing)
        if event is None:
            if call_status not in LIVE_STATUSES:
                log.info("call %s: unknown Twilio CallStatus %r ignored", script.call_id, call_status)
            return xml_answer(twiml.empty())
        if stale and event.type != EventType.ENDED:
            # An older callback overtaken by a newer one: never move backwards.
            log.debug("call %s: out-of-order status %s (sequence %s) ignored", script.call_id, call_status,
                      sequence)
            return xml_answer(twiml.empty())
        message = event.message
        if event.reason == State.FAILED and not message:
            sip = first(params, "SipResponseCode")
            message = "Twilio reports the call failed" + (f" (SIP {sip})" if sip else "")
        if event.type == EventType.ENDED and call_status == "in-progress" and script.sid:
            # Answered, but not by a person (machine detection): the call is
            # still up at Twilio, so end it there too.
            log.info("call %s: %s; hanging up", script.call_id, message)
            try:
                self._api.hang_up(script.sid)
            except ProviderError as exc:
                log.warning("call %s: hanging up failed: %s", script.call_id, exc.message)
        # The same id as the voice fetch's answer, which may come first.
        suffix = "answered" if event.type == EventType.ANSWERED else f"status:{call_status}"
        event_id = f"{script.sid}:{suffix}"
        self._emit(event.type, event_id, script, reason=event.reason, message=message)
        return xml_answer(twiml.empty())

    def _detected(self, script: CallScript, answered_by: str | None) -> None:
        """Report an ``AnsweredBy`` (the TwiML fetch, the status callbacks
        and the async callback may each carry the same verdict: one event)."""
        verdict = twilio_amd.answered_by(answered_by)
        if verdict is not None:
            self._emit(EventType.DETECTED, f"{script.sid}:amd", script, answered_by=verdict)

    def _on_amd(self, script: CallScript, params: list[tuple[str, str]]) -> Answer:
        """The asynchronous verdict (``AsyncAmdStatusCallback``). Not
        answered with TwiML (Twilio runs none from it): the speech it may
        start goes to the live call by a REST update."""
        answered_by = first(params, "AnsweredBy")
        log.info("call %s: answered by %s (Twilio AMD, %s ms)", script.call_id, answered_by or "?",
                 first(params, "MachineDetectionDuration") or "?")
        self._detected(script, answered_by)
        if answered_by in twilio_amd.GREETING_ENDED:
            self._emit(EventType.GREETING_ENDED, f"{script.sid}:beep", script)
        return xml_answer(twiml.empty())

    def _on_incoming(self, sid: str | None, params: list[tuple[str, str]]) -> Answer:
        """A call to one of our numbers (its voice URL is the bare webhook)."""
        call_status = first(params, "CallStatus") or ""
        if sid is None:
            return text_answer(400, "a Twilio voice request needs CallSid")
        if call_status not in LIVE_STATUSES:
            return self._on_status(None, sid, params)  # a status callback configured without ?type=status
        caller = first(params, "From") or ""
        snapshot, accepted = self._calls.sink.accept_inbound(caller, first(params, "To"), sid)
        if not accepted:
            return xml_answer(twiml.reject())
        return self._on_voice(self._calls.incoming(snapshot["callId"], sid), params)
