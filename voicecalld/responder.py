"""The auto-responder: answers what a caller says when no ``continue`` is
waiting for it, on inbound calls and conversation-mode calls.

``responder = "llm"`` sends the conversation to an OpenAI-compatible Chat
Completions endpoint and speaks the reply; the model may call ``hang_up``
to say goodbye and end the call, and, when ``transfer.allowTo`` lists
numbers, ``transfer_call`` to hand the call to one of them (a failed
transfer is logged and the conversation goes on). ``responder = "socket"`` publishes a
``call.turn`` event to ``events.subscribe`` clients and waits for one of
them to speak on the call (``voicecall.speak``); that lets any agent
framework run the conversation over the control socket. Either way, a
reply that fails, times out (``responseTimeoutMs``) or comes back empty
becomes a short apology (``responseApology``), and the call goes on.

Threads: ``on_unclaimed`` runs on whichever thread delivered the transcript
(a webhook request, a media stream, the timer pool). It only records the
turn and hands it to the responder's own bounded worker pool; the HTTP
request and the wait for an agent run there, never under a lock.

One reply at a time per call, built from the call record, which holds
every transcript in order. If the caller speaks again while a reply is
being produced, that reply answers a conversation that has moved on: it is
dropped, and the request is made again with everything said (at most
``MAX_SUPERSEDED`` times in a row, so a noisy line still gets answers).
Replies never overlap or come out of order, and a call that ended
meanwhile gets nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from . import chat
from .calls import TERMINAL
from .chat_stream import BadChunk, StreamedReply
from .errors import NotConnected, ProviderError, VoiceCallError
from .events import EventBus, EventParams
from .llm_client import Cancelled, ChatRequest, ToolsRefused, Unusable, Watchdog
from .pipeline import SpokenReply
from .workerpool import WorkerPool

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config
    from .manager import CallManager

log = logging.getLogger(__name__)

#: A streamed reply that sends nothing for this long (seconds) has stalled.
STALL_SECONDS = 5.0
TURN_EVENT = "call.turn"
_TERMINAL = frozenset(str(s) for s in TERMINAL)
_CLOSING_REMEMBERED = 1024  # calls whose goodbye is playing; no more replies on them
#: Replies thrown away in a row because the caller kept talking; the next is spoken regardless.
MAX_SUPERSEDED = 2


@dataclass(frozen=True)
class Outcome:
    """How producing one reply went. ``kind``: ``say`` (speak ``text``),
    ``goodbye`` (speak ``text``, then hang up), ``transfer`` (say ``text``
    and transfer the call to ``to``), ``done`` (someone else already
    answered, or the call ended), ``spoken`` (the reply was said as it was
    generated), ``superseded`` (the caller spoke again before anything was
    said: ask again), ``failed`` (apologize; ``why`` says why, for the log)."""

    kind: str
    text: str = ""
    why: str = ""
    to: str = ""


class Responder:
    def __init__(self, manager: CallManager, bus: EventBus, workers: int | None = None) -> None:
        self.manager = manager
        self.bus = bus
        self._lock = threading.Lock()
        #: Calls with a reply being produced -> transcripts that arrived since.
        self._busy: dict[str, list[str]] = {}
        self._closing: OrderedDict[str, None] = OrderedDict()
        self._waits: set[threading.Event] = set()
        self._stopping = False
        self._no_tools: set[str] = set()  # base URLs whose server refused the tools parameter
        self._warned_key: object = None
        self._active: dict[str, _Active] = {}  # calls whose reply is streaming
        self._watchdog = Watchdog()
        #: Set by the daemon when calls may have media streams: does this
        #: call speak over one (each sentence its own utterance)?
        self.streamed: Callable[[str], bool] | None = None
        size = workers or max(4, min(64, int(manager.config.maxConcurrentCalls)))
        self._pool = WorkerPool(size, queue_size=1024, name="responder")
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["User-Agent"] = "voicecalld"
        manager.on_unclaimed = self.on_unclaimed
        self.configured(manager.config)  # say so at start-up, not at the first call

    @property
    def config(self) -> Config:
        return self.manager.config  # read at use time: SIGHUP reloads apply to the next turn

    # -- the hook (any thread; must not block) --

    def on_unclaimed(self, call_id: str, text: str) -> None:
        cfg = self.config
        if self._stopping or cfg.responder == "off" or not self.configured(cfg):
            why = "stopping" if self._stopping else "off" if cfg.responder == "off" else "without an API key"
            log.debug("call %s: caller turn left unanswered: the responder is %s", call_id, why)
            return
        with self._lock:
            if call_id in self._closing:
                return
            pending = self._busy.get(call_id)
            if pending is not None:
                pending.append(text)  # answered by the next request, with everything else said
                active = self._active.get(call_id)
                if active is not None:
                    active.caller_spoke()
                return
            self._busy[call_id] = []
        if not self._pool.submit_nowait(lambda: self._serve(call_id)):
            with self._lock:
                self._busy.pop(call_id, None)
            log.warning("call %s: the responder is overloaded; this caller turn goes unanswered", call_id)

    # -- the worker --

    def _serve(self, call_id: str) -> None:
        superseded = 0
        try:
            while not self._stopping:
                record = self._record(call_id)
                if record is None:
                    log.debug("call %s: no automatic reply: the call ended, or is neither inbound nor a "
                              "conversation", call_id)
                    return
                # Built from the record, so it includes every transcript so far.
                if chat.unanswered(record.get("transcript") or []):
                    cfg = self.config
                    started = time.monotonic()
                    outcome = self._produce(call_id, record, cfg, superseded < MAX_SUPERSEDED)
                    again = outcome.kind == "superseded" or (
                        outcome.kind not in ("done", "spoken") and superseded < MAX_SUPERSEDED)
                    with self._lock:
                        newer = bool(self._busy.get(call_id))
                        if newer and again:
                            self._busy[call_id] = []
                    if (newer and again) or outcome.kind == "superseded":
                        # The caller spoke again while the reply was produced: it
                        # answers a conversation that has moved on. Ask again with
                        # everything said (bounded, so a noisy line still gets answers).
                        superseded += 1
                        log.debug("call %s: caller spoke again; asking again with the whole turn", call_id)
                        continue
                    superseded = 0
                    self._deliver(call_id, outcome, cfg)
                    log.debug("call %s: turn answered in %.1f ms", call_id, (time.monotonic() - started) * 1000)
                # Leave only when nothing came in meanwhile, decided under the
                # lock on_unclaimed takes: no transcript can fall in between.
                with self._lock:
                    if not self._busy.get(call_id) or call_id in self._closing:
                        return
                    self._busy[call_id] = []
        finally:
            with self._lock:
                self._busy.pop(call_id, None)

    def _record(self, call_id: str) -> dict[str, Any] | None:
        """The call's record if it is one to answer, else None."""
        try:
            record = self.manager.status(call_id)
        except VoiceCallError:
            return None
        return record if self._answerable(record) else None

    def _produce(self, call_id: str, record: dict[str, Any], cfg: Config, may_supersede: bool) -> Outcome:
        if cfg.responder == "socket":
            return self._ask_agent(call_id, record, cfg)
        if cfg.responder == "llm":
            return self._ask_llm(call_id, record, cfg, may_supersede)
        return Outcome("done")  # switched off by a reload meanwhile

    def _deliver(self, call_id: str, outcome: Outcome, cfg: Config) -> None:
        if outcome.kind == "failed":
            log.warning("call %s: no automatic reply (%s); the caller hears the apology", call_id, outcome.why)
            self._say(call_id, cfg.responseApology)
        elif outcome.kind == "goodbye":
            self._close(call_id)
            log.info("call %s: the model ends the call", call_id)
            self._say(call_id, outcome.text, goodbye=True)
        elif outcome.kind == "say":
            self._say(call_id, outcome.text)
        elif outcome.kind == "transfer":
            self._transfer(call_id, outcome)

    def _close(self, call_id: str) -> None:
        """The call's goodbye is under way: no more replies on it."""
        with self._lock:
            self._closing[call_id] = None
            while len(self._closing) > _CLOSING_REMEMBERED:
                self._closing.popitem(last=False)

    def _transfer(self, call_id: str, outcome: Outcome) -> None:
        log.info("call %s: the model transfers the call", call_id)
        try:
            self.manager.transfer(call_id, outcome.to, outcome.text or None)
        except VoiceCallError as exc:
            # The manager logged why; the model hears of it with the caller's next words.
            log.warning("call %s: the model's transfer did not happen: %s", call_id, exc.message)

    @staticmethod
    def _answerable(record: dict[str, Any]) -> bool:
        if record.get("state") in _TERMINAL:
            return False
        return record.get("direction") == "inbound" or record.get("mode") == "conversation"

    def _say(self, call_id: str, text: str, goodbye: bool = False) -> None:
        try:
            if goodbye:
                self.manager.say_goodbye(call_id, text)
            else:
                self.manager.speak(call_id, text, listen=True)
        except NotConnected:
            log.debug("call %s: ended before the reply could be spoken", call_id)
        except ProviderError as exc:
            log.warning("call %s: the carrier did not speak the reply: %s", call_id, exc.message)
            if goodbye:
                self._end(call_id)
        except VoiceCallError as exc:
            log.debug("call %s: reply not spoken: %s", call_id, exc.message)

    def _end(self, call_id: str) -> None:
        try:
            self.manager.end(call_id)
        except VoiceCallError as exc:
            log.warning("call %s: hang-up after the goodbye failed: %s", call_id, exc.message)

    # -- responder = "llm" --

    def configured(self, cfg: Config) -> bool:
        """False when the LLM responder cannot work: the OpenAI API without a
        key. Warns once per configuration (start-up, and each reload)."""
        if cfg.responder != "llm" or cfg.responseApiKey or cfg.streaming.openaiApiKey:
            return True
        if urlsplit(cfg.responseBaseUrl).hostname != "api.openai.com":
            return True  # a local server may need no key
        if self._warned_key is not cfg:
            self._warned_key = cfg
            # On a real carrier callers would meet silence: a warning. On the
            # mock carrier (first runs, demos, tests) it is just information.
            level = logging.INFO if cfg.provider == "mock" else logging.WARNING
            log.log(level, "automatic replies are off: responder llm needs an API key for %s (responseApiKey or "
                    "OPENAI_API_KEY), or point responseBaseUrl at a local server; set responder = \"off\" "
                    "to silence this", cfg.responseBaseUrl)
        return False

    def _ask_llm(self, call_id: str, record: dict[str, Any], cfg: Config, may_supersede: bool) -> Outcome:
        """Stream the reply and speak it sentence by sentence as it comes
        (``pipeline``). The Outcome says what is left to do: ``spoken``
        (nothing), ``superseded`` (the caller spoke again before anything
        was said: ask again), ``failed`` (nothing was said: apologize)."""
        base = cfg.responseBaseUrl.rstrip("/")
        key = cfg.responseApiKey or cfg.streaming.openaiApiKey
        if not self.configured(cfg):
            # Not set up (a default install): no request that can only fail,
            # and no apologies spoken into calls an agent may be running.
            return Outcome("done")
        deadline = time.monotonic() + cfg.responseTimeoutMs / 1000
        streamed = self.streamed is not None and self.streamed(call_id)
        reply = SpokenReply(self.manager, call_id, streamed=streamed)
        tools = base not in self._no_tools
        while True:
            body = chat.request_body(cfg.responseModel, record, cfg.responseSystemPrompt, tools=tools,
                                     transfer_to=cfg.transfer.allowTo if tools else (), stream=True)
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            request = ChatRequest(self._session, f"{base}/chat/completions", headers, body,
                                  first_deadline=deadline, stall=min(STALL_SECONDS, cfg.responseTimeoutMs / 1000),
                                  watchdog=self._watchdog)
            try:
                return self._stream_reply(call_id, request, reply, may_supersede)
            except ToolsRefused as exc:
                if not tools:
                    return Outcome("failed", why=str(exc))
                # Some local servers reject function calling; talk without hang_up rather than not at all.
                log.warning("%s refused the hang_up tool (%s); continuing without tools", base, exc)
                self._no_tools.add(base)
                tools = False
            except (Unusable, chat.BadCompletion, BadChunk) as exc:
                if reply.stopped is not None:
                    log.debug("call %s: the reply stopped (%s)", call_id, reply.stopped)
                if reply.stopped == SUPERSEDED:
                    return Outcome("superseded")
                if reply.said or reply.stopped is not None:
                    # What was said stays said; the turn ends there.
                    if reply.stopped is None:
                        log.warning("call %s: the reply ended early (%s); keeping what was said", call_id, exc)
                    return Outcome("spoken")
                why = f"no reply within {cfg.responseTimeoutMs} ms" if "in time" in str(exc) else str(exc)
                return Outcome("failed", why=f"{base}: {why}")

    def _stream_reply(self, call_id: str, request: ChatRequest, reply: SpokenReply, may_supersede: bool) -> Outcome:
        """Read the reply as it streams, speaking as it goes."""
        active = _Active(request, reply, may_supersede)
        sub = self.bus.subscribe(active.watch, call_id)
        with self._lock:
            self._active[call_id] = active
        try:
            streamed = StreamedReply()
            for payload in request.payloads():
                if self._busy.get(call_id):
                    active.caller_spoke()
                if self._stopping:
                    active.stop("the daemon is stopping")
                request_text = streamed.add(payload)
                if request_text or streamed.calls_tool:
                    request.first_token()
                if request_text and reply.text(request_text) and reply.said == 1:
                    request.first_sentence_done()  # from now on the deadline is the stall limit
                if streamed.done:
                    break
            if request.completion is not None:
                # A server that does not stream: one JSON body.
                message = chat.parse_completion(request.completion)  # raises BadCompletion
                data = request.completion["choices"][0]["message"]
                reply.text(chat.content_text(data.get("content")))
                tool = _first_tool(data.get("tool_calls")) if message.hang_up or message.transfer_to else None
            else:
                tool = streamed.tool()
            if reply.stopped is not None:
                raise Cancelled(reply.stopped)
            done = reply.finish(tool)
        finally:
            self.bus.unsubscribe(sub)
            with self._lock:
                if self._active.get(call_id) is active:
                    del self._active[call_id]
        if done == "empty":
            return Outcome("failed", why="the model's reply was empty")
        if done == "goodbye":
            self._close(call_id)
        return Outcome("spoken")

    # -- responder = "socket" --

    def _ask_agent(self, call_id: str, record: dict[str, Any], cfg: Config) -> Outcome:
        """Publish the turn and wait for a subscriber to speak on the call.
        Any bot speech on the call counts as the answer (voicecall.speak,
        a continue, the tool's speak_to_user); so does the call ending."""
        answered = threading.Event()
        ended = []

        def watch(params: EventParams) -> None:  # runs on the publisher's thread: only flag
            name = params.get("event")
            if name == "call.transcript" and params.get("data", {}).get("speaker") == "bot":
                answered.set()
            elif name == "call.ended":
                ended.append(True)
                answered.set()

        timeout_ms = cfg.responseTimeoutMs
        sub = self.bus.subscribe(watch, call_id)
        with self._lock:
            self._waits.add(answered)
        try:
            # Subscribed first, so an answer cannot slip in between.
            texts = chat.unanswered(record.get("transcript") or [])
            self.bus.publish(TURN_EVENT, call_id, record, {
                "speaker": "user", "text": " ".join(texts), "transcripts": texts, "awaitingReply": True,
                "timeoutMs": timeout_ms})
            answered.wait(timeout_ms / 1000)
        finally:
            self.bus.unsubscribe(sub)
            with self._lock:
                self._waits.discard(answered)
        if ended or answered.is_set() or self._stopping:
            return Outcome("done")
        return Outcome("failed", why=f"no events.subscribe client answered within {timeout_ms} ms")

    # -- lifecycle --

    def stop(self, timeout: float = 2.0) -> None:
        """The daemon is stopping (after its calls were ended)."""
        self._stopping = True
        if self.manager.on_unclaimed == self.on_unclaimed:
            self.manager.on_unclaimed = None
        with self._lock:
            waits = list(self._waits)
        for wait in waits:
            wait.set()
        with self._lock:
            active = list(self._active.values())
        for reply in active:
            reply.stop("the daemon is stopping")
        self._watchdog.stop()
        # A request still in flight is bounded by responseTimeoutMs; its
        # thread is a daemon thread, so it cannot hold up the exit.
        self._pool.stop(timeout)
        self._session.close()


SUPERSEDED = "the caller spoke again"


class _Active:
    """A reply being streamed, and what stops it. ``watch`` runs on the
    thread that publishes the call's events (under the call's lock): it
    only flags and cancels, which takes no lock of the call's."""

    def __init__(self, request: ChatRequest, reply: SpokenReply, may_supersede: bool) -> None:
        self.request = request
        self.reply = reply
        self.may_supersede = may_supersede

    def stop(self, why: str) -> None:
        if self.reply.stop(why):
            self.request.cancel(why)

    def caller_spoke(self) -> None:
        """A new caller transcript: before anything was said the reply
        answers a conversation that moved on (asked again, within bounds);
        after, the rest is dropped and the next turn answers everything."""
        if self.reply.said or self.may_supersede:
            self.stop(SUPERSEDED if not self.reply.said else "the caller spoke")

    def watch(self, params: EventParams) -> None:
        name = params.get("event")
        data = params.get("data") or {}
        if name == "call.ended":
            self.stop("the call ended")
        elif name == "call.transcript" and data.get("speaker") == "bot" and data.get("interrupted"):
            self.stop("barge-in")


def _first_tool(calls: Any) -> chat.ToolCall | None:
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            tool = chat.tool_call(function.get("name"), function.get("arguments"))
            if tool is not None:
                return tool
    return None
