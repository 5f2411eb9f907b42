"""Parse TwiML voice documents into plain verb objects.

Parsing is strict on purpose: Twilio ends a call with error 12100 on a
document it cannot parse, and a fake that shrugged off bad TwiML would let a
daemon bug reach production. Only the verbs the daemon uses (plus a few
harmless ones) are understood; anything else is reported as an error, which
is stricter than Twilio (it ignores some unknown nouns with a 12200 warning)
but points at the problem sooner.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit


class TwimlError(Exception):
    """A document Twilio would refuse; ``code`` is the Twilio error code."""

    def __init__(self, message: str, code: int = 12100) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Say:
    text: str
    voice: str = "man"
    language: str = "en-US"
    loop: int = 1  # 0 means "forever", as in Twilio


@dataclass(frozen=True)
class Pause:
    length: float = 1.0


@dataclass(frozen=True)
class Play:
    url: str
    loop: int = 1
    digits: str = ""


@dataclass(frozen=True)
class Hangup:
    pass


@dataclass(frozen=True)
class Reject:
    reason: str = "rejected"


@dataclass(frozen=True)
class Redirect:
    url: str
    method: str = "POST"


@dataclass(frozen=True)
class Gather:
    input: frozenset[str]
    action: str | None
    method: str
    timeout: float
    speech_timeout: str | None
    action_on_empty_result: bool
    barge_in: bool
    finish_on_key: str
    num_digits: int | None
    prompts: tuple[Say | Pause | Play, ...]
    attributes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Stream:
    url: str
    name: str | None
    parameters: tuple[tuple[str, str], ...]
    status_callback: str | None = None
    track: str | None = None


@dataclass(frozen=True)
class Connect:
    stream: Stream
    action: str | None = None
    method: str = "POST"


@dataclass(frozen=True)
class Recording:
    """``<Start><Recording>`` (https://www.twilio.com/docs/voice/twiml/recording)."""

    status_callback: str | None = None
    status_callback_method: str = "POST"
    status_events: frozenset[str] = frozenset({"completed"})
    channels: str = "dual"


@dataclass(frozen=True)
class Start:
    """``<Start><Stream>`` (a one-way fork) or ``<Start><Recording>``; the
    document goes on at once."""

    stream: Stream | None
    recording: Recording | None = None


@dataclass(frozen=True)
class Stop:
    name: str | None


@dataclass(frozen=True)
class Number:
    """``<Number>`` in a ``<Dial>``; ``status_events`` as requested
    (Twilio's default is ``completed`` alone)."""

    number: str
    status_callback: str | None = None
    status_callback_method: str = "POST"
    status_events: frozenset[str] = frozenset({"completed"})


@dataclass(frozen=True)
class Dial:
    """``<Dial>`` of one number (https://www.twilio.com/docs/voice/twiml/dial)."""

    number: Number
    action: str | None = None
    method: str = "POST"
    timeout: float = 30
    caller_id: str | None = None


Verb = Say | Pause | Play | Hangup | Reject | Redirect | Gather | Connect | Start | Stop | Dial

_BOOL = {"true": True, "false": False}


def parse(document: str) -> list[Verb]:
    """Parse a whole ``<Response>`` document into its verbs, in order."""
    try:
        root = ET.fromstring(document.strip())
    except ET.ParseError as exc:
        raise TwimlError(f"Document parse failure: {exc}") from None
    if root.tag != "Response":
        raise TwimlError(f"Root element must be <Response>, not <{root.tag}>")
    _no_text(root)
    return [_verb(el) for el in root]


def _no_text(el: ET.Element) -> None:
    # Stray text directly under <Response> usually means a template bug.
    text = (el.text or "").strip()
    if text:
        raise TwimlError(f"Unexpected text in <{el.tag}>: {text[:40]!r}")
    for child in el:
        tail = (child.tail or "").strip()
        if tail:
            raise TwimlError(f"Unexpected text after <{child.tag}>: {tail[:40]!r}")


def _verb(el: ET.Element) -> Verb:
    parser = _VERBS.get(el.tag)
    if parser is None:
        raise TwimlError(f"Unknown or unsupported verb <{el.tag}>")
    return parser(el)


def _number(el: ET.Element, name: str, default: float, *, minimum: float = 0) -> float:
    raw = el.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise TwimlError(f"<{el.tag} {name}={raw!r}> is not a number") from None
    if value < minimum:
        raise TwimlError(f"<{el.tag} {name}={raw!r}> is below {minimum}")
    return value


def _bool(el: ET.Element, name: str, default: bool) -> bool:
    raw = el.get(name)
    if raw is None:
        return default
    try:
        return _BOOL[raw.strip().lower()]
    except KeyError:
        raise TwimlError(f"<{el.tag} {name}={raw!r}> must be true or false") from None


def _method(el: ET.Element, default: str = "POST") -> str:
    method = (el.get("method") or default).upper()
    if method not in ("GET", "POST"):
        raise TwimlError(f"<{el.tag} method={method!r}> must be GET or POST")
    return method


def _leaf(el: ET.Element) -> None:
    if len(el):
        raise TwimlError(f"<{el.tag}> cannot contain <{el[0].tag}>")


def _say(el: ET.Element) -> Say:
    # Twilio reads SSML children (<break>, <prosody>...) as part of the text.
    text = "".join(el.itertext()).strip()
    if not text:
        raise TwimlError("<Say> has no text")
    return Say(text, el.get("voice", "man"), el.get("language", "en-US"),
               int(_number(el, "loop", 1)))


def _pause(el: ET.Element) -> Pause:
    _leaf(el)
    return Pause(_number(el, "length", 1))


#: What Twilio plays as DTMF: the characters error 21206 names for SendDigits
#: (https://www.twilio.com/docs/api/errors/21206); w and W wait 0.5 s and 1 s.
PLAY_DIGITS = frozenset("0123456789ABCD*#wW")


def _play(el: ET.Element) -> Play:
    _leaf(el)
    url, digits = (el.text or "").strip(), el.get("digits", "")
    if not url and not digits:
        raise TwimlError("<Play> needs a URL or digits")
    bad = set(digits) - PLAY_DIGITS
    if bad:
        raise TwimlError(f"<Play digits={digits!r}> has characters Twilio cannot play: {''.join(sorted(bad))}")
    return Play(url, int(_number(el, "loop", 1)), digits)


def _hangup(el: ET.Element) -> Hangup:
    _leaf(el)
    return Hangup()


def _reject(el: ET.Element) -> Reject:
    _leaf(el)
    reason = el.get("reason", "rejected")
    if reason not in ("rejected", "busy"):
        raise TwimlError(f"<Reject reason={reason!r}> must be rejected or busy")
    return Reject(reason)


def _redirect(el: ET.Element) -> Redirect:
    _leaf(el)
    url = (el.text or "").strip()
    if not url:
        raise TwimlError("<Redirect> has no URL")
    return Redirect(url, _method(el))


def _gather(el: ET.Element) -> Gather:
    inputs = frozenset((el.get("input") or "dtmf").split())
    if not inputs or not inputs <= {"dtmf", "speech"}:
        raise TwimlError(f"<Gather input={el.get('input')!r}> must be dtmf, speech or both")
    prompts: list[Say | Pause | Play] = []
    for child in el:
        verb = _verb(child)
        if not isinstance(verb, Say | Pause | Play):
            raise TwimlError(f"<Gather> cannot contain <{child.tag}>")
        prompts.append(verb)
    _no_text(el)
    num_digits = el.get("numDigits")
    return Gather(
        input=inputs,
        action=el.get("action"),
        method=_method(el),
        timeout=_number(el, "timeout", 5),
        speech_timeout=el.get("speechTimeout"),
        action_on_empty_result=_bool(el, "actionOnEmptyResult", False),
        barge_in=_bool(el, "bargeIn", True),
        finish_on_key=el.get("finishOnKey", "#"),
        num_digits=int(_number(el, "numDigits", 1, minimum=1)) if num_digits else None,
        prompts=tuple(prompts),
        attributes=tuple(sorted(el.attrib.items())),
    )


def _stream(el: ET.Element) -> Stream:
    if el.tag != "Stream":
        raise TwimlError(f"<{el.tag}> is not allowed here; expected <Stream>")
    params: list[tuple[str, str]] = []
    for child in el:
        if child.tag != "Parameter" or child.get("name") is None:
            raise TwimlError("<Stream> may only contain <Parameter name=... value=...>")
        params.append((child.get("name", ""), child.get("value", "")))
    url = el.get("url")
    if not url:
        raise TwimlError("<Stream> needs a url")
    return Stream(url, el.get("name"), tuple(params), el.get("statusCallback"), el.get("track"))


def _single_stream(el: ET.Element) -> Stream:
    if len(el) != 1:
        raise TwimlError(f"<{el.tag}> must contain exactly one <Stream>")
    return _stream(el[0])


def _connect(el: ET.Element) -> Connect:
    return Connect(_single_stream(el), el.get("action"), _method(el))


_RECORDING_EVENTS = frozenset({"in-progress", "completed", "absent"})


def _start(el: ET.Element) -> Start:
    if len(el) == 1 and el[0].tag == "Recording":
        return Start(None, _recording(el[0]))
    return Start(_single_stream(el))


def _recording(el: ET.Element) -> Recording:
    _leaf(el)
    events = frozenset((el.get("recordingStatusCallbackEvent") or "completed").split())
    if not events <= _RECORDING_EVENTS:
        raise TwimlError(f"<Recording recordingStatusCallbackEvent={el.get('recordingStatusCallbackEvent')!r}> "
                         f"is not among {sorted(_RECORDING_EVENTS)}")
    channels = el.get("channels", "dual")
    if channels not in ("mono", "dual"):
        raise TwimlError(f"<Recording channels={channels!r}> must be mono or dual")
    method = (el.get("recordingStatusCallbackMethod") or "POST").upper()
    if method not in ("GET", "POST"):
        raise TwimlError(f"<Recording recordingStatusCallbackMethod={method!r}> must be GET or POST")
    return Recording(el.get("recordingStatusCallback"), method, events, channels)


def _stop(el: ET.Element) -> Stop:
    # <Stop><Stream name=.../></Stop> names the stream; it needs no url.
    if len(el) != 1 or el[0].tag != "Stream":
        raise TwimlError("<Stop> must contain exactly one <Stream>")
    return Stop(el[0].get("name"))


_NUMBER_EVENTS = frozenset({"initiated", "ringing", "answered", "completed"})


def _dial(el: ET.Element) -> Dial:
    """Strict: exactly one ``<Number>`` (the daemon dials one), or a bare number."""
    text = (el.text or "").strip()
    if len(el) > 1 or (len(el) == 1 and text):
        raise TwimlError("<Dial> must hold one number: either text or one <Number>")
    if len(el) == 1:
        child = el[0]
        if child.tag != "Number":
            raise TwimlError(f"<Dial> cannot contain <{child.tag}> here (this fake dials <Number>s)")
        _leaf(child)
        events = frozenset((child.get("statusCallbackEvent") or "completed").split())
        if not events <= _NUMBER_EVENTS:
            raise TwimlError(f"<Number statusCallbackEvent={child.get('statusCallbackEvent')!r}> is not "
                             f"among {sorted(_NUMBER_EVENTS)}")
        method = (child.get("statusCallbackMethod") or "POST").upper()
        if method not in ("GET", "POST"):
            raise TwimlError(f"<Number statusCallbackMethod={method!r}> must be GET or POST")
        number = Number((child.text or "").strip(), child.get("statusCallback"), method, events)
    else:
        number = Number(text)
    if not number.number:
        raise TwimlError("<Dial> has no number to dial")
    return Dial(number, el.get("action"), _method(el), _number(el, "timeout", 30, minimum=5), el.get("callerId"))


_VERBS: dict[str, Callable[[ET.Element], Verb]] = {
    "Say": _say,
    "Pause": _pause,
    "Play": _play,
    "Hangup": _hangup,
    "Reject": _reject,
    "Redirect": _redirect,
    "Gather": _gather,
    "Connect": _connect,
    "Start": _start,
    "Stop": _stop,
    "Dial": _dial,
}


def stream_url_problem(url: str) -> tuple[int, str] | None:
    """Why Twilio would refuse a ``<Stream url>``, as (error code, message), or None.

    Streams must be ``wss://`` (31922) and cannot carry a query string, which
    Twilio drops or refuses; values must travel as ``<Parameter>`` instead.
    """
    parts = urlsplit(url)
    if parts.scheme != "wss":
        return 31922, f"Stream url must use the wss scheme: {url}"
    if not parts.netloc:
        return 31920, f"Stream url has no host: {url}"
    if parts.query or "?" in url:
        return 31920, f"Stream url must not have a query string (use <Parameter>): {url}"
    return None
