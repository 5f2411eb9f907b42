"""A fixed number of threads draining a bounded queue of tasks.

The timer service hands due callbacks to one, so a slow callback cannot
delay other deadlines; the auto-responder runs its LLM requests on
another, so they never hold up the thread that reported the caller's turn.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: A task; what it returns is ignored.
Task = Callable[[], object]


class WorkerPool:
    """A fixed number of threads draining a bounded queue."""

    def __init__(self, workers: int = 8, queue_size: int = 1024, name: str = "worker") -> None:
        self._queue: queue.Queue[Task | None] = queue.Queue(queue_size)
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit_nowait(self, fn: Task) -> bool:
        """Queue ``fn``; False if the queue is full (the caller decides what then)."""
        try:
            self._queue.put_nowait(fn)
            return True
        except queue.Full:
            return False

    def submit(self, fn: Task, timeout: float | None = None) -> None:
        """Queue ``fn``, waiting for room; raises ``queue.Full`` on timeout."""
        self._queue.put(fn, timeout=timeout)

    def _run(self) -> None:
        while True:
            fn = self._queue.get()
            if fn is None:
                return
            try:
                fn()
            except Exception:
                log.exception("background task failed")

    def stop(self, timeout: float = 5.0) -> None:
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
