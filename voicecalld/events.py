"""Fan-out of call events to subscribers (``events.subscribe`` clients, the
external-agent responder). Publishing never blocks: subscriber callbacks
must only enqueue."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

EventParams = dict[str, Any]
Subscriber = Callable[[EventParams], None]


class Subscription:
    __slots__ = ("callback", "call_id")

    def __init__(self, callback: Subscriber, call_id: str | None) -> None:
        self.callback = callback
        self.call_id = call_id


class EventBus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: tuple[Subscription, ...] = ()

    def subscribe(self, callback: Subscriber, call_id: str | None = None) -> Subscription:
        sub = Subscription(callback, call_id)
        with self._lock:
            self._subs = self._subs + (sub,)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs = tuple(s for s in self._subs if s is not sub)

    def __bool__(self) -> bool:
        return bool(self._subs)

    def publish(self, name: str, call_id: str, call: dict[str, Any], data: dict[str, Any]) -> None:
        params = {"event": name, "callId": call_id, "call": call, "data": data}
        for sub in self._subs:  # a snapshot tuple: safe against concurrent (un)subscribe
            if sub.call_id is None or sub.call_id == call_id:
                try:
                    sub.callback(params)
                except Exception:
                    log.exception("event subscriber failed")
