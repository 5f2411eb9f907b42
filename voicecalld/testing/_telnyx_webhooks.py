"""Webhook delivery for the fake Telnyx: signing, retries and injected
faults (duplicates, reordering, drops, forged signatures).

All deliveries run on the fake's scheduler thread, except forged one-offs
that a test sends synchronously.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import nacl.signing
import requests

from . import _telnyx_wire as wire
from ._scheduler import Scheduler


@dataclass
class Event:
    """One thing that happened on a call, before it is wrapped and sent."""

    event_type: str
    event_id: str
    occurred_at: str
    call_control_id: str | None
    url: str
    payload: dict[str, Any]


@dataclass
class Delivery:
    """One HTTP attempt to deliver an event, and what the receiver said."""

    event_type: str
    event_id: str
    call_control_id: str | None
    url: str
    attempt: int
    body: bytes
    headers: dict[str, str]
    fault: str | None = None      # a WEBHOOK_FAULTS name, or None for a clean delivery
    status: int | None = None     # the receiver's HTTP status; None until answered or on error
    error: str | None = None      # connection error / timeout text
    sent_at: float = field(default_factory=time.monotonic)
    finished: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def forged(self) -> bool:
        """True when the signature headers were damaged on purpose."""
        return self.fault in wire.SIGNATURE_FAULTS

    @property
    def json(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.body)
        return document

    def __repr__(self) -> str:
        outcome = self.status if self.status is not None else (self.error or "pending")
        extra = f" fault={self.fault}" if self.fault else ""
        return f"<Delivery {self.event_type} attempt={self.attempt} -> {outcome}{extra}>"


@dataclass
class _Rule:
    kind: str                     # a fault name, or "hold"
    event_type: str | None
    call_control_id: str | None
    remaining: int
    after: str | None = None      # for "hold": release after this event type

    def matches(self, event: Event) -> bool:
        return (self.remaining > 0
                and self.event_type in (None, event.event_type)
                and self.call_control_id in (None, event.call_control_id))


class Deliverer:
    def __init__(self, key: nacl.signing.SigningKey, scheduler: Scheduler, *,
                 retry_delays: Sequence[float], timeout: float,
                 record: Callable[[Delivery], None]) -> None:
        self._key = key
        self._scheduler = scheduler
        self._retry_delays = tuple(retry_delays)
        self._timeout = timeout
        self._record = record
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._held: list[tuple[_Rule, Event]] = []
        self._session = requests.Session()  # used only on the scheduler thread
        self.dropped: list[Event] = []

    # -- fault rules (any thread) ----------------------------------------------

    def add_fault(self, fault: str, event_type: str | None, call_control_id: str | None, count: int) -> None:
        if fault not in wire.WEBHOOK_FAULTS:
            raise ValueError(f"unknown webhook fault {fault!r}; choose from {sorted(wire.WEBHOOK_FAULTS)}")
        with self._lock:
            self._rules.append(_Rule(fault, event_type, call_control_id, count))

    def add_hold(self, event_type: str, after: str, call_control_id: str | None, count: int) -> None:
        with self._lock:
            self._rules.append(_Rule("hold", event_type, call_control_id, count, after=after))

    def release(self, event_type: str, call_control_id: str | None) -> int:
        """Deliver held ``event_type`` webhooks now (on the scheduler thread); how many."""
        with self._lock:
            ready = [held for _, held in self._held if held.event_type == event_type
                     and (call_control_id is None or held.call_control_id == call_control_id)]
            self._held = [item for item in self._held if item[1] not in ready]
        for held in ready:
            self._scheduler.call_later(0.0, lambda event=held: self._attempt(event, 1, None))  # type: ignore[misc]
        return len(ready)

    def _take(self, kinds: frozenset[str] | set[str], event: Event) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.kind in kinds and rule.matches(event):
                    rule.remaining -= 1
                    return rule
        return None

    # -- delivery (scheduler thread) ------------------------------------------

    def dispatch(self, event: Event) -> None:
        if self._take({"drop"}, event) is not None:
            self.dropped.append(event)  # as if every retry failed: the receiver never hears of it
            return
        hold = self._take({"hold"}, event)
        if hold is not None:
            with self._lock:
                self._held.append((hold, event))
            return
        fault_rule = self._take(wire.SIGNATURE_FAULTS, event)
        self._attempt(event, 1, fault_rule.kind if fault_rule else None)
        if self._take({"duplicate"}, event) is not None:
            self._attempt(event, 1, "duplicate")
        self._release_after(event)

    def _release_after(self, event: Event) -> None:
        ends_call = event.event_type == "call.hangup"
        with self._lock:
            ready = [(rule, held) for rule, held in self._held
                     if held.call_control_id == event.call_control_id
                     and (rule.after == event.event_type or ends_call)]
            self._held = [item for item in self._held if item not in ready]
        for _, held in ready:
            self._attempt(held, 1, None)

    def _attempt(self, event: Event, attempt: int, fault: str | None) -> None:
        delivery = self._build(event, attempt, fault)
        self._record(delivery)
        self._post(self._session, delivery)
        if not delivery.ok and attempt <= len(self._retry_delays):
            # Telnyx retries a delivery the receiver did not accept; the retry
            # is a new, correctly signed request (meta.attempt + 1).
            self._scheduler.call_later(self._retry_delays[attempt - 1],
                                       lambda: self._attempt(event, attempt + 1, None))

    def _build(self, event: Event, attempt: int, fault: str | None) -> Delivery:
        body = wire.encode(wire.envelope(event.event_type, event.event_id, event.occurred_at,
                                         event.payload, attempt, event.url))
        signature_fault = fault if fault in wire.SIGNATURE_FAULTS else None
        headers = {"Content-Type": "application/json", "User-Agent": "telnyx-webhooks (voicecalld fake)"}
        headers.update(wire.signature_headers(self._key, body, fault=signature_fault))
        return Delivery(event.event_type, event.event_id, event.call_control_id, event.url,
                        attempt, body, headers, fault=fault)

    def _post(self, session: requests.Session | None, delivery: Delivery) -> None:
        poster = session.post if session is not None else requests.post
        try:
            response = poster(delivery.url, data=delivery.body, headers=delivery.headers,
                              timeout=self._timeout, allow_redirects=False)
            delivery.status = response.status_code
            response.close()
        except requests.RequestException as exc:
            delivery.error = f"{type(exc).__name__}: {exc}"
        delivery.finished = True

    def send_forged(self, event: Event, fault: str) -> Delivery:
        """Send one damaged request now, from the caller's thread; no retries."""
        if fault not in wire.SIGNATURE_FAULTS:
            raise ValueError(f"unknown signature fault {fault!r}; choose from {sorted(wire.SIGNATURE_FAULTS)}")
        delivery = self._build(event, 1, fault)
        self._record(delivery)
        self._post(None, delivery)
        return delivery

    def close(self) -> None:
        with self._lock:
            self._held.clear()
        self._session.close()
