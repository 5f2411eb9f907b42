"""The engine honours what a carrier declares in its ``Capabilities``:
``Listen`` reaches only carriers that do not script their speech, and
``StopListening`` only carriers that have recognition to stop."""

from __future__ import annotations

from typing import Any

import pytest

from voicecalld.calls import CallRecord, Listen, StopListening
from voicecalld.providers.base import Capabilities
from voicecalld.providers.mock import MockProvider


class RecordingMock(MockProvider):
    asked: list[str]

    def start_listening(self, record: CallRecord, turn: int | None) -> None:
        self.asked.append("start_listening")
        super().start_listening(record, turn)

    def stop_listening(self, record: CallRecord) -> None:
        self.asked.append("stop_listening")
        super().stop_listening(record)


class ScriptingMock(RecordingMock):
    capabilities = Capabilities(max_message_chars=3000, scripts_speech=True, stops_listening=False)


@pytest.mark.parametrize(("carrier", "expected"), [
    (RecordingMock, ["start_listening", "stop_listening"]),
    (ScriptingMock, []),
])
def test_listening_actions_follow_the_carriers_capabilities(engine: Any, carrier: type[RecordingMock],
                                                          expected: list[str]) -> None:
    engine.provider.__class__ = carrier  # same state, the capabilities of another carrier
    engine.provider.asked = []
    call_id = engine.manager.initiate("hello", mode="conversation")["callId"]
    engine.wait_state(call_id, "listening")
    engine.provider.asked.clear()
    live = engine.manager.calls.get(call_id)
    # The actions a played utterance and a goodbye produce, applied as the
    # engine applies any step's actions.
    engine.manager._interpreter.run(live, lambda call: [Listen(1), StopListening()])
    assert engine.provider.asked == expected
