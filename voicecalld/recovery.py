"""Restart recovery: reconcile calls restored from the log with the carrier.

A restart never re-dials anyone. A call the log says is ``queued`` was
never dialled (a call is logged as dialled before the carrier is asked):
it joins the dial queue again, in its old order. Each other call the log
says was in progress is checked: calls with no carrier id are closed as
``error``; calls older than
``maxDurationSeconds`` are hung up as ``timeout``; otherwise the carrier is
asked. Ended calls are closed with the carrier's reason; live ones are kept
with only their *remaining* deadline re-armed; a call the carrier says was
answered while the daemon was down is answered now (its opening is spoken
if it was not yet, and only the maximum duration applies, never the ring
deadline); when the carrier cannot be asked, the call is kept and asked
again later with backoff.

``plan_before`` and ``plan_after`` are the I/O-free decisions; ``Recovery``
runs them on the timer wheel's worker pool, off the start-up path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .calls import CallRecord, State, TimerKind
from .livecalls import now_ms
from .providers.base import CarrierStatus

if TYPE_CHECKING:  # pragma: no cover
    from .manager import CallManager

log = logging.getLogger(__name__)

RETRY_FIRST = 2.0
RETRY_MAX = 60.0


@dataclass(frozen=True)
class Close:
    reason: State
    error: str | None = None


@dataclass(frozen=True)
class EndOverdue:
    """The call outlived maxDurationSeconds while voicecalld was down: hang
    it up (at the carrier) as ``reason``."""

    reason: State


@dataclass(frozen=True)
class AskCarrier:
    pass


@dataclass(frozen=True)
class Keep:
    """Live: re-arm ``kind`` with ``remaining`` seconds."""

    kind: TimerKind
    remaining: float


@dataclass(frozen=True)
class Answer:
    """The carrier says the callee picked up while we were down: move the
    call to answered (at ``now``, as the carrier gives no time) with
    ``remaining`` seconds of maximum duration."""

    remaining: float


@dataclass(frozen=True)
class Retry:
    pass


@dataclass(frozen=True)
class Requeue:
    """Never dialled: back into the dial queue."""


Plan = Close | EndOverdue | AskCarrier | Keep | Answer | Retry | Requeue


def plan_before(record: CallRecord, now_ms: int, max_duration: float) -> Plan:
    if record.state == State.QUEUED and not record.providerCallId:
        return Requeue()
    if not record.providerCallId:
        return Close(State.ERROR, "voicecalld restarted before the carrier confirmed the call; "
                                  "it has no carrier call id and cannot be checked")
    since = record.answeredAt if record.answeredAt is not None else record.startedAt
    if (now_ms - since) / 1000 >= max_duration:
        return EndOverdue(State.TIMEOUT)
    return AskCarrier()


def plan_after(record: CallRecord, status: CarrierStatus | None, now_ms: int, max_duration: float,
               ring_timeout: float) -> Plan:
    if status is None:
        return Retry()
    if not status.live:
        return Close(status.reason or State.COMPLETED, "the call ended while voicecalld was not running")
    if record.answeredAt is not None:
        return Keep("max-duration", max(0.0, max_duration - (now_ms - record.answeredAt) / 1000))
    if status.answered:
        return Answer(max_duration)
    return Keep("ring", max(0.0, ring_timeout - (now_ms - record.startedAt) / 1000))


def detection_left(record: CallRecord, now_ms: int, deadline: float) -> float | None:
    """Seconds left to a restored call whose opening waits for the
    answering-machine verdict (leave-message: answered, nothing said yet)
    before it is said anyway; None if it waits for nothing. The verdict
    may have come while voicecalld was down, so the deadline is armed again."""
    if record.state != State.ANSWERED or record.openingSpoken or not record.opening or record.answeredAt is None:
        return None
    return max(0.0, deadline - (now_ms - record.answeredAt) / 1000)


class Recovery:
    def __init__(self, manager: CallManager) -> None:
        self.manager = manager

    def start(self, call_ids: list[str]) -> None:
        queued = []
        for call_id in call_ids:
            record = self.manager.live_record(call_id)
            if record is not None and isinstance(plan_before(record, now_ms(), 0), Requeue):
                queued.append(call_id)  # at once and together: the queue keeps its order
            else:
                self.manager.timers.call_later(0, self._check, call_id, RETRY_FIRST)
        if queued:
            log.info("%d queued call(s) restored to the dial queue", len(queued))
            self.manager.requeue_restored(queued)

    def _check(self, call_id: str, retry_in: float) -> None:
        m = self.manager
        record = m.live_record(call_id)
        if record is None:
            return  # already over (a carrier event arrived first)
        policy = m.policy
        plan = plan_before(record, now_ms(), policy.max_duration)
        if isinstance(plan, AskCarrier):
            try:
                status = m.provider.call_status(record)
            except Exception as exc:  # a carrier failure must not lose the call
                log.warning("call %s: cannot ask %s about the restored call (%s); will retry", call_id,
                            m.provider.name, getattr(exc, "message", exc))
                status = None
            plan = plan_after(record, status, now_ms(), policy.max_duration, policy.ring_timeout)
        log.info("call %s: restored call -> %s", call_id, plan)
        if isinstance(plan, Requeue):
            m.requeue_restored([call_id])
        elif isinstance(plan, Close):
            m.close_call(call_id, plan.reason, plan.error)
        elif isinstance(plan, EndOverdue):
            m.end_for(call_id, plan.reason)
        elif isinstance(plan, Keep):
            m.arm(call_id, plan.kind, plan.remaining)
            waiting = detection_left(record, now_ms(), policy.detection_deadline)
            if waiting is not None and policy.leave_voicemail:
                m.arm(call_id, "detection", waiting)
        elif isinstance(plan, Answer):
            m.answer_restored(call_id, plan.remaining)
        else:
            m.timers.call_later(retry_in, self._check, call_id, min(RETRY_MAX, retry_in * 2))
