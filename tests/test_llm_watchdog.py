"""The LLM request watchdog: one thread checks every request in flight each
tick, cancels the overdue ones, and idles (without spinning) otherwise."""

from __future__ import annotations

import threading
import time

from voicecalld.llm_client import TICK, Watchdog

WAIT = 10.0  # seconds any positive signal may take on a loaded machine


class FakeRequest:
    """What the watchdog uses of a ChatRequest: ``overdue`` and ``cancel``."""

    def __init__(self, why: str | None = None) -> None:
        self.why = why
        self.checks: list[float] = []
        self.checked = threading.Condition()
        self.cancelled = threading.Event()
        self.reason: str | None = None

    def overdue(self, now: float) -> str | None:
        with self.checked:
            self.checks.append(time.monotonic())
            self.checked.notify_all()
        return self.why

    def cancel(self, why: str) -> None:
        self.reason = why
        self.cancelled.set()

    def wait_checks(self, count: int) -> list[float]:
        with self.checked:
            assert self.checked.wait_for(lambda: len(self.checks) >= count, WAIT), self.checks
            return list(self.checks)


def test_an_overdue_request_is_cancelled_with_its_reason() -> None:
    watchdog = Watchdog()
    try:
        late = FakeRequest("no reply in time")
        watchdog.watch(late)  # type: ignore[arg-type]
        assert late.cancelled.wait(WAIT)
        assert late.reason == "no reply in time"
    finally:
        watchdog.stop()


def test_checks_come_a_tick_apart_while_a_request_is_open() -> None:
    # It used to leave its wake-up event set while requests were open, so
    # its timed wait returned at once and the thread spun, taking the
    # interpreter lock from every call's media. A loaded machine can only
    # make the checks further apart, never closer.
    watchdog = Watchdog()
    try:
        request = FakeRequest()
        watchdog.watch(request)  # type: ignore[arg-type]
        checks = request.wait_checks(4)
        assert checks[3] - checks[1] >= TICK, checks
        # A second request wakes the thread, and it goes back to ticking.
        other = FakeRequest()
        watchdog.watch(other)  # type: ignore[arg-type]
        later = other.wait_checks(4)
        assert later[3] - later[1] >= TICK, later
    finally:
        watchdog.stop()


def test_a_forgotten_request_is_no_longer_checked() -> None:
    watchdog = Watchdog()
    try:
        gone, kept = FakeRequest(), FakeRequest()
        watchdog.watch(gone)  # type: ignore[arg-type]
        watchdog.watch(kept)  # type: ignore[arg-type]
        gone.wait_checks(1)
        watchdog.forget(gone)  # type: ignore[arg-type]
        seen = len(gone.wait_checks(1))
        kept.wait_checks(len(kept.wait_checks(1)) + 3)  # three more ticks for the one still open
        assert len(gone.checks) <= seen + 1  # at most the pass already under way when it was forgotten
    finally:
        watchdog.stop()
