"""Placing outbound calls with the carrier: a new call dialled at once
(``voicecall.initiate`` waits for the carrier's answer, and reports its
refusal), a new call that joins the dial queue (logged as ``queued``
first), and a queued call whose turn came (``dialer.Dialer``, on a timer
worker).

A call is logged as dialled (state ``initiated``) before the carrier is
asked, and nothing is dialled whose record could not be written: restart
recovery re-queues only calls logged as ``queued``, so no call is ever
dialled twice. A carrier's rate-limit answer (``RateLimited``) placed
nothing: the call goes back to the head of the queue. Any other refusal
ends it as ``failed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .calls import State
from .dialer import Dialer
from .errors import ProviderError, RateLimited, StoreFailed
from .interpreter import Step
from .livecalls import LiveCall, now_ms
from .phone import mask
from .providers.base import Provider

log = logging.getLogger("voicecalld.manager")  # the engine's log lines keep their name

#: Runs a lifecycle step on a call (``Interpreter.run``): (call, step, raise_errors).
Run = Callable[[LiveCall, Step, bool], None]


class Placer:
    def __init__(self, provider: Provider, dialer: Dialer, run: Run,
                 set_provider_id: Callable[[LiveCall, str], None]) -> None:
        self.provider = provider
        self.dialer = dialer
        self._run = run
        self._set_provider_id = set_provider_id

    def _refuse(self, live: LiveCall, exc: StoreFailed, what: str) -> None:
        log.error("call %s: %s: %s", live.call.id, what, exc.message)
        self._run(live, lambda c: c.finish(State.FAILED, now_ms(), error=exc.message), False)

    def dial_now(self, live: LiveCall) -> None:
        """A new call that may be dialled at once (it holds a slot): raises
        what the carrier or the log refused."""
        try:
            self._run(live, lambda c: c.start(), True)
        except StoreFailed as exc:
            self._refuse(live, exc, "not dialed")
            raise
        self.place(live, raise_errors=True)

    def queue(self, live: LiveCall) -> int:
        """A new call waits in the dial queue: log it as queued, then let it
        in. Returns its position."""
        try:
            self._run(live, lambda c: c.start(), True)
        except StoreFailed as exc:
            self.dialer.unreserve()
            self._refuse(live, exc, "not queued")
            raise
        with live.lock:
            position = self.dialer.enqueue(live)
            record = live.call.record
            log.info("call %s: queued to dial %s (%s), position %d", record.callId, mask(record.to), record.mode,
                     position)
            return position

    def place_queued(self, live: LiveCall) -> None:
        """The dial queue's turn for ``live`` (which now holds a slot): log
        it as dialled, then ask the carrier. On a timer worker: nothing to
        raise to."""
        try:
            self._run(live, lambda c: c.dial(now_ms()), True)
        except StoreFailed as exc:
            # Dialled without a record saying so, a restart could dial it again.
            self._refuse(live, exc, "not dialed")
            return
        with live.lock:
            if live.call.state != State.INITIATED:
                return  # ended while its turn came
        self.place(live, raise_errors=False)

    def place(self, live: LiveCall, raise_errors: bool) -> None:
        """Ask the carrier to place ``live`` (logged as initiated). A
        refusal for its rate limit queues the call again; any other ends it
        as failed (raised with ``raise_errors``)."""
        record = live.call.record
        log.info("call %s: dialing %s (%s)", record.callId, mask(record.to), record.mode)
        try:
            provider_id = self.provider.initiate(record)
        except RateLimited as exc:
            # The carrier placed nothing: the call waits again, at the head of the queue.
            self._run(live, lambda c: c.dial_throttled(now_ms()), False)
            with live.lock:
                if live.call.state == State.QUEUED:
                    self.dialer.requeue(live, exc.retry_after)
            return
        except Exception as exc:
            message = exc.message if isinstance(exc, ProviderError) else f"the carrier request failed: {exc}"
            if isinstance(exc, ProviderError):
                log.warning("call %s: carrier refused the call: %s", record.callId, message)
            else:
                log.exception("call %s: initiate failed", record.callId)
            self._run(live, lambda c: c.finish(State.FAILED, now_ms(), error=message), False)
            if not raise_errors:
                return
            if isinstance(exc, ProviderError):
                raise
            raise ProviderError(message) from exc
        self.dialer.dialled(record.callId)
        try:
            self._set_provider_id(live, provider_id)
        except StoreFailed as exc:
            # Without its carrier id on disk a restart could not find the
            # call again: end it rather than acknowledge it.
            why = exc.message
            log.error("call %s: hanging up: %s", record.callId, why)
            self._run(live, lambda c: c.fail(why), False)
            if raise_errors:
                raise
