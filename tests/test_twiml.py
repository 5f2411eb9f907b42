"""TwiML building: documents Twilio accepts, and user text that can never
become markup. Every document is parsed back with the fake's strict TwiML
parser (which refuses what Twilio refuses) as well as ElementTree."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicecalld.providers import twiml
from voicecalld.testing import _twilio_twiml as strict

HOSTILE = [
    "plain words",
    "Tom & Jerry",
    "</Say><Hangup/><Say>",
    "<![CDATA[x]]> ]]>",
    '"double" and \'single\' quotes',
    "<Play>http://evil.example/x.mp3</Play>",
    "&amp; already escaped &lt;",
    "<?xml version='1.0'?><!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>&e;",
    "emoji 📞 and RTL \u202eevil\u202c and accents é",
    "tabs\tand\nnewlines\r\n",
]


def roundtrip_say(doc: str) -> list[str]:
    return [s.text for s in strict.parse(doc) if isinstance(s, strict.Say)]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_stays_text(text: str) -> None:
    doc = twiml.utterances([text], played_url="https://h.example/w?callId=a&type=played&turn=t",
                           voice="Polly.Joanna", language="en-US")
    verbs = strict.parse(doc)
    assert [type(v).__name__ for v in verbs] == ["Say", "Redirect"]
    assert verbs[0].text == text.strip()  # the fake strips, as Twilio ignores edge whitespace
    assert ET.fromstring(doc).findtext("Say") == text.replace("\r\n", "\n")
    redirect = verbs[1]
    assert isinstance(redirect, strict.Redirect)
    assert redirect.url == "https://h.example/w?callId=a&type=played&turn=t" and redirect.method == "POST"


@pytest.mark.parametrize(("text", "expected"), [
    ("a\x00b", "ab"), ("bell\x07", "bell"), ("\x0b\x0c\x1f", ""), ("ok\ud800", "ok"),
    ("\ufffe\uffff", ""), ("\t\n\r\n\r kept", "\t\n\n\n kept"), ("\x7f del is allowed", "\x7f del is allowed"),
])
def test_characters_xml_cannot_carry_are_dropped(text: str, expected: str) -> None:
    assert twiml.clean_text(text) == expected
    doc = twiml.render([twiml.say("x" + text + "y")])
    assert ET.fromstring(doc).findtext("Say") == "x" + expected + "y"


@given(st.text(max_size=50))
def test_any_text_gives_a_parseable_document(text: str) -> None:
    doc = twiml.utterances([text or "x"], played_url="https://h.example/w", voice=None, language=None,
                           gather_action="https://h.example/w?a=1&b=<2>")
    root = ET.fromstring(doc)
    gather = root.find("Gather")
    assert gather is not None and gather.get("action") == "https://h.example/w?a=1&b=<2>"
    assert gather.findtext("Say") == twiml.clean_text(text or "x")


def test_conversation_utterances_listen_while_speaking() -> None:
    doc = twiml.utterances(["First.", "Second?"], played_url="https://h/w?type=played",
                           voice="woman", language="de-DE", gather_action="https://h/w?type=gather",
                           gather_timeout=1)
    gather, redirect = strict.parse(doc)
    assert isinstance(gather, strict.Gather) and isinstance(redirect, strict.Redirect)
    assert gather.input == {"speech"} and gather.action == "https://h/w?type=gather" and gather.method == "POST"
    assert gather.timeout == 1 and gather.speech_timeout == "auto" and gather.barge_in
    assert [(p.text, p.voice, p.language) for p in gather.prompts] == [("First.", "woman", "de-DE"),
                                                                        ("Second?", "woman", "de-DE")]
    assert redirect.url == "https://h/w?type=played"


def test_listen_loops_back() -> None:
    gather, redirect = strict.parse(twiml.listen("https://h/w?type=gather", "https://h/w?type=played", 10, "en-GB"))
    assert isinstance(gather, strict.Gather) and gather.prompts == () and gather.timeout == 10
    assert dict(gather.attributes)["language"] == "en-GB"
    assert isinstance(redirect, strict.Redirect) and redirect.url == "https://h/w?type=played"


@pytest.mark.parametrize(("seconds", "expected"), [(3, [3.0]), (0.05, [1.0]), (2.5, [3.0]), (0, [])])
def test_notify_closing(seconds: float, expected: list[float]) -> None:
    verbs = strict.parse(twiml.pause_then_hangup(seconds))
    assert [v.length for v in verbs if isinstance(v, strict.Pause)] == expected
    assert isinstance(verbs[-1], strict.Hangup)


def test_stream_document() -> None:
    doc = twiml.stream("wss://h.example/voice/stream", {"token": 'a"<b>&', "callId": "c1"},
                       action="https://h.example/w?type=connect")
    [connect] = strict.parse(doc)
    assert isinstance(connect, strict.Connect)
    assert connect.stream.url == "wss://h.example/voice/stream"
    assert strict.stream_url_problem(connect.stream.url) is None
    assert dict(connect.stream.parameters) == {"token": 'a"<b>&', "callId": "c1"}
    assert connect.action == "https://h.example/w?type=connect" and connect.method == "POST"


def test_small_documents() -> None:
    assert twiml.empty() == '<?xml version="1.0" encoding="UTF-8"?><Response />'
    assert [type(v).__name__ for v in strict.parse(twiml.reject())] == ["Reject"]
    assert [type(v).__name__ for v in strict.parse(twiml.hangup_now())] == ["Hangup"]
    assert twiml.CONTENT_TYPE.startswith("text/xml")
