"""Deadlines: a hashed timing wheel, driven by one thread, whose callbacks
run on a bounded worker pool.

``TimerWheel`` is the pure data structure (Varghese & Lauck's scheme 6): a
ring of slots, each a dict of timers, indexed by deadline tick modulo the
ring size. Scheduling and cancelling are O(1) dict operations; advancing
visits one slot per elapsed tick. It knows nothing of clocks or threads,
so tests and benchmarks drive it tick by tick.

``TimerService`` is the shell: a thread that advances the wheel against
``time.monotonic`` and hands due callbacks to a ``workerpool.WorkerPool``. Callbacks
never run on the wheel thread, so a slow one cannot delay other deadlines.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from .workerpool import WorkerPool

__all__ = ["Callback", "Timer", "TimerService", "TimerWheel"]

log = logging.getLogger(__name__)

Callback = Callable[[], Any]


class Timer:
    """A handle to one scheduled callback."""

    __slots__ = ("deadline", "callback", "bucket", "active")

    def __init__(self, deadline: int, callback: Callback, bucket: dict[Timer, None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.bucket = bucket
        self.active = True

    def __repr__(self) -> str:
        return f"<Timer tick={self.deadline} active={self.active}>"


#: One revolution of the default ring at the default 10 ms tick is about 5.5
#: minutes, longer than the default maximum call duration, so most timers
#: fire on the first visit to their slot instead of being rescanned.
DEFAULT_SLOTS = 1 << 15


class TimerWheel:
    """Hashed timing wheel over integer ticks. Not thread-safe."""

    def __init__(self, slots: int = DEFAULT_SLOTS, start_tick: int = 0) -> None:
        if slots < 1:
            raise ValueError("slots must be positive")
        size = 1 << (slots - 1).bit_length()  # a power of two, so a mask replaces modulo
        self._mask = size - 1
        # Buckets are created on first use: a mostly idle daemon keeps a
        # list of None instead of tens of thousands of empty dicts. Each
        # bucket maps timer -> None: an insertion-ordered set.
        self._slots: list[dict[Timer, None] | None] = [None] * size
        self.now = start_tick
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def schedule(self, ticks: int, callback: Callback) -> Timer:
        """Run ``callback`` when the wheel reaches ``now + ticks`` (at least one tick away)."""
        deadline = self.now + (ticks if ticks > 0 else 1)
        index = deadline & self._mask
        bucket = self._slots[index]
        if bucket is None:
            bucket = self._slots[index] = {}
        timer = Timer(deadline, callback, bucket)
        bucket[timer] = None
        self._count += 1
        return timer

    def cancel(self, timer: Timer) -> bool:
        """True if the timer was pending and will now never fire."""
        if not timer.active:
            return False
        timer.active = False
        del timer.bucket[timer]
        self._count -= 1
        return True

    def advance(self, to_tick: int) -> list[Callback]:
        """Move to ``to_tick``; return the callbacks now due, earliest first."""
        now = self.now
        if to_tick <= now:
            return []
        slots, mask = self._slots, self._mask
        due: list[Timer] = []
        steps = min(to_tick - now, mask + 1)
        for tick in range(now + 1, now + steps + 1):
            bucket = slots[tick & mask]
            if not bucket:
                continue
            fired = [t for t in bucket if t.deadline <= to_tick]
            if len(fired) == len(bucket):
                bucket.clear()
            else:
                for t in fired:
                    del bucket[t]
            for t in fired:
                t.active = False
            due += fired
        self.now = to_tick
        self._count -= len(due)
        if steps > 1 and len(due) > 1:
            # Equal deadlines share a bucket, which keeps insertion order,
            # and the sort is stable: ties fire in scheduling order.
            due.sort(key=lambda t: t.deadline)
        return [t.callback for t in due]


class TimerService:
    """The wheel on its own thread. Thread-safe ``call_later``/``cancel``."""

    def __init__(self, pool: WorkerPool, tick: float = 0.01, slots: int = DEFAULT_SLOTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tick = tick
        self._pool = pool
        self._clock = clock
        self._origin = clock()
        self._wheel = TimerWheel(slots)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._overflow: collections.deque[Callback] = collections.deque()
        self._saturated = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="timer-wheel", daemon=True)
        #: Monotonic time of the wheel's last turn; the watchdog checks it.
        self.heartbeat = clock()

    def start(self) -> None:
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        callback: Callback = (lambda: fn(*args)) if args else fn
        with self._lock:
            # Ticks are counted from the wheel's own position, which may lag
            # the clock by one tick; round up so a timer never fires early.
            elapsed = self._clock() - self._origin
            target = math.ceil((elapsed + delay) / self.tick)
            timer = self._wheel.schedule(target - self._wheel.now, callback)
            if len(self._wheel) == 1:
                self._wake.notify()
            return timer

    def cancel(self, timer: Timer | None) -> bool:
        if timer is None:
            return False
        with self._lock:
            return self._wheel.cancel(timer)

    def __len__(self) -> int:
        with self._lock:
            return len(self._wheel)

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                now = self._clock()
                self.heartbeat = now
                due = self._wheel.advance(int((now - self._origin) / self.tick))
            self._dispatch(due)
            with self._lock:
                if self._stopping:
                    return
                if len(self._wheel) == 0 and not self._overflow:
                    # Nothing scheduled: sleep until call_later wakes us, but
                    # still turn now and then so the heartbeat proves liveness.
                    self._wake.wait(0.5)
                else:
                    next_tick = (int((self._clock() - self._origin) / self.tick) + 1) * self.tick
                    self._wake.wait(max(0.0, self._origin + next_tick - self._clock()))

    def _dispatch(self, due: list[Callback]) -> None:
        self._overflow.extend(due)
        while self._overflow:
            if not self._pool.submit_nowait(self._overflow[0]):
                # The pool is saturated: keep the rest for the next turn rather
                # than block the wheel (which would delay every other deadline).
                if not self._saturated:
                    log.warning("worker pool full; deferring %d timer callbacks", len(self._overflow))
                    self._saturated = True
                return
            self._overflow.popleft()
        if self._saturated:
            log.info("worker pool caught up with deferred timer callbacks")
            self._saturated = False

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(5.0)
