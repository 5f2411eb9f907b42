"""Which TwiML document a Twilio call runs next: an I/O-free core.

Twilio runs one TwiML document at a time and only tells us anything when it
moves past a point we marked: the ``<Redirect>`` after the speech, or the
``<Gather>`` action. So every document we hand out carries a fresh *turn
token* in those URLs, and this script remembers which token is current and
which of the bot's utterances that document is saying.

* Twilio coming back with the current token means it finished saying those
  utterances: they are reported ``played`` (this is how the core learns a
  notify message was delivered, and when a turn starts listening).
* A request with any other token belongs to a document that was replaced
  (a REST update raced it): its speech is ignored and nothing moves.
* ``speak`` while a document is still saying something queues the new
  utterance until Twilio comes back, so the call never cuts the bot off;
  otherwise (the call is listening, or idle) the provider updates the live
  call with the new document at once.
* While a webhook for the call is being answered, whatever the manager says
  during it goes into that very answer, not through the REST API.
* DTMF and transfers queue like speech, in order with it (``twilio_control``):
  digits are a ``<Play digits>`` among the speech, and a transfer ends its
  document with the ``<Dial>``; whatever was queued after it waits for the
  next document (the transfer may fail).
"""

from __future__ import annotations

import secrets
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Protocol

from ..calls import Mode, SendDtmf, Speak, StartRecording, Transfer
from . import twilio_control, twilio_media, twiml

#: After the bot's speech the callee is still heard this long (seconds) before
#: Twilio comes back to report the speech finished.
AFTER_SPEECH_TIMEOUT = 1
#: An idle listening <Gather> loops back to the webhook after this much silence,
#: which keeps the call open for as long as an agent needs to decide.
LISTEN_TIMEOUT = 10


def new_token() -> str:
    return secrets.token_urlsafe(9)


class Urls(Protocol):
    def turn(self, kind: str, token: str) -> str:
        """A webhook URL for this call: ``kind`` is gather, played, twiml, connect,
        dial (a transfer's ``<Dial>`` action) or transfer (its target answered)."""

    def stream(self) -> str:
        """The ``wss://`` Media Streams URL."""


@dataclass(frozen=True)
class Style:
    """The configuration a document is built with (read at build time)."""

    voice: str | None = None
    language: str | None = "en-US"
    hangup_delay: float = 3.0
    streaming: bool = False
    dial_timeout: int = 30  # seconds a transfer's <Dial> rings
    recording_channels: str = "dual"


#: What a document does: speak, send digits, start recording (inbound
#: calls), transfer.
Item = Speak | SendDtmf | StartRecording | Transfer


@dataclass(frozen=True)
class Document:
    xml: str
    token: str
    utterances: tuple[str, ...] = ()


@dataclass
class CallScript:
    """One call's TwiML state. Callers hold ``lock`` around every method."""

    call_id: str
    mode: Mode
    sid: str | None = None
    #: Twilio runs our TwiML (the voice URL was fetched): updates are possible.
    fetched: bool = False
    #: Webhooks for this call being answered with TwiML right now.
    answering: int = 0
    queue: list[Item] = field(default_factory=list)
    #: Token of the document Twilio runs now, and other tokens that count as
    #: current (answers given to stale requests).
    token: str | None = None
    aliases: set[str] = field(default_factory=set)
    #: Utterances the current document says, not yet reported played.
    saying: tuple[str, ...] = ()
    #: The current document plays something (speech, digits, a transfer's
    #: dial) Twilio has not come back from: new items wait for it.
    playing: bool = False
    #: Notify: once the message is said, pause and hang up.
    hangup_after: bool = False
    #: The closing Pause/Hangup was handed out: a "completed" now is our own hang-up.
    closing: bool = False
    #: Media streaming failed or ended on this call: listen with <Gather> instead.
    stream_failed: bool = False
    stream_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    #: Documents too long for inline ``Twiml=``, served at their ``twiml`` URL.
    stored: dict[str, str] = field(default_factory=dict)
    #: Highest status-callback SequenceNumber seen.
    sequence: int = -1
    #: hangup() was asked before the call sid was known; the call is over for us.
    hangup_requested: bool = False
    forgotten: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    # -- speaking --

    def add(self, action: Item) -> bool:
        """Queue an utterance (or digits, or a transfer). True means: compose
        and update the live call now; False: a webhook answer or Twilio's
        next request will carry it."""
        self.queue.append(action)
        if isinstance(action, Speak) and action.then == "hangup":
            self.hangup_after = True
        return self.fetched and not self.answering and not self.saying and not self.playing

    def is_current(self, token: str | None) -> bool:
        return token is not None and (token == self.token or token in self.aliases)

    def advance(self, token: str | None) -> tuple[str, ...] | None:
        """Twilio moved past the document with ``token``. Returns the
        utterances it finished saying, or None for a stale token."""
        if not self.is_current(token):
            return None
        played, self.saying = self.saying, ()
        self.playing = False
        return played

    def compose(self, urls: Urls, style: Style) -> Document:
        """The next document: queued speech, else the closing of a notify
        call, else listening. Becomes the current document."""
        token = new_token()
        self.token, self.aliases = token, set()
        self.stored.clear()
        if self.queue:
            items = self._take()
            self.saying = tuple(i.utterance_id for i in items if isinstance(i, Speak))
            self.playing = True
            first = [twiml.start_recording(urls.turn("recording", token), style.recording_channels,
                                           twilio_control.RECORDING_EVENTS)
                     for i in items if isinstance(i, StartRecording)]
            verbs = [twiml.say(i.text, style.voice, style.language) if isinstance(i, Speak)
                     else twiml.play_digits(i.digits) for i in items if isinstance(i, Speak | SendDtmf)]
            if isinstance(items[-1], Transfer):
                return Document(self._transfer(items[-1], first + verbs, urls, style, token), token, self.saying)
            gather = None
            # Digits are not wrapped in a speech <Gather>: the far end's voice
            # (an IVR's prompt) would barge in and cut them off.
            digits = any(isinstance(i, SendDtmf) for i in items)
            if self.mode == Mode.CONVERSATION and not self.hangup_after and not self._streaming(style) and not digits:
                gather = urls.turn("gather", token)
            xml = twiml.prompts(verbs, played_url=urls.turn("played", token), language=style.language,
                                gather_action=gather, gather_timeout=AFTER_SPEECH_TIMEOUT, first=first)
            return Document(xml, token, self.saying)
        self.saying = ()
        self.playing = False
        return Document(self._resting(urls, style, token), token)

    def _take(self) -> list[Item]:
        """The queue up to and including its first transfer; the rest stays."""
        for i, item in enumerate(self.queue):
            if isinstance(item, Transfer):
                items, self.queue = self.queue[:i + 1], self.queue[i + 1:]
                return items
        items, self.queue = self.queue, []
        return items

    @staticmethod
    def _transfer(transfer: Transfer, verbs: list[ET.Element], urls: Urls, style: Style, token: str) -> str:
        """What was queued before it, the message, then the ``<Dial>``."""
        if transfer.message:
            verbs.append(twiml.say(transfer.message, style.voice, style.language))
        verbs.append(twiml.dial(transfer.to, action=urls.turn("dial", token), timeout=style.dial_timeout,
                                answered_url=urls.turn("transfer", token)))
        return twiml.render(verbs)

    def stale_answer(self, urls: Urls, style: Style) -> str:
        """What to answer a request from a replaced document: carry on
        resting (listening, or closing) without touching the current one.
        Its token becomes an alias, so if Twilio does run this answer, its
        next request is not mistaken for a stale one. (Twilio runs one
        document at a time, so this only matters when a REST update and a
        webhook crossed; normally the update wins and this answer is dropped.)"""
        token = new_token()
        self.aliases.add(token)
        return self._resting(urls, style, token)

    def _streaming(self, style: Style) -> bool:
        return style.streaming and not self.stream_failed

    def _resting(self, urls: Urls, style: Style, token: str) -> str:
        if self.hangup_after:
            self.closing = True
            return twiml.pause_then_hangup(style.hangup_delay)
        if self._streaming(style):
            return twilio_media.stream_request(urls.stream(), self.call_id, self.stream_token,
                                               action=urls.turn("connect", token))
        return twiml.listen(urls.turn("gather", token), urls.turn("played", token), LISTEN_TIMEOUT,
                            style.language)

    def update_failed(self, token: str) -> None:
        """A REST update with ``token``'s document failed: nothing is being said."""
        if self.token == token:
            self.saying = ()
            self.playing = False
