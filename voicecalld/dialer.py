"""Dial pacing: outbound calls wait their turn in a first-in, first-out
queue and are dialled no faster than the carrier allows.

Two limits decide when a call may be dialled: the dial rate
(``outbound.dialsPerSecond``, else the carrier's
``Capabilities.dials_per_second``) and the concurrent calls
(``maxConcurrentCalls``: a queued call holds no slot until it is dialled).
A new call that meets neither limit, with nobody queued before it, is
dialled at once by the command that placed it, as it always was; any other
waits in the state ``queued`` (``outbound.maxQueued`` places at most; past
them the call is refused with -32001). A carrier that still answers with its
rate limit (HTTP 429, ``RateLimited``) has placed nothing: the call goes
back to the head of the queue and dialling pauses, for the carrier's
``Retry-After`` or else an exponential backoff. A call is never dialled
twice: it is logged as dialled (state ``initiated``) before the carrier is
asked, and restart recovery re-queues only calls logged as ``queued``.

The queue is turned by the timer wheel, never by a thread of its own: at
most one timer is pending, due when the next dial may happen, and a call
that ends (freeing a slot, or its place in the queue) re-arms it. A turn
arms the next one, then dials the call at the head on the worker that runs
it, so dials overlap when the carrier is slow; calls whose slots fell due
while the wheel was late (a busy machine) are dialled by the same turn, in
their order, within the rate's window (``Pace``).

``Pace`` is the rate arithmetic alone (I/O-free, on a clock it is given);
``Dialer`` the queue around it.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .calls import State
from .errors import LimitReached
from .livecalls import LiveCall, LiveCalls, now_ms
from .timers import Timer, TimerService

log = logging.getLogger(__name__)

GUARD = 0.02         # the pace keeps 2% under the rate: room for the network's jitter
MIN_BACKOFF = 0.01   # seconds: the first pause after a refusal, at least
MAX_BACKOFF = 30.0   # ... and the longest, Retry-After included
MAX_BATCH = 64       # calls one turn takes when the wheel fell behind

Decision = Literal["dial", "queue"]


@dataclass(frozen=True)
class Limits:
    """The numbers of the configuration the queue obeys, read at each use
    (so a reload applies to calls already queued)."""

    rate: float | None   # dials per second; None: no limit
    max_queued: int
    max_concurrent: int


def window(rate: float) -> tuple[float, int]:
    """(seconds, dials): no more than this many dials in any window this
    long: the rate's promise (in one second, or one interval when slower),
    over a window ``GUARD`` longer than the carrier's, so that a request
    the network delays more than the next does not push the carrier's
    count past its limit."""
    seconds = max(1.0, 1.0 / rate)
    return seconds * (1 + GUARD), max(1, round(rate * seconds))


class Pace:
    """When the next dial may be, and how long to pause after refusals.

    Dials are spaced one interval (``1 / rate``, and ``GUARD`` more) apart
    on an ideal schedule, so a turn that runs a little late does not lower
    the rate; a queue that fell behind (a busy machine stalled the wheel)
    catches up on the slots it missed in the last window, never past the
    window's count: ``rate`` dials in any trailing second (``window``), as
    a carrier counts them. After longer (a queue that was idle, or waited
    for a free slot, or a daemon that just started) the schedule starts
    afresh, as it does for a dial placed with nobody waiting before it.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self.next_at = float("-inf")     # the next slot of the schedule
        self.paused_until = float("-inf")
        self.paused_since = float("-inf")  # when the last pause was decided
        self.refusals = 0                # in a row
        self._recent: collections.deque[float] = collections.deque()  # dials in the last window
        self._rng = rng or random.Random()

    def ready_at(self, rate: float | None) -> float:
        at = max(self.next_at, self.paused_until)
        if rate:
            seconds, count = window(rate)
            if len(self._recent) >= count:
                at = max(at, self._recent[-count] + seconds)
        return at

    def take(self, now: float, rate: float | None, *, catch_up: bool = True) -> None:
        """A dial happens now. ``catch_up``: it is the queue's (a late
        queue may make up for lost slots); else nobody waited before it."""
        if not rate:
            return
        seconds, count = window(rate)
        while self._recent and self._recent[0] <= now - seconds:
            self._recent.popleft()
        self._recent.append(now)
        slot = max(self.next_at, self.paused_until)
        if not catch_up or slot < now - seconds:
            slot = max(slot, now)  # idle, blocked or stalled for a window: afresh, never a burst
        self.next_at = slot + seconds / count

    def refused(self, now: float, rate: float | None, retry_after: float | None,
                sent_at: float | None = None) -> float:
        """The carrier refused a dial (sent at ``sent_at``) for its rate
        limit: pause dialling for its ``retry_after``, else for a backoff
        that doubles with each refusal in a row (half of it random, so
        restarts do not align). A dial sent before the last pause began was
        answered by that pause already: it does not double it. Returns the pause."""
        fresh = sent_at is None or sent_at >= self.paused_since
        if fresh:
            self.refusals += 1
        if retry_after is not None:
            delay = min(MAX_BACKOFF, max(0.0, retry_after))
        elif fresh:
            doubled = 2.0 ** min(self.refusals - 1, 32)  # bounded: a long outage must not overflow
            base = min(MAX_BACKOFF, max(MIN_BACKOFF, 1.0 / rate if rate else 0.0) * doubled)
            delay = base / 2 + self._rng.uniform(0, base / 2)
        else:
            return max(0.0, self.paused_until - now)
        if now + delay > self.paused_until:
            self.paused_until, self.paused_since = now + delay, now
        return delay

    def succeeded(self) -> None:
        self.refusals = 0


class Dialer:
    """The dial queue. ``place`` dials one call that holds a slot (on a
    timer worker; it never raises); ``limits`` says the numbers."""

    def __init__(self, timers: TimerService, calls: LiveCalls, limits: Callable[[], Limits],
                 place: Callable[[LiveCall], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._timers = timers
        self._calls = calls
        self._limits = limits
        self._place = place
        self._clock = clock
        self._lock = threading.Lock()  # a leaf: only LiveCalls' and the wheel's own locks are taken under it
        self._queue: OrderedDict[str, LiveCall] = OrderedDict()
        self._reserved = 0             # places taken by calls whose first record is being logged
        self._pace = Pace()
        self._timer: Timer | None = None
        self._timer_at = float("inf")
        self._blocked = False          # every slot was taken at the last turn: wait for a call to end
        self._stopped = False
        self._sent: dict[str, float] = {}  # calls being dialled: when they were handed out

    # -- new calls --

    def admit(self, live: LiveCall) -> Decision:
        """A new outbound call: ``dial`` it now (it holds a slot and this
        moment's dial), or ``queue`` it (its record is now ``queued``, and a
        place is kept for it until ``enqueue``). Raises ``LimitReached``
        when the queue is full, ``ShuttingDown`` when the daemon stops."""
        limits = self._limits()
        with self._lock:
            now = self._clock()
            full: LimitReached | None = None
            if not self._queue and not self._reserved and self._pace.ready_at(limits.rate) <= now:
                try:
                    self._calls.admit(live, limits.max_concurrent)
                except LimitReached as exc:
                    full = exc
                else:
                    self._pace.take(now, limits.rate, catch_up=False)
                    self._sent[live.call.id] = now
                    return "dial"
            waiting = len(self._queue) + self._reserved
            if waiting >= limits.max_queued:
                raise full or self._queue_full(waiting, limits)
            record = live.call.record
            record.state, record.queuedAt = State.QUEUED, now_ms()
            self._calls.admit(live, limits.max_concurrent, queued=True)
            self._reserved += 1
            return "queue"

    def _queue_full(self, waiting: int, limits: Limits) -> LimitReached:
        if limits.max_queued == 0:
            why = (f"the dial rate ({limits.rate:g} per second) allows no call right now" if limits.rate and not waiting
                   else f"{waiting} calls wait in the dial queue")  # (queued before a reload set it to 0)
            return LimitReached(f"{why} and outbound.maxQueued is 0; try again in a moment, or raise "
                                "outbound.maxQueued to queue calls", {"queued": waiting, "limit": 0})
        return LimitReached(f"{waiting} calls wait in the dial queue, its limit (outbound.maxQueued); end one, "
                            "wait for the queue to go down, or raise outbound.maxQueued",
                            {"queued": waiting, "limit": limits.max_queued})

    def enqueue(self, live: LiveCall) -> int:
        """The call's ``queued`` record is logged: it joins the end of the
        queue. Returns its position (1: next). Called under the call's lock."""
        with self._lock:
            self._reserved -= 1
            if not live.call.terminal:  # not ended while its record was being written
                self._queue[live.call.id] = live
            self._blocked = False  # limits may have been raised since (a reload)
            self._arm()
            return len(self._queue)

    def unreserve(self) -> None:
        """A place kept by ``admit`` is not needed (the record could not be logged)."""
        with self._lock:
            self._reserved -= 1

    def restore(self, lives: list[LiveCall]) -> None:
        """Calls a previous run left queued, oldest first: they join the queue in that order."""
        with self._lock:
            for live in lives:
                if not live.call.terminal:
                    self._queue[live.call.id] = live
            self._arm()

    # -- the carrier's answer --

    def requeue(self, live: LiveCall, retry_after: float | None) -> None:
        """The carrier refused the call's dial for its rate limit: it goes
        back to the head of the queue, and dialling pauses. Called under the
        call's lock, the call queued again."""
        limits = self._limits()
        with self._lock:
            if live.call.terminal:
                return
            self._calls.requeue(live)
            self._queue[live.call.id] = live
            self._queue.move_to_end(live.call.id, last=False)
            pause = self._pace.refused(self._clock(), limits.rate, retry_after, self._sent.pop(live.call.id, None))
            self._blocked = False  # its slot is free again
            self._arm()
        log.warning("call %s: the carrier refused the dial for its rate limit; queued again, dialling resumes "
                    "in %.2f s", live.call.id, pause)

    def dialled(self, call_id: str) -> None:
        """The carrier accepted the call's dial: refusals in a row are over."""
        with self._lock:
            self._sent.pop(call_id, None)
            self._pace.succeeded()

    # -- queries --

    def positions(self) -> dict[str, int]:
        """Queued calls by id: their place in the queue (1: next)."""
        with self._lock:
            return {call_id: n for n, call_id in enumerate(self._queue, 1)}

    def position(self, call_id: str) -> int | None:
        return self.positions().get(call_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    # -- turning --

    def released(self, call_id: str) -> None:
        """A call ended (``LiveCalls.on_release``, under its lock): it
        leaves the queue if it was in it, and its slot may let the next one go."""
        with self._lock:
            self._queue.pop(call_id, None)
            self._sent.pop(call_id, None)
            self._blocked = False
            self._arm()

    def stop(self) -> None:
        """No more dials (shutdown): queued calls stay queued, in the log."""
        with self._lock:
            self._stopped = True
            self._cancel()

    def _arm(self) -> None:
        """(Lock held.) Have a turn due when the head may be dialled."""
        if self._stopped or not self._queue or self._blocked:
            self._cancel()
            return
        due = max(self._pace.ready_at(self._limits().rate), self._clock())
        if self._timer is not None and self._timer.active and self._timer_at <= due:
            return  # a turn no later than that is already on its way
        self._cancel()
        self._timer_at = due
        self._timer = self._timers.call_later(max(0.0, due - self._clock()), self._turn)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timers.cancel(self._timer)
        self._timer, self._timer_at = None, float("inf")

    def _turn(self) -> None:
        """A timer worker: dial the calls whose turn has come."""
        limits = self._limits()
        batch: list[LiveCall] = []
        with self._lock:
            self._timer, self._timer_at = None, float("inf")
            if self._stopped:
                return
            now = self._clock()
            while self._queue and self._pace.ready_at(limits.rate) <= now and len(batch) < MAX_BATCH:
                call_id, live = next(iter(self._queue.items()))
                got = self._calls.activate(live, limits.max_concurrent)
                if got is False:
                    self._blocked = True  # every slot is taken: the next call to end re-arms the queue
                    break
                del self._queue[call_id]
                if got is None:
                    continue  # it ended meanwhile
                self._pace.take(now, limits.rate)
                self._sent[call_id] = now
                batch.append(live)
            self._arm()
        for live in batch:  # in their order; the next turn, on another worker, need not wait for them
            self._place(live)
