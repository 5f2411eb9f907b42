"""A one-thread timed-callback runner for the test fakes.

One thread runs every callback in due order (first scheduled first on ties),
so a fake's simulated world happens in a single, reproducible sequence and
webhooks for one call never race each other unless a test asks them to.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

Callback = Callable[[], None]


class Scheduler:
    def __init__(self, name: str) -> None:
        self._name = name
        self._heap: list[tuple[float, int, Callback]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._running = False  # a callback is executing on the scheduler thread
        self._thread: threading.Thread | None = None
        self.errors: list[BaseException] = []  # callback failures, for tests to inspect

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def call_later(self, delay: float, callback: Callback) -> None:
        """Run ``callback`` on the scheduler thread after ``delay`` seconds."""
        self.call_at(time.monotonic() + max(0.0, delay), callback)

    def call_at(self, due: float, callback: Callback) -> None:
        """Run ``callback`` at ``time.monotonic()`` value ``due``. Callers
        that chain happenings (speech queued after speech) pass absolute
        times so equal deadlines keep their scheduling order exactly."""
        with self._cond:
            if self._stopping:
                return  # the fake is shutting down; nothing new happens
            heapq.heappush(self._heap, (due, next(self._seq), callback))
            self._cond.notify()

    @property
    def idle(self) -> bool:
        """True when no callback is pending or running: nothing more happens
        until someone schedules something (a test's positive signal that a
        simulation has come to rest, instead of sleeping and looking)."""
        with self._cond:
            return not self._heap and not self._running

    def stop(self, timeout: float = 10.0) -> None:
        """Drop pending callbacks and join the thread (after the running one)."""
        with self._cond:
            self._stopping = True
            self._heap.clear()
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"{self._name} did not stop within {timeout} s")
            self._thread = None

    def _next(self) -> Callback | None:
        with self._cond:
            while not self._stopping:
                if self._heap:
                    due = self._heap[0][0]
                    wait = due - time.monotonic()
                    if wait <= 0:
                        self._running = True  # under the lock that pops it: idle never flickers
                        return heapq.heappop(self._heap)[2]
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            return None

    def _run(self) -> None:
        while (callback := self._next()) is not None:
            try:
                callback()
            except Exception as exc:
                # Keep the simulated world running; tests see the failure in
                # ``errors`` (FakeTelnyx.stop re-raises the first one).
                log.exception("%s: callback failed", self._name)
                self.errors.append(exc)
            finally:
                with self._cond:
                    self._running = False
