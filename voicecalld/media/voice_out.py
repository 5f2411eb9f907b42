"""The realtime model's audio to the carrier: 20 ms µ-law frames paced
against the monotonic clock, as the ``player`` paces synthesized speech,
with a ``mark`` at least every 200 ms of audio and after each item's last
frame.

The model sends its audio faster than real time, in deltas of any size;
they queue here per conversation item and go out at the rate the caller
hears them, so a barge-in (``clear``) has little to throw away at the
carrier and the marks say closely what was heard (``HeardAudio``), which is
what a truncation needs. A frame is due at ``t0 + n * 20 ms`` minus a small
lead; when the model falls behind, the schedule restarts rather than
bursting.

Locks: ``_lock`` guards the queue and the marks and is never held while
sending or calling back; ``_send_lock`` keeps a frame of audio a barge-in
dropped from going out after its ``clear``.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .framing import Framing
from .mulaw import SILENCE
from .player import FRAME_BYTES, FRAME_SECONDS, LEAD_FRAMES, REANCHOR_AFTER
from .realtime_voice_core import HeardAudio

log = logging.getLogger(__name__)

MARK_EVERY = 10  # frames: a mark at least every 200 ms of audio

Send = Callable[[str], None]
Heard = Callable[[], None]


@dataclass
class _Segment:
    item_id: str
    audio: bytearray = field(default_factory=bytearray)
    pos: int = 0
    ended: bool = False
    on_heard: Heard | None = None  # once its last mark is echoed (or a barge-in drops it)
    frames: int = 0


@dataclass(frozen=True)
class Cleared:
    """What a barge-in stopped: the item that was playing (its id and the ms
    the caller heard of it), and the callbacks of items that will never be
    heard to their end."""

    item_id: str | None
    heard_ms: int
    dropped: list[Heard]


class Pacer:
    def __init__(self, send: Send, framing: Framing, *, name: str = "",
                 on_first_frame: Callable[[str], None] | None = None,
                 lateness: collections.deque[float] | None = None) -> None:
        self._send = send
        self._framing = framing
        self._on_first_frame = on_first_frame
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._send_lock = threading.Lock()
        self._queue: collections.deque[_Segment] = collections.deque()
        self._heard = HeardAudio()
        self._last_marks: dict[str, Heard | None] = {}  # the mark after an item's last frame -> its callback
        self._playing: str | None = None  # the item whose audio went out last
        self._names = itertools.count(1)
        self._generation = 0
        self._closed = False
        self._t0 = 0.0
        self._frames = 0
        self.frames_sent = 0
        self.lateness: collections.deque[float] = lateness if lateness is not None else collections.deque(
            maxlen=10_000)
        self._thread = threading.Thread(target=self._run, name=f"voice-out-{name}", daemon=True)
        self._thread.start()

    # -- from the session --

    def audio(self, item_id: str, data: bytes) -> None:
        """Queue audio of ``item_id`` after what is queued."""
        with self._ready:
            tail = self._queue[-1] if self._queue else None
            if tail is None or tail.item_id != item_id or tail.ended:
                tail = _Segment(item_id)
                self._queue.append(tail)
            tail.audio += data
            self._ready.notify()

    def end(self, item_id: str, on_heard: Heard | None = None) -> None:
        """``item_id`` has all its audio; ``on_heard`` runs once the caller
        has heard it to its end (at once if it had none, or it was dropped)."""
        with self._ready:
            segment = next((s for s in self._queue if s.item_id == item_id and not s.ended), None)
            if segment is not None:
                segment.ended = True
                segment.on_heard = on_heard
                self._ready.notify()
                return
        if on_heard is not None:
            on_heard()

    @property
    def speaking(self) -> bool:
        """Audio is queued, or sent and not yet heard."""
        with self._lock:
            return bool(self._queue) or self._heard.outstanding > 0

    def heard_ms(self, item_id: str) -> int:
        with self._lock:
            return self._heard.heard_ms(item_id)

    def sent_ms(self, item_id: str) -> int:
        with self._lock:
            return self._heard.sent_ms(item_id)

    def clear(self) -> Cleared | None:
        """Barge-in: drop the queue, send ``clear``; None if nothing was
        being said."""
        with self._send_lock:
            with self._lock:
                if not self._queue and self._heard.outstanding == 0:
                    return None
                self._generation += 1
                dropped = [s.on_heard for s in self._queue if s.on_heard is not None]
                self._queue.clear()
                # Every mark outstanding comes back at once, heard or not.
                self._heard.cleared()
                dropped += [callback for callback in self._last_marks.values() if callback is not None]
                self._last_marks.clear()
                item = self._playing
                heard = self._heard.heard_ms(item) if item is not None else 0
                self._frames = 0
            self._send(self._framing.clear())
        return Cleared(item, heard, dropped)

    def mark_echoed(self, name: str) -> None:
        with self._lock:
            info = self._heard.echoed(name)
            callback = self._last_marks.pop(name, None) if info is not None and info.last else None
        if callback is not None:
            callback()

    def close(self) -> None:
        with self._send_lock, self._ready:
            self._closed = True
            self._generation += 1
            self._queue.clear()
            self._ready.notify()
        self._thread.join(5)

    # -- the pacing thread --

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._closed and not self._due_work():
                    self._ready.wait()
                if self._closed:
                    return
                segment = self._queue[0]
                generation = self._generation
                left = len(segment.audio) - segment.pos
                if left >= FRAME_BYTES or (left > 0 and segment.ended):
                    frame = bytes(segment.audio[segment.pos:segment.pos + FRAME_BYTES])
                    segment.pos += len(frame)
                    first = segment.frames == 0
                    segment.frames += 1
                    finish = False
                else:
                    frame, first, finish = b"", False, True
                    self._queue.popleft()
            if finish:
                self._finish(segment, generation)
                continue
            if len(frame) < FRAME_BYTES:
                frame += bytes([SILENCE]) * (FRAME_BYTES - len(frame))
            self._send_frame(segment, frame, generation, first)

    def _due_work(self) -> bool:
        """Under the lock: the head segment has a frame to send, or has ended."""
        if not self._queue:
            return False
        head = self._queue[0]
        return len(head.audio) - head.pos >= FRAME_BYTES or head.ended

    def _send_frame(self, segment: _Segment, frame: bytes, generation: int, first: bool) -> None:
        if self._frames and time.monotonic() > self._due(self._frames) + REANCHOR_AFTER * FRAME_SECONDS:
            self._frames = 0  # the line went quiet (or the model fell behind): a new schedule
        if self._frames == 0:
            self._t0 = time.monotonic()
        due = self._due(self._frames)
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
        message = self._framing.media(frame)
        with self._send_lock:
            with self._lock:
                if generation != self._generation:
                    return
                self._heard.sent_audio(segment.item_id, len(frame))
                self._playing = segment.item_id
                mark = None
                if segment.frames % MARK_EVERY == 0:
                    mark = f"rt{next(self._names)}|{segment.item_id}"
                    self._heard.sent_mark(mark, segment.item_id)
            self._send(message)
            if mark is not None:
                self._send(self._framing.mark(mark))
        self.lateness.append(time.monotonic() - due)
        self._frames += 1
        self.frames_sent += 1
        if first and self._on_first_frame is not None:
            self._on_first_frame(segment.item_id)

    def _finish(self, segment: _Segment, generation: int) -> None:
        """The item's last frame went out: a mark after it, whose echo says
        the caller heard it all."""
        with self._send_lock:
            with self._lock:
                if generation != self._generation:
                    return
                if segment.frames == 0:
                    callback = segment.on_heard  # no audio at all: nothing to wait for
                    mark = None
                else:
                    callback = None
                    mark = f"rt{next(self._names)}|{segment.item_id}"
                    self._heard.sent_mark(mark, segment.item_id, last=True)
                    self._last_marks[mark] = segment.on_heard
            if mark is not None:
                self._send(self._framing.mark(mark))
        if callback is not None:
            callback()

    def _due(self, n: int) -> float:
        return self._t0 + max(0, n - LEAD_FRAMES) * FRAME_SECONDS
