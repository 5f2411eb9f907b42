"""Speaking on a media stream: utterances queued in order, synthesized,
sent as 20 ms µ-law frames paced against the monotonic clock, each followed
by a ``mark``; the carrier echoes the mark once the audio before it has
played, and that echo is when the utterance counts as played. The frames
themselves are the carrier's (its ``Framing`` builds them).

Pacing: frame *n* of a continuous run is due at ``t0 + n * 20 ms`` (minus a
small constant lead so the far end never starves), computed from the
clock, not by adding sleeps, so there is no drift. If synthesis falls behind
real time, the schedule is re-anchored at the moment audio is available
again instead of bursting to catch up.

Barge-in: ``interrupt()`` stops the current utterance, drops the queue,
sends ``clear`` (which makes the carrier return pending marks at once) and
reports every utterance that will never play as played, so the call's
bookkeeping stays consistent. It says which utterance the caller was
hearing (the oldest whose audio went out and has not finished playing)
and which were never heard at all, so the transcript can keep only what
was heard.

Utterances queued behind another are synthesized ahead (up to
``PREFETCH`` at a time), so the next sentence of a reply is ready when the
one before it ends, with no pause for the synthesis request.

A failed synthesis request is tried once more (if none of its audio went
out); failing again, the utterance goes to ``on_failed`` with its text, so
the caller can have it said some other way.

Ready audio (DTMF tones, ``play_audio``) queues with the utterances and is
paced the same way, but it is not speech: a barge-in neither cuts it nor
drops it (the far end's voice, an IVR's prompt, must not stop the digits
meant for it), and while it plays there is nothing to interrupt.

Locks: ``_lock`` guards the player's state and is never held while
sending or calling back, because the thread that reads every call's media
takes it (``mark_echoed``). ``_send_lock`` keeps a frame of an interrupted
utterance from going out after its ``clear``; that thread never takes it.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .framing import Framing
from .mulaw import SILENCE

log = logging.getLogger(__name__)

FRAME_BYTES = 160           # 20 ms of 8 kHz µ-law
FRAME_SECONDS = 0.02
LEAD_FRAMES = 3             # audio sent ahead of real time, absorbs network jitter
REANCHOR_AFTER = 2          # frames late before the schedule restarts instead of bursting
PREFETCH = 3                # utterances synthesized ahead of their turn, at most

#: Writes one frame (built by the stream's ``Framing``) to the carrier.
Send = Callable[[str], None]
Synthesize = Callable[[str], Iterable[bytes]]
#: (utterance id, text, why): the utterance could not be synthesized or sent.
Failed = Callable[[str, str, str], None]


@dataclass(frozen=True)
class Interruption:
    """What a barge-in cut: ``heard``, the utterance the caller was
    hearing (None if none had started); ``unheard``, those dropped before
    any of their audio played."""

    heard: str | None
    unheard: tuple[str, ...]


_END = object()


class _Prefetch:
    """One utterance synthesized ahead, on its own thread, into a queue."""

    def __init__(self, synthesize: Synthesize, text: str, name: str) -> None:
        self._chunks: queue.Queue[object] = queue.Queue()
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(synthesize, text), name=f"tts-{name}", daemon=True)
        self._thread.start()

    def _run(self, synthesize: Synthesize, text: str) -> None:
        chunks = None
        try:
            chunks = iter(synthesize(text))
            for chunk in chunks:
                if self._cancelled.is_set():
                    break
                self._chunks.put(chunk)
        except Exception as exc:  # noqa: BLE001 - handed to the player, which reports it
            self._chunks.put(exc)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # a cancelled request's connection is closed, not drained
            self._chunks.put(_END)

    def cancel(self) -> None:
        self._cancelled.set()
        self._chunks.put(_END)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._chunks.get()
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            assert isinstance(item, bytes)
            yield item


class Player:
    def __init__(self, send: Send, framing: Framing, synthesize: Synthesize, *,
                 on_played: Callable[[str], None], on_failed: Failed,
                 name: str = "", clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 lateness: collections.deque[float] | None = None,
                 on_started: Callable[[str], None] | None = None) -> None:
        self._send = send
        self._framing = framing
        self._synthesize = synthesize
        self._on_played = on_played
        self._on_failed = on_failed
        #: Called with an utterance's id as its first frame goes out.
        self._on_started = on_started
        self._name = name
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._queued: list[str] = []        # utterance ids waiting, in order
        self._current: str | None = None
        self._current_started = False       # a frame of the current utterance went out
        self._marks: dict[str, None] = {}   # sent, not yet echoed, in order
        self._prefetched: dict[str, _Prefetch] = {}
        self._audio: dict[str, bytes] = {}  # ready audio (play_audio) by id, until it plays
        self._tones: set[str] = set()       # ids of ready audio queued, playing or awaiting its mark
        self._generation = 0                # bumped by interrupt(); stale work stops
        self._t0 = 0.0
        self._frames = 0
        self._closed = False
        #: Lateness of each frame against its due time (seconds); may be
        #: shared by the players of many calls, for statistics.
        self.lateness: collections.deque[float] = lateness if lateness is not None else collections.deque(
            maxlen=100_000)
        self.frames_sent = 0
        self._thread = threading.Thread(target=self._run, name=f"player-{name}", daemon=True)
        self._thread.start()

    # -- called by the call's bridge --

    def say(self, utterance_id: str, text: str) -> None:
        with self._lock:
            ahead = bool(self._current or self._queued) and len(self._prefetched) < PREFETCH
            self._queued.append(utterance_id)
            if ahead:
                # Something plays before it: synthesize it meanwhile.
                self._prefetched[utterance_id] = _Prefetch(self._synthesize, text, self._name)
        self._queue.put((utterance_id, text))

    def play_audio(self, item_id: str, audio: bytes) -> None:
        """Queue ready µ-law audio (``PHONE_AUDIO``) after what is queued."""
        with self._lock:
            self._queued.append(item_id)
            self._audio[item_id] = audio
            self._tones.add(item_id)
        self._queue.put((item_id, ""))

    @property
    def speaking(self) -> bool:
        """Something is playing, queued, or sent but not yet heard."""
        with self._lock:
            return bool(self._current or self._queued or self._marks)

    def interrupt(self) -> Interruption | None:
        """Barge-in. What was cut, or None if the bot was not speaking."""
        with self._send_lock:
            with self._lock:
                busy = bool(self._current or self._queued or self._marks)
                if not busy or self._current in self._tones or self._marks.keys() & self._tones:
                    return None  # nothing said, or tones playing: no speech to stop
                self._generation += 1
                dropped = [q for q in self._queued if q not in self._tones]
                current = self._current
                if current is not None and current not in self._marks:
                    dropped.insert(0, current)
                # Audio goes out a few frames ahead of real time: the caller
                # hears the oldest utterance still playing; those after it
                # never reached their ear.
                sent = [m for m in self._marks if m not in self._tones]
                if current is not None and self._current_started:
                    sent.append(current)
                heard = sent[0] if sent else None
                unheard = tuple(u for u in sent[1:] + [d for d in dropped if d not in sent])
                self._queued = [q for q in self._queued if q in self._tones]
                self._current = None
                stale = [self._prefetched.pop(d) for d in dropped if d in self._prefetched]
            self._send(self._framing.clear())
        for prefetch in stale:
            prefetch.cancel()
        for utterance_id in dropped:
            self._on_played(utterance_id)
        return Interruption(heard, unheard)

    def mark_echoed(self, name: str) -> None:
        with self._lock:
            if name not in self._marks:
                return
            del self._marks[name]
            tones = name in self._tones
            self._tones.discard(name)
        if not tones:
            self._on_played(name)

    def close(self) -> None:
        with self._send_lock, self._lock:
            self._closed = True
            self._generation += 1
            stale = list(self._prefetched.values())
            self._prefetched.clear()
        for prefetch in stale:
            prefetch.cancel()
        self._queue.put(None)
        self._thread.join(5)

    # -- the player thread --

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            utterance_id, text = item
            with self._lock:
                if self._closed:
                    return
                if utterance_id not in self._queued:
                    continue  # dropped by a barge-in while waiting
                self._queued.remove(utterance_id)
                self._current = utterance_id
                self._current_started = False
                generation = self._generation
            self._speak(utterance_id, text, generation)

    def _speak(self, utterance_id: str, text: str, generation: int) -> None:
        """Play one utterance; a failed attempt that sent nothing is made
        once more (a 429 or 5xx is often over by then)."""
        with self._lock:
            audio = self._audio.pop(utterance_id, None)
        if audio is not None:
            try:
                self._play(utterance_id, text, generation, [audio])
            except Exception as exc:  # noqa: BLE001 - the socket failed: the call's stream is going
                log.warning("audio %s could not be played: %s", utterance_id, exc)
                with self._lock:
                    if self._current == utterance_id:
                        self._current = None
                    self._tones.discard(utterance_id)
            return
        with self._lock:
            ahead: Iterable[bytes] | None = self._prefetched.pop(utterance_id, None)
        for attempt in (1, 2):
            sent = self.frames_sent
            try:
                self._play(utterance_id, text, generation, ahead)
                return
            except Exception as exc:  # noqa: BLE001 - synthesis or socket failure: report, keep the call
                why = str(getattr(exc, "message", exc))
            with self._lock:
                current = self._current == utterance_id and generation == self._generation
            if not current:
                return  # interrupted or closed meanwhile: nothing to report
            if attempt == 1 and self.frames_sent == sent:
                log.info("utterance %s: %s; trying once more", utterance_id, why)
                ahead = None
                continue
            with self._lock:
                self._current = None
            log.warning("utterance %s could not be played: %s", utterance_id, why)
            self._on_failed(utterance_id, text, why)
            return

    def _play(self, utterance_id: str, text: str, generation: int, ready: Iterable[bytes] | None = None) -> None:
        if self._frames and self._clock() > self._due(self._frames) + REANCHOR_AFTER * FRAME_SECONDS:
            # The line went quiet since the last utterance: a new schedule
            # starts with this one's first frame (once its audio exists, so
            # the synthesis request's latency is not counted as lateness).
            self._frames = 0
        pending = b""
        for chunk in self._synthesize(text) if ready is None else ready:
            pending += chunk
            while len(pending) >= FRAME_BYTES:
                if not self._send_frame(pending[:FRAME_BYTES], generation):
                    return
                pending = pending[FRAME_BYTES:]
        if pending:
            tail = pending + bytes([SILENCE]) * (FRAME_BYTES - len(pending))
            if not self._send_frame(tail, generation):
                return
        with self._send_lock:
            with self._lock:
                if generation != self._generation:
                    return
                # Known before it is sent: the echo may come back at once.
                self._marks[utterance_id] = None
                self._current = None
            self._send(self._framing.mark(utterance_id))

    def _anchor(self) -> None:
        self._t0 = self._clock()
        self._frames = 0

    def _due(self, n: int) -> float:
        return self._t0 + max(0, n - LEAD_FRAMES) * FRAME_SECONDS

    def _send_frame(self, frame: bytes, generation: int) -> bool:
        if self._frames == 0:
            self._anchor()
        due = self._due(self._frames)
        now = self._clock()
        if now < due:
            self._sleep(due - now)
        elif now - due > REANCHOR_AFTER * FRAME_SECONDS:
            # Synthesis fell behind: start a new schedule rather than burst.
            self._anchor()
            due = now
        message = self._framing.media(frame)
        with self._send_lock:
            if generation != self._generation:
                return False
            self._send(message)
            first, self._current_started = not self._current_started, True
        if first and self._on_started is not None and self._current is not None \
                and self._current not in self._tones:
            self._on_started(self._current)
        self.lateness.append(self._clock() - due)
        self._frames += 1
        self.frames_sent += 1
        return True
