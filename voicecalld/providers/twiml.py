"""TwiML documents the Twilio provider answers with. Pure functions.

Every document is built as an element tree and serialised by ElementTree,
so user text can never become markup: ``<``, ``&`` and quotes are escaped,
and characters XML 1.0 cannot carry at all (most C0 controls, lone
surrogates, U+FFFE/U+FFFF) are dropped, since a single one would make
Twilio reject the whole document (error 12100) and end the call.

The document shapes (see ``providers/twilio.py`` for when each is used):

* utterances, notify mode: ``<Say>``... then ``<Redirect>`` back to the
  webhook, which learns that the speech finished and answers with
  ``<Pause length=notifyHangupDelaySec/><Hangup/>``;
* utterances, conversation mode: ``<Gather input="speech">`` around the
  ``<Say>``s (the callee may talk over the bot), a short timeout, then the
  same ``<Redirect>``;
* listening: an empty speech ``<Gather>`` and a ``<Redirect>`` that loops
  back when it times out, so the call stays open while an agent thinks;
* streaming: ``<Connect><Stream url="wss://...">`` with ``<Parameter>``s;
* DTMF: ``<Play digits="...">`` among the speech
  (https://www.twilio.com/docs/voice/twiml/play#attributes-digits);
* transfer: the message, then ``<Dial action timeout><Number
  statusCallbackEvent="answered" statusCallback>`` (see ``twilio_control``).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence

CONTENT_TYPE = "text/xml; charset=utf-8"
DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
#: Inline ``Twiml=`` on a call update is limited to this many characters (error 32018).
INLINE_LIMIT = 4000

# Characters outside XML 1.0's Char production.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def clean_text(text: str) -> str:
    """``text`` without the characters no XML document may contain. Line
    ends become ``\n``, as any XML parser would read them anyway."""
    return _NOT_XML.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def _element(tag: str, attrs: dict[str, str | None] | None = None, text: str | None = None) -> ET.Element:
    el = ET.Element(tag, {k: clean_text(v) for k, v in (attrs or {}).items() if v is not None})
    if text is not None:
        el.text = clean_text(text)
    return el


def render(verbs: Iterable[ET.Element]) -> str:
    root = ET.Element("Response")
    root.extend(verbs)
    return DECLARATION + ET.tostring(root, encoding="unicode")


def empty() -> str:
    """``<Response/>``: the answer to a status callback."""
    return render([])


def say(text: str, voice: str | None = None, language: str | None = None) -> ET.Element:
    return _element("Say", {"voice": voice, "language": language}, text)


def redirect(url: str) -> ET.Element:
    return _element("Redirect", {"method": "POST"}, url)


def pause(seconds: float) -> list[ET.Element]:
    """``<Pause>`` takes whole seconds; round up so a pause is never shorter
    than asked. Zero means no pause at all."""
    if seconds <= 0:
        return []
    return [_element("Pause", {"length": str(max(1, math.ceil(seconds)))})]


def hangup() -> ET.Element:
    return _element("Hangup")


def reject() -> str:
    return render([_element("Reject")])


def hangup_now() -> str:
    return render([hangup()])


def gather(action: str, timeout: int, language: str | None, prompts: Sequence[ET.Element] = ()) -> ET.Element:
    el = _element("Gather", {
        "input": "speech", "action": action, "method": "POST", "timeout": str(timeout),
        "speechTimeout": "auto", "language": language,
    })
    el.extend(prompts)
    return el


def utterances(texts: Sequence[str], *, played_url: str, voice: str | None, language: str | None,
               gather_action: str | None = None, gather_timeout: int = 1) -> str:
    """Say ``texts``; then come back to ``played_url``. With ``gather_action``
    the callee is heard while (and shortly after) the bot speaks."""
    return prompts([say(t, voice, language) for t in texts], played_url=played_url, language=language,
                   gather_action=gather_action, gather_timeout=gather_timeout)


def prompts(verbs: Sequence[ET.Element], *, played_url: str, language: str | None,
            gather_action: str | None = None, gather_timeout: int = 1, first: Sequence[ET.Element] = ()) -> str:
    """``first`` (``<Start>``, which no ``<Gather>`` may hold), then ``verbs``
    (``<Say>``, ``<Play>``), then back to ``played_url``; with
    ``gather_action`` the verbs are inside a speech ``<Gather>``, as ``utterances``."""
    if gather_action is None:
        return render([*first, *verbs, redirect(played_url)])
    return render([*first, gather(gather_action, gather_timeout, language, verbs), redirect(played_url)])


def play_digits(digits: str) -> ET.Element:
    """``<Play digits>``: DTMF tones, ``w`` a half-second pause."""
    return _element("Play", {"digits": digits})


def start_recording(callback: str, channels: str, events: str) -> ET.Element:
    """``<Start><Recording>``: record the call from here on, reporting to
    ``callback`` (https://www.twilio.com/docs/voice/twiml/recording)."""
    el = _element("Start")
    el.append(_element("Recording", {"recordingStatusCallback": callback, "recordingStatusCallbackMethod": "POST",
                                     "recordingStatusCallbackEvent": events, "channels": channels}))
    return el


def dial(number: str, *, action: str, timeout: int, answered_url: str) -> ET.Element:
    """``<Dial>`` one ``<Number>``: ``answered_url`` hears when it answers
    (its status callback), ``action`` when the dial is over, with
    ``DialCallStatus`` (https://www.twilio.com/docs/voice/twiml/dial,
    https://www.twilio.com/docs/voice/twiml/number)."""
    el = _element("Dial", {"action": action, "method": "POST", "timeout": str(timeout)})
    el.append(_element("Number", {"statusCallbackEvent": "answered", "statusCallback": answered_url,
                                  "statusCallbackMethod": "POST"}, number))
    return el


def listen(gather_action: str, again_url: str, timeout: int, language: str | None) -> str:
    """Listen for ``timeout`` seconds of silence at most, then loop via ``again_url``."""
    return render([gather(gather_action, timeout, language), redirect(again_url)])


def pause_then_hangup(seconds: float) -> str:
    """The end of a notify call: the message has played; wait, then hang up."""
    return render([*pause(seconds), hangup()])


def stream(url: str, parameters: dict[str, str], action: str) -> str:
    """``<Connect><Stream>``: a bidirectional media stream. ``action`` is
    fetched when the stream ends (or cannot be opened)."""
    connect = _element("Connect", {"action": action, "method": "POST"})
    el = _element("Stream", {"url": url})
    for name, value in parameters.items():
        el.append(_element("Parameter", {"name": name, "value": value}))
    connect.append(el)
    return render([connect])
