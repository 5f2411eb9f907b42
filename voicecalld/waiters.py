"""A ``continue`` waiting for the callee's reply.

The command's thread blocks on a ``Waiter`` while the call goes on: the
callee's next final transcript resolves it (the manager's ``Deliver``
action), the end of the call fails it, and so does the transcript timeout,
which the timer wheel fires.
"""

from __future__ import annotations

import threading

from .errors import TranscriptTimeout, VoiceCallError
from .timers import Timer, TimerService

#: How long past its timeout a waiter waits for the wheel to fire it: only a
#: stalled wheel needs this, and then no command may block forever.
MARGIN = 5.0


class Waiter:
    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.done = threading.Event()
        self.transcript: str | None = None
        self.error: VoiceCallError | None = None
        self.timer: Timer | None = None

    def resolve(self, transcript: str) -> bool:
        """The callee replied; False if the wait was over already."""
        return self._settle(transcript, None)

    def fail(self, error: VoiceCallError) -> bool:
        return self._settle(None, error)

    def _settle(self, transcript: str | None, error: VoiceCallError | None) -> bool:
        if self.done.is_set():
            return False
        self.transcript, self.error = transcript, error
        self.done.set()
        return True

    def wait(self, timers: TimerService, timeout: float) -> str | None:
        """Block until resolved (the transcript) or failed (raised), at most
        ``timeout`` seconds. The call is still connected after a timeout."""
        self.timer = timers.call_later(timeout, self.time_out, timeout)
        if not self.done.wait(timeout + MARGIN):
            self.time_out(timeout)
        if self.error is not None:
            raise self.error
        return self.transcript

    def time_out(self, timeout: float) -> None:
        self.fail(TranscriptTimeout(
            f"no reply from the callee within {timeout:g} s; the call is still connected: "
            "continue again, or end it", {"callId": self.call_id}))
