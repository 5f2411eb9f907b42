"""The calls in progress, and what is remembered of those that ended.

``LiveCalls`` is the manager's table of live calls: one entry (``LiveCall``)
per call, with the call's own lock, its timers and the continue waiting on
it. Its lock guards only the tables here (live calls, carrier ids, recently
ended calls); a call's state is guarded by the call's lock. Lock order is
call lock, then this lock; never the reverse.

A live call is *active* (it holds one of ``maxConcurrentCalls``' slots) or
*queued*: waiting in the dial queue (``dialer.py``), which holds no slot
until it is dialled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .calls import State, TimerKind
from .errors import CallNotFound, InvalidParams, LimitReached, NotConnected, ShuttingDown
from .lifecycle import Call
from .lru import Bounded
from .store import Store
from .timers import Timer
from .waiters import Waiter

RECENT = 256  # ended calls kept in memory for status
#: Carrier call ids of ended calls, remembered (and rebuilt from the log at
#: start) so a replayed inbound webhook can never start a call again.
ENDED_IDS = 100_000


def now_ms() -> int:
    """The time of call records: milliseconds since the epoch."""
    return int(time.time() * 1000)


@dataclass
class LiveCall:
    call: Call
    lock: threading.Lock = field(default_factory=threading.Lock)
    timers: dict[TimerKind, Timer] = field(default_factory=dict)
    waiter: Waiter | None = None


def check_call_id(call_id: object) -> str:
    if not isinstance(call_id, str) or not call_id:
        raise InvalidParams("callId must be a non-empty string")
    return call_id


class LiveCalls:
    def __init__(self, store: Store) -> None:
        self.store = store  # where ended calls are looked up once memory forgot them
        self._lock = threading.Lock()
        self._live: dict[str, LiveCall] = {}
        self._by_provider_id: dict[str, str] = {}
        self._recent: Bounded[str, dict[str, Any]] = Bounded(RECENT)
        self._ended_ids: Bounded[str, str] = Bounded(ENDED_IDS)  # carrier call id -> callId
        self._idle = threading.Condition(self._lock)  # notified when the last active call ends
        self._accepting = True
        self._queued: set[str] = set()  # live calls waiting to be dialled: they hold no slot
        #: Called (under the ended call's lock) with its id once a call has
        #: ended: a slot, or a place in the dial queue, is free.
        self.on_release: Callable[[str], None] | None = None

    def __len__(self) -> int:
        return len(self._live)

    @property
    def active(self) -> int:
        """Live calls that hold a slot (queued ones do not)."""
        with self._lock:
            return len(self._live) - len(self._queued)

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._queued)

    def get(self, call_id: str) -> LiveCall | None:
        return self._live.get(call_id)

    def all(self) -> list[LiveCall]:
        return list(self._live.values())

    def find(self, call_id: object) -> LiveCall:
        """The live call ``call_id``; raises if it ended or never was."""
        call_id = check_call_id(call_id)
        live = self._live.get(call_id)
        if live is None:
            if self.ended(call_id) is not None:
                raise NotConnected(f"call {call_id} has ended", {"callId": call_id})
            raise CallNotFound(call_id)
        return live

    def ended(self, call_id: str) -> dict[str, Any] | None:
        """The final record of an ended call: from memory, else from the log."""
        with self._lock:
            recent = self._recent.get(call_id)
        return recent if recent is not None else self.store.find(call_id)

    def by_provider_id(self, provider_call_id: str) -> str | None:
        with self._lock:
            return self._by_provider_id.get(provider_call_id)

    def ended_by_provider_id(self, provider_call_id: str) -> tuple[str, dict[str, Any] | None] | None:
        """(callId, its final record if still in memory) of an ended carrier call."""
        with self._lock:
            call_id = self._ended_ids.get(provider_call_id)
            return None if call_id is None else (call_id, self._recent.get(call_id))

    # -- admission --

    def admit(self, live: LiveCall, limit: int, *, queued: bool = False) -> None:
        """Count ``live`` in, or raise ``ShuttingDown`` / ``LimitReached``.
        A ``queued`` call takes no slot, so only shutdown refuses it."""
        with self._lock:
            if not self._accepting:
                raise ShuttingDown("the daemon is shutting down and takes no new calls")
            active = len(self._live) - len(self._queued)
            if not queued and active >= limit:
                raise LimitReached(f"{active} of {limit} concurrent calls are active; "
                                   "end one or raise maxConcurrentCalls",
                                   {"active": active, "limit": limit})
            self._add(live)

    def admit_inbound(self, live: LiveCall, limit: int) -> str | None:
        """Count an inbound call in; else say why not."""
        with self._lock:
            if not self._accepting:
                return "the daemon is shutting down"
            if len(self._live) - len(self._queued) >= limit:
                return "the concurrent-call limit is reached"
            self._add(live)
            return None

    def restored(self, live: LiveCall) -> None:
        """A call of a previous run: it counts whatever the limit (a queued
        one takes no slot)."""
        with self._lock:
            self._add(live)

    def activate(self, live: LiveCall, limit: int) -> bool | None:
        """A queued call's turn to be dialled: take a slot for it. False if
        none is free; None if the call has ended."""
        with self._lock:
            if self._live.get(live.call.id) is not live:
                return None
            if len(self._live) - len(self._queued) >= limit:
                return False
            self._queued.discard(live.call.id)
            return True

    def requeue(self, live: LiveCall) -> None:
        """The call is queued again (its dial was refused): its slot is free."""
        with self._lock:
            if self._live.get(live.call.id) is live:
                self._queued.add(live.call.id)
                if len(self._live) == len(self._queued):
                    self._idle.notify_all()

    def _add(self, live: LiveCall) -> None:
        record = live.call.record
        self._live[record.callId] = live
        if record.state == State.QUEUED:
            self._queued.add(record.callId)
        if record.providerCallId:
            self._by_provider_id[record.providerCallId] = record.callId

    def link_provider_id(self, live: LiveCall, provider_call_id: str) -> bool:
        """Under the call's lock: find the call by its carrier id from now
        on. False if it has ended: then it must not be findable (or leak)."""
        with self._lock:
            if live.call.terminal:
                self._ended_ids.put(provider_call_id, live.call.id)
                return False
            self._by_provider_id[provider_call_id] = live.call.id
            return True

    def amend_ended(self, call_id: str, snapshot: dict[str, Any]) -> None:
        """An ended call's final record changed (a recording reported late)."""
        with self._lock:
            if call_id in self._recent:
                self._recent.put(call_id, snapshot)

    def remember_ended(self, provider_call_id: str, call_id: str) -> None:
        with self._lock:
            self._ended_ids.put(provider_call_id, call_id)

    def release(self, live: LiveCall, snapshot: dict[str, Any]) -> None:
        """Under the call's lock: the call ended with the final record ``snapshot``."""
        call = live.call
        with self._lock:
            self._live.pop(call.id, None)
            self._queued.discard(call.id)
            self._recent.put(call.id, snapshot)
            if call.record.providerCallId:
                self._by_provider_id.pop(call.record.providerCallId, None)
                self._ended_ids.put(call.record.providerCallId, call.id)
            if len(self._live) == len(self._queued):
                self._idle.notify_all()
        hook = self.on_release
        if hook is not None:
            hook(call.id)

    # -- shutdown --

    def stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False

    def wait_idle(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` seconds for the last active call to end;
        the ids of those still active. (Queued calls stay queued: they are
        in the log, and a restart dials them.)"""
        with self._lock:
            self._idle.wait_for(lambda: len(self._live) == len(self._queued), timeout)
            return [call_id for call_id in self._live if call_id not in self._queued]
