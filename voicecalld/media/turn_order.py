"""Final transcripts in the order their audio was committed: the
Realtime service links turns with ``previous_item_id``, and completions
for different turns may arrive out of order. I/O-free; the caller passes
the clock.
"""

from __future__ import annotations

import logging

log = logging.getLogger("voicecalld.media.realtime_stt")

ORDER_WAIT = 10.0             # a turn whose transcript never comes stops blocking later ones


class TurnOrder:
    """Releases final transcripts in commit order. I/O-free; the caller
    passes the clock."""

    def __init__(self) -> None:
        self._order: list[str] = []            # committed item ids, in audio order
        self._done: dict[str, str | None] = {}  # item id -> transcript (None: failed)
        self._since: dict[str, float] = {}     # when an item started blocking the head

    def committed(self, item_id: str, previous_item_id: str | None) -> None:
        if item_id in self._order:
            return
        if previous_item_id in self._order:
            self._order.insert(self._order.index(previous_item_id) + 1, item_id)
        else:
            self._order.append(item_id)

    def completed(self, item_id: str, text: str | None, now: float) -> list[str]:
        if item_id not in self._order:
            self._order.append(item_id)  # completion before its commit event: trust arrival order
        self._done[item_id] = text
        return self.release(now)

    def release(self, now: float) -> list[str]:
        out: list[str] = []
        while self._order:
            head = self._order[0]
            if head in self._done:
                self._order.pop(0)
                self._since.pop(head, None)
                text = self._done.pop(head)
                if text:
                    out.append(text)
                continue
            started = self._since.setdefault(head, now)
            if now - started < ORDER_WAIT or not any(i in self._done for i in self._order):
                break
            log.warning("transcript for turn %s never arrived; releasing later turns", head)
            self._order.pop(0)
            self._since.pop(head, None)
        return out

    @property
    def pending(self) -> int:
        return len(self._order)
