"""Per-key serial work on a small, bounded thread pool.

Carriers that report by webhook want a quick 2xx and retry otherwise, but
acting on an event (answer, speak, hang up) means REST calls that may be
slow. ``KeyedWorkQueue`` lets the webhook handler hand an event off and
answer at once: tasks with the same key (one carrier call) run one at a
time in submission order, so a call's events keep their order, while tasks
of different calls run in parallel on up to ``workers`` threads.

Everything is bounded: the number of threads, and the number of queued
tasks (``submit`` refuses beyond it, so the carrier's retry can try again
later instead of the daemon's memory growing). Threads start on demand and
exit after ``idle`` seconds without work. A key that becomes ready never
waits behind another key's task while a thread could still be started for
it: an idle thread is only counted on for as many ready keys as there are
idle threads.

``stop`` either drops what is queued (the tasks can be redone: a retry
will come) or, with ``drain``, runs it first within the time given (the
tasks were acknowledged to someone who will not send them again).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

Task = Callable[[], None]


class KeyedWorkQueue:
    def __init__(self, name: str, *, workers: int = 8, max_pending: int = 2048, idle: float = 30.0) -> None:
        if workers < 1 or max_pending < 1:
            raise ValueError("workers and max_pending must be positive")
        self.name = name
        self.workers = workers
        self.max_pending = max_pending
        self.idle = idle
        self._cond = threading.Condition()
        self._queues: dict[str, collections.deque[Task]] = {}
        #: Keys with queued tasks and no thread working on them, oldest first.
        self._ready: collections.deque[str] = collections.deque()
        self._pending = 0
        self._threads: set[threading.Thread] = set()
        self._idle_threads = 0
        self._stopping = False
        self._draining = False  # stopping, but queued tasks still run
        self._seq = 0

    @property
    def pending(self) -> int:
        with self._cond:
            return self._pending

    def submit(self, key: str, task: Task) -> bool:
        """Queue ``task`` behind the other tasks of ``key``. False (and
        nothing queued) when stopping or when ``max_pending`` tasks wait."""
        with self._cond:
            if self._stopping or self._pending >= self.max_pending:
                return False
            queue = self._queues.get(key)
            if queue is None:
                # No thread owns this key: make it ready for the next free one.
                queue = self._queues[key] = collections.deque()
                self._ready.append(key)
                self._wake_or_spawn()
            queue.append(task)
            self._pending += 1
            return True

    def _wake_or_spawn(self) -> None:
        """Under the lock, after a key was added to ``_ready``: make sure a
        thread will take it. A notified idle thread only leaves the count of
        idle threads once it runs again, so while ready keys outnumber idle
        threads the ones already notified are spoken for: start another."""
        if len(self._ready) <= self._idle_threads:
            self._cond.notify()
        elif len(self._threads) < self.workers:
            self._spawn()
        # else: every thread is busy; the key waits in _ready for the first free one.

    def _spawn(self) -> None:
        self._seq += 1
        thread = threading.Thread(target=self._run, name=f"{self.name}-{self._seq}", daemon=True)
        self._threads.add(thread)
        thread.start()

    def _next_key(self) -> str | None:
        """Under the lock: a ready key, or None when the thread should exit."""
        deadline = time.monotonic() + self.idle
        while not self._ready:
            remaining = deadline - time.monotonic()
            if self._stopping or remaining <= 0:
                return None
            self._idle_threads += 1
            try:
                self._cond.wait(remaining)
            finally:
                self._idle_threads -= 1
        return self._ready.popleft()

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                key = self._next_key()
                if key is None:
                    self._threads.discard(me)
                    self._cond.notify_all()  # stop() may be waiting for the last thread
                    return
            self._drain(key)

    def _drain(self, key: str) -> None:
        """Run the key's tasks until its queue is empty; this thread owns the key meanwhile."""
        while True:
            with self._cond:
                queue = self._queues.get(key)
                if not queue or (self._stopping and not self._draining):
                    # Release the key: the next submit makes it ready again.
                    dropped = len(queue) if queue else 0
                    self._pending -= dropped
                    self._queues.pop(key, None)
                    return
                task = queue.popleft()
                self._pending -= 1
            try:
                task()
            except Exception:
                log.exception("%s: task for %s failed", self.name, key)

    def stop(self, timeout: float = 5.0, *, drain: bool = False) -> bool:
        """Refuse new tasks and end the threads within ``timeout`` seconds;
        True if every thread exited in time.

        Without ``drain`` queued tasks are dropped and running ones may
        finish. With ``drain`` queued tasks run first, as long as the
        time allows; whatever is still queued at the deadline is dropped
        (and logged)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._stopping = True
            self._draining = drain
            if drain:
                # Ready keys wait for a free thread; start the threads the
                # bound allows so they do not wait behind each other.
                for _ in range(min(self.workers - len(self._threads), len(self._ready) - self._idle_threads)):
                    self._spawn()
            self._cond.notify_all()
            while self._threads and self._draining:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._draining and self._pending:
                log.warning("%s: %d queued task(s) dropped at shutdown (no time left to run them)", self.name,
                            self._pending)
            self._draining = False
            self._drop_queued()
            self._cond.notify_all()
            while self._threads:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("%s: %d worker(s) still busy at shutdown", self.name, len(self._threads))
                    return False
                self._cond.wait(remaining)
        return True

    def _drop_queued(self) -> None:
        """Under the lock: forget every queued task (running ones go on)."""
        self._ready.clear()
        for queue in self._queues.values():
            self._pending -= len(queue)
            queue.clear()
