"""The fake Twilio's answering-machine detection
(https://www.twilio.com/docs/voice/answering-machine-detection).

Synchronous detection (``MachineDetection`` without ``AsyncAmd``) holds the
first TwiML fetch until the verdict (``_twilio_driver``); with
``AsyncAmd=true`` the TwiML runs at once while detection listens on a
thread of its own and posts the verdict to ``AsyncAmdStatusCallback``
(``start_async_amd``). ``DetectMessageEnd`` gives a machine's verdict only
once its greeting ended (the beep).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from ._twilio_model import FakeCall


class _Webhooks(Protocol):
    def deliver(self, call: FakeCall, kind: str, url: str, method: str, params: list[tuple[str, str]]) -> Any: ...


class FakeTwilio(Protocol):
    """What detection uses of ``fake_twilio.FakeTwilio``."""

    @property
    def _webhooks(self) -> _Webhooks: ...

    def _start_thread(self, target: Callable[[], None], name: str) -> Any: ...

    def _internal_error(self, call: FakeCall, exc: BaseException, trace: str) -> None: ...


def amd_result(call: FakeCall) -> str:
    """The ``AnsweredBy`` Twilio reports for ``call``'s callee."""
    callee = call.callee
    if not callee.machine:
        return callee.answered_by or "human"
    if callee.answered_by:
        return callee.answered_by
    # Enable reports as soon as a machine is recognised; DetectMessageEnd
    # waits for the greeting to end and reports how it ended.
    return "machine_start" if call.machine_detection == "Enable" else "machine_end_beep"


def start_async_amd(fake: FakeTwilio, call: FakeCall) -> None:
    """``AsyncAmd=true``: listen on a thread of its own, then post the verdict."""
    if call.callee.machine:
        call.greeting_started = time.time()
    fake._start_thread(lambda: _async_amd(fake, call), f"fake-twilio-amd-{call.sid}")


def _async_amd(fake: FakeTwilio, call: FakeCall) -> None:
    callee = call.callee
    try:
        started = time.monotonic()
        at_beep = callee.machine and call.machine_detection == "DetectMessageEnd"
        if call.wait_ended(callee.greeting if at_beep else callee.verdict_after):
            return  # the call ended before detection knew
        if at_beep:
            call.beeped = time.time()
        call.answered_by = verdict = amd_result(call)
        callback = call.amd_callback
        assert callback is not None
        params = [("AccountSid", call.account_sid), ("CallSid", call.sid), ("AnsweredBy", verdict),
                  ("MachineDetectionDuration", str(round((time.monotonic() - started) * 1000)))]
        fake._webhooks.deliver(call, "amd", callback.url, callback.method, params)
    except Exception as exc:  # noqa: BLE001 - a bug in the fake itself: stop() re-raises it
        fake._internal_error(call, exc, traceback.format_exc())
