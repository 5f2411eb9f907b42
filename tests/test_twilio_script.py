"""The Twilio provider's I/O-free parts: the per-call TwiML script (turn
tokens, queueing, which document comes next), the status mapping, the
error messages, and the bounded replay cache."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from voicecalld.calls import EventType, Mode, Speak, State
from voicecalld.providers import twilio_errors
from voicecalld.providers.replay import ReplayGuard
from voicecalld.providers.twilio_script import CallScript, Style
from voicecalld.providers.twilio_wire import classify_status
from voicecalld.testing import _twilio_twiml as strict


class Urls:
    def turn(self, kind: str, token: str) -> str:
        return f"https://h.example/w?callId=c1&type={kind}&turn={token}"

    def stream(self) -> str:
        return "wss://h.example/voice/stream"


URLS = Urls()
STYLE = Style(voice=None, language="en-US", hangup_delay=3)


def turn_of(url: str | None) -> str:
    return parse_qs(urlsplit(url or "").query)["turn"][0]


def verbs(xml: str) -> list[str]:
    return [type(v).__name__ for v in strict.parse(xml)]


def answered(mode: Mode = Mode.CONVERSATION) -> CallScript:
    script = CallScript("c1", mode, sid="CA1", fetched=True)
    script.compose(URLS, STYLE)  # resting: listening
    return script


# --- the script ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fetched", "answering", "saying", "now"), [
    (True, 0, (), True),           # listening: update the live call now
    (False, 0, (), False),         # before the voice URL was fetched: that fetch says it
    (True, 1, (), False),          # a webhook for the call is being answered: it says it
    (True, 0, ("u1",), False),     # still saying something: wait for Twilio to come back
])
def test_when_speech_goes_out_at_once(fetched: bool, answering: int, saying: tuple[str, ...], now: bool) -> None:
    script = CallScript("c1", Mode.CONVERSATION, fetched=fetched, answering=answering, saying=saying)
    assert script.add(Speak("Hello", "u2", then="listen")) is now
    assert [s.utterance_id for s in script.queue] == ["u2"]


def test_conversation_speech_then_listening() -> None:
    script = answered()
    script.add(Speak("One", "u1"))
    script.add(Speak("Two?", "u2", then="listen"))
    doc = script.compose(URLS, STYLE)
    assert doc.utterances == ("u1", "u2") and script.saying == ("u1", "u2") and script.queue == []
    gather, redirect = strict.parse(doc.xml)
    assert isinstance(gather, strict.Gather) and isinstance(redirect, strict.Redirect)
    assert [p.text for p in gather.prompts] == ["One", "Two?"]
    assert turn_of(gather.action) == turn_of(redirect.url) == doc.token
    # Twilio comes back with the token: both were said.
    assert script.advance(doc.token) == ("u1", "u2")
    assert script.advance(doc.token) == ()
    rest = script.compose(URLS, STYLE)
    assert verbs(rest.xml) == ["Gather", "Redirect"] and rest.token != doc.token
    assert script.saying == ()


def test_notify_speech_then_pause_and_hangup() -> None:
    script = answered(Mode.NOTIFY)
    script.add(Speak("Your build failed", "u1", then="hangup"))
    doc = script.compose(URLS, STYLE)
    assert verbs(doc.xml) == ["Say", "Redirect"]  # no Gather: nobody listens on a notify call
    assert not script.closing
    assert script.advance(doc.token) == ("u1",)
    closing = script.compose(URLS, STYLE)
    assert verbs(closing.xml) == ["Pause", "Hangup"] and script.closing


def test_stale_tokens_move_nothing() -> None:
    script = answered()
    script.add(Speak("Question?", "u1", then="listen"))
    old = script.compose(URLS, STYLE)
    script.add(Speak("Another?", "u2", then="listen"))
    script.saying = ()  # as if the first had been said and a REST update sent the second
    new = script.compose(URLS, STYLE)
    assert script.advance(old.token) is None and script.advance(None) is None
    assert script.saying == ("u2",)
    # The stale request gets a resting answer under a token of its own, which
    # counts as current if Twilio runs it.
    answer = script.stale_answer(URLS, STYLE)
    gather = strict.parse(answer)[0]
    assert isinstance(gather, strict.Gather)
    alias = turn_of(gather.action)
    assert alias not in (old.token, new.token) and script.is_current(alias)
    assert script.token == new.token
    assert script.advance(new.token) == ("u2",)
    script.compose(URLS, STYLE)
    assert not script.is_current(alias)  # a new document retires the aliases


def test_failed_update_says_nothing() -> None:
    script = answered()
    script.add(Speak("Hi", "u1"))
    doc = script.compose(URLS, STYLE)
    script.update_failed("other-token")
    assert script.saying == ("u1",)
    script.update_failed(doc.token)
    assert script.saying == ()


def test_streaming_listens_through_a_stream_until_it_fails() -> None:
    style = Style(streaming=True)
    script = CallScript("c1", Mode.CONVERSATION, sid="CA1", fetched=True)
    [connect] = strict.parse(script.compose(URLS, style).xml)
    assert isinstance(connect, strict.Connect)
    assert connect.stream.url == "wss://h.example/voice/stream"
    assert dict(connect.stream.parameters) == {"token": script.stream_token, "callId": "c1"}
    assert len(script.stream_token) >= 32
    script.add(Speak("Hello", "u1", then="listen"))
    assert verbs(script.compose(URLS, style).xml) == ["Say", "Redirect"]  # the stream does the listening
    script.stream_failed = True
    assert verbs(script.compose(URLS, style).xml) == ["Gather", "Redirect"]


def test_stream_tokens_differ_per_call() -> None:
    assert CallScript("a", Mode.CONVERSATION).stream_token != CallScript("b", Mode.CONVERSATION).stream_token


# --- status callbacks -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "kw", "expected"), [
    ("queued", {}, (EventType.INITIATED, None)),
    ("initiated", {}, (EventType.INITIATED, None)),
    ("ringing", {}, (EventType.RINGING, None)),
    ("in-progress", {}, (EventType.ANSWERED, None)),
    ("in-progress", {"answered_by": "machine_start"}, (EventType.ANSWERED, None)),  # detection off
    ("in-progress", {"machine_detection": True}, None),  # wait for the result
    ("in-progress", {"machine_detection": True, "answered_by": "human"}, (EventType.ANSWERED, None)),
    ("in-progress", {"machine_detection": True, "answered_by": "unknown"}, (EventType.ANSWERED, None)),
    ("in-progress", {"machine_detection": True, "answered_by": "machine_start"}, (EventType.ENDED, State.VOICEMAIL)),
    ("in-progress", {"machine_detection": True, "answered_by": "machine_end_beep"},
     (EventType.ENDED, State.VOICEMAIL)),
    ("in-progress", {"machine_detection": True, "answered_by": "fax"}, (EventType.ENDED, State.FAILED)),
    ("completed", {}, (EventType.ENDED, State.HANGUP_USER)),
    ("completed", {"closing": True}, (EventType.ENDED, State.COMPLETED)),
    ("busy", {}, (EventType.ENDED, State.BUSY)),
    ("no-answer", {}, (EventType.ENDED, State.NO_ANSWER)),
    ("failed", {}, (EventType.ENDED, State.FAILED)),
    ("canceled", {}, (EventType.ENDED, State.HANGUP_BOT)),
    ("something-new", {}, None),
    ("", {}, None),
])
def test_status_mapping(status: str, kw: dict, expected: tuple | None) -> None:
    event = classify_status(status, **kw)
    assert (None if event is None else (event.type, event.reason)) == expected


# --- errors -------------------------------------------------------------------------------------------------


def body(code: int, message: str = "Twilio's own words") -> dict:
    return {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": 400}


@pytest.mark.parametrize(("status", "payload", "words"), [
    (401, body(20003, "Authenticate"), "check twilio.accountSid and twilio.authToken"),
    (400, body(21211), "'To' number +*******4321 is not a valid phone number"),
    (400, body(21210), "fromNumber +*******9999 is not a Twilio number or verified caller ID"),
    (400, body(21215), "Geo permissions"),
    (400, body(21219), "verify +*******4321"),
    (429, body(20429), "rate-limiting"),
    (400, body(21666, "Number +15550001234 is odd"), "Number +*******1234 is odd"),
    (400, body(21667, ""), "no message"),
])
def test_error_messages(status: int, payload: dict, words: str) -> None:
    error = twilio_errors.provider_error(status, payload, "placing the call", to="+15550004321",
                                         from_="+15550009999")
    assert words in error.message
    assert f"Twilio error {payload['code']}" in error.message and "placing the call" in error.message
    assert error.data == {"providerCode": payload["code"], "httpStatus": status}
    assert "+15550004321" not in error.message and "+15550009999" not in error.message


@pytest.mark.parametrize("payload", [None, "<html>bad gateway</html>", {"code": "x"}, {"code": True}, []])
def test_errors_without_a_twilio_body(payload: object) -> None:
    error = twilio_errors.provider_error(502, payload, "hanging up")
    assert error.message == "Twilio answered HTTP 502 while hanging up"
    assert error.provider_code is None and error.retryable


# --- replays -----------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_replays_are_known_by_any_key() -> None:
    guard: ReplayGuard[str] = ReplayGuard(size=10, window=60)
    entry, first = guard.begin(["token:a", "signature:s"])
    assert first
    guard.finish(entry, "answer")
    for keys in (["token:a"], ["signature:s"], ["token:b", "signature:s"], ["", "token:a"]):
        again, first = guard.begin(keys)
        assert not first and guard.wait(again, 0) == "answer"
    assert guard.begin(["token:c", "signature:t"])[1]


def test_replay_memory_is_bounded_in_size_and_time() -> None:
    clock = Clock()
    guard: ReplayGuard[str] = ReplayGuard(size=4, window=10, clock=clock)
    for n in range(10):
        entry, _ = guard.begin([f"k{n}"])
        guard.finish(entry, str(n))
    assert len(guard) == 4
    assert guard.begin(["k9"])[1] is False and guard.begin(["k0"])[1] is True
    clock.now = 11
    assert guard.begin(["k9"])[1] is True  # too old to count as a replay
    assert len(guard) <= 2


def test_abandoned_requests_can_be_processed_again() -> None:
    guard: ReplayGuard[str] = ReplayGuard()
    entry, _ = guard.begin(["k"])
    guard.abandon(entry)
    assert guard.wait(entry, 0) is None
    assert guard.begin(["k"])[1]


def test_a_duplicate_in_flight_waits_for_the_first() -> None:
    import threading

    guard: ReplayGuard[str] = ReplayGuard()
    entry, _ = guard.begin(["k"])
    dup, first = guard.begin(["k"])
    assert not first and guard.wait(dup, 0) is None
    threading.Timer(0.05, guard.finish, (entry, "done")).start()
    assert guard.wait(dup, 5) == "done"
