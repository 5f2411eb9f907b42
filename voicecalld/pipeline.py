"""Speaking a reply while it is still being generated.

``SpokenReply`` takes the model's text as it streams in, cuts it into
sentences (``sentences``), cleans each for speech (``chat.for_speech``) and
hands it to the call as soon as it is complete:

* on a call that speaks over a media stream, every sentence at once, as
  its own utterance: the player synthesizes and queues them in order, so
  the first plays while the model is still writing the rest;
* where the carrier speaks (no stream), the first sentence at once and the
  rest as one more utterance once the reply is complete (each carrier
  utterance costs a round trip to the carrier, and its voice pauses).

The sentences of one reply go on one line of the transcript (``joins``).
A reply stops early, dropping what was not yet handed over, when the caller
barges in or speaks again, or the call ends (``stop``); what was already
said stays said. Tool calls (``hang_up``, ``transfer_call``) come at the
end, after the text before them (``finish``).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from . import chat
from .chat_stream import ThinkFilter
from .errors import NotConnected, ProviderError, VoiceCallError
from .sentences import SentenceCutter

if TYPE_CHECKING:  # pragma: no cover
    from .manager import CallManager

log = logging.getLogger("voicecalld.responder")


class SpokenReply:
    def __init__(self, manager: CallManager, call_id: str, *, streamed: bool,
                 limit: int = chat.MAX_SPOKEN_CHARS) -> None:
        self.manager = manager
        self.call_id = call_id
        self.streamed = streamed
        self.limit = limit
        self._think = ThinkFilter()
        self._cutter = SentenceCutter()
        self._rest: list[str] = []
        self._lock = threading.Lock()
        self._stopped: str | None = None
        #: Utterances handed to the call, and their characters.
        self.said = 0
        self.chars = 0

    # -- any thread --

    def stop(self, why: str) -> bool:
        """Say nothing more (barge-in, the caller spoke, the call ended).
        False if it was stopped already."""
        with self._lock:
            if self._stopped is not None:
                return False
            self._stopped = why
            return True

    @property
    def stopped(self) -> str | None:
        return self._stopped

    # -- the responder's thread --

    def text(self, piece: str) -> int:
        """Streamed text; the number of sentences handed to the call."""
        before = self.said
        for sentence in self._cutter.feed(self._think.feed(piece)):
            self._sentence(sentence)
        return self.said - before

    def finish(self, tool: chat.ToolCall | None) -> str:
        """The reply is complete: what is left is said, then the tool runs.
        Returns what happened: ``said``, ``goodbye``, ``transfer`` or
        ``empty`` (nothing to say)."""
        tail = self._think.flush()
        for sentence in self._cutter.feed(tail):
            self._sentence(sentence)
        last = self._cutter.flush()
        if last:
            self._sentence(last)
        rest = " ".join(self._rest)
        self._rest = []
        if tool is not None and tool.name == chat.HANG_UP:
            self._goodbye(rest or ("" if self.said else tool.goodbye or chat.DEFAULT_GOODBYE))
            return "goodbye"
        if rest:
            self._speak(rest)
        if tool is not None and tool.name == chat.TRANSFER_CALL:
            self._transfer(tool)
            return "transfer"
        return "said" if self.said else "empty"

    def _sentence(self, raw: str) -> None:
        text = chat.for_speech(raw)
        if not text or self._stopped is not None:
            return
        if self.chars + len(text) > self.limit:
            self.stop("the reply is too long to speak")
            log.info("call %s: the rest of a long reply is not spoken", self.call_id)
            return
        self.chars += len(text) + 1
        if self.streamed or not self.said:
            self._speak(text)
        else:
            self._rest.append(text)

    def _speak(self, text: str) -> None:
        if self._stopped is not None:
            return
        try:
            self.manager.speak(self.call_id, text, listen=True, joins=self.said > 0)
            self.said += 1
        except NotConnected:
            self.stop("the call ended")
            log.debug("call %s: ended before the reply could be spoken", self.call_id)
        except ProviderError as exc:
            log.warning("call %s: the carrier did not speak the reply: %s", self.call_id, exc.message)
        except VoiceCallError as exc:
            log.debug("call %s: reply not spoken: %s", self.call_id, exc.message)

    def _goodbye(self, text: str) -> None:
        """hang_up: with words still to say, they are the goodbye; when the
        reply was said already, the call ends once it has played."""
        if self._stopped is not None:
            return
        log.info("call %s: the model ends the call", self.call_id)
        if not text:
            self._end_after_playing()
            return
        try:
            self.manager.say_goodbye(self.call_id, text, joins=self.said > 0)
            self.said += 1
        except NotConnected:
            log.debug("call %s: ended before the goodbye could be spoken", self.call_id)
        except ProviderError as exc:
            log.warning("call %s: the carrier did not speak the goodbye: %s", self.call_id, exc.message)
            self._end()
        except VoiceCallError as exc:
            log.debug("call %s: goodbye not spoken: %s", self.call_id, exc.message)

    def _end_after_playing(self) -> None:
        try:
            self.manager.hang_up_after_speech(self.call_id)
        except NotConnected:
            log.debug("call %s: ended before the hang-up", self.call_id)
        except VoiceCallError as exc:
            log.warning("call %s: hang-up after the reply failed: %s", self.call_id, exc.message)

    def _end(self) -> None:
        try:
            self.manager.end(self.call_id)
        except VoiceCallError as exc:
            log.warning("call %s: hang-up after the goodbye failed: %s", self.call_id, exc.message)

    def _transfer(self, tool: chat.ToolCall) -> None:
        if self._stopped is not None:
            return
        log.info("call %s: the model transfers the call", self.call_id)
        try:
            self.manager.transfer(self.call_id, tool.to, tool.message or None)
        except VoiceCallError as exc:
            # The manager logged why; the model hears of it with the caller's next words.
            log.warning("call %s: the model's transfer did not happen: %s", self.call_id, exc.message)
