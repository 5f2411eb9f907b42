"""An in-process engine (manager + mock carrier + real timer wheel + real
store) for tests of the call engine without the daemon around it."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from daemon import merge

from voicecalld import config as cfgmod
from voicecalld.events import EventBus
from voicecalld.manager import CallManager
from voicecalld.providers.mock import STATE_FILE, MockProvider
from voicecalld.store import Store
from voicecalld.testing._wait import wait_until
from voicecalld.timers import TimerService
from voicecalld.workerpool import WorkerPool

#: Fast mock timings so flows finish in a fraction of a second.
FAST: dict[str, Any] = {
    "toNumber": "+15550001111",
    "fromNumber": "+15550009999",
    "mock": {"answerDelayMs": 40, "msPerChar": 1, "replyDelayMs": 10},
    "outbound": {"notifyHangupDelaySec": 0.05},
}


class Engine:
    def __init__(self, store_dir: str, store_class: type[Store] = Store, **overrides: Any) -> None:
        self.config = cfgmod.from_mapping(merge(FAST, overrides), env={})
        self.pool = WorkerPool(8)
        self.timers = TimerService(self.pool, tick=0.005)
        self.timers.start()
        self.store = store_class(store_dir)
        self.bus = EventBus()
        self.events: list[dict[str, Any]] = []
        self.bus.subscribe(self.events.append)
        self.provider = MockProvider(self.timers, os.path.join(store_dir, STATE_FILE))
        self.manager = CallManager(self.config, self.provider, self.store, self.timers, self.bus)

    def crash(self) -> None:
        """Stop everything at once, as kill -9 would: no hangups, no final log lines."""
        self.close()

    def close(self) -> None:
        self.timers.stop()
        self.pool.stop()
        self.store.close()

    def wait(self, predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
        return wait_until(predicate, timeout, what)

    def wait_state(self, call_id: str, *states: str, timeout: float = 5.0) -> dict[str, Any]:
        return self.wait(lambda: (r := self.manager.status(call_id))["state"] in states and r,
                         timeout, f"call {call_id} to reach {states}")

    def event_names(self, call_id: str) -> list[str]:
        return [e["event"] for e in list(self.events) if e["callId"] == call_id]
