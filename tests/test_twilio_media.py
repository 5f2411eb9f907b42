"""Twilio's media-stream framing: Twilio's frames (as MediaStreamClient, the
simulated Twilio, sends them) parsed into the media layer's neutral events,
and our outgoing frames in Twilio's shape."""

from __future__ import annotations

import base64
import json

import pytest

from voicecalld.media.framing import PHONE_AUDIO, Audio, Dtmf, Mark, MediaFormat, Other, Start, Stop
from voicecalld.providers import twiml
from voicecalld.providers.twilio_media import TwilioFraming, stream_request


def start_message(**start: object) -> str:
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {
        "accountSid": "AC1", "streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound"],
        "customParameters": {"callId": "c1", "token": "t0k"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}, **start}})


def test_start_names_the_call_the_token_and_the_format() -> None:
    framing = TwilioFraming()
    assert framing.parse(start_message()) == Start("MZ1", call_id="c1", carrier_call_id="CA1", token="t0k",
                                                   media_format=PHONE_AUDIO)
    # Twilio's own start, without a mediaFormat, is µ-law 8 kHz all the same.
    assert TwilioFraming().parse(start_message(mediaFormat=None)) == Start(
        "MZ1", call_id="c1", carrier_call_id="CA1", token="t0k")
    other = TwilioFraming().parse(start_message(mediaFormat={"encoding": "audio/x-alaw", "sampleRate": 16000}))
    assert isinstance(other, Start) and other.media_format == MediaFormat("audio/x-alaw", 16000, 1)
    assert other.media_format != PHONE_AUDIO


@pytest.mark.parametrize("params", [{}, {"callId": 5, "token": ["x"]}, "nonsense"])
def test_a_start_without_usable_parameters_names_no_call(params: object) -> None:
    event = TwilioFraming().parse(start_message(customParameters=params))
    assert isinstance(event, Start) and event.call_id is None and event.token is None


def test_media_frames_become_audio_with_their_numbers() -> None:
    framing = TwilioFraming()
    payload = bytes(range(160))
    raw = json.dumps({"event": "media", "sequenceNumber": "3", "streamSid": "MZ1", "media": {
        "track": "inbound", "chunk": "2", "timestamp": "52", "payload": base64.b64encode(payload).decode()}})
    assert framing.parse(raw) == Audio(payload, 2, 52)
    assert framing.parse(raw.encode()) == Audio(payload, 2, 52)  # a binary frame is read the same way
    bare = json.dumps({"event": "media", "media": {"payload": base64.b64encode(b"abc").decode(), "chunk": "²"}})
    assert framing.parse(bare) == Audio(b"abc", None, None)


@pytest.mark.parametrize("media", [
    {"track": "outbound", "payload": "AAAA"},  # our own audio, echoed on another track
    {"payload": "not base64!"},
    {"payload": 5},
])
def test_media_that_is_not_caller_audio_is_other(media: dict) -> None:
    assert TwilioFraming().parse(json.dumps({"event": "media", "media": media})) == Other("media")


@pytest.mark.parametrize(("message", "event"), [
    ({"event": "connected", "protocol": "Call", "version": "1.0.0"}, None),
    ({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "5"}}, Dtmf("5")),
    ({"event": "dtmf", "dtmf": {}}, Other("dtmf")),
    ({"event": "mark", "mark": {"name": "utt-3"}}, Mark("utt-3")),
    ({"event": "mark"}, Mark("")),
    ({"event": "stop", "stop": {"accountSid": "AC1", "callSid": "CA1"}}, Stop()),
    ({"event": "surprise"}, Other("surprise")),
    ({"no": "event"}, Other("None")),
    ([1, 2], None),
])
def test_other_frames(message: object, event: object) -> None:
    assert TwilioFraming().parse(json.dumps(message)) == event


@pytest.mark.parametrize("raw", ["{", "[" * 100_000, b"\xff\xfe", ""])
def test_garbage_is_ignored(raw: str | bytes) -> None:
    assert TwilioFraming().parse(raw) is None


def test_outgoing_frames_name_the_stream_from_start() -> None:
    framing = TwilioFraming()
    framing.parse(start_message())
    assert json.loads(framing.media(b"\x00\xff")) == {"event": "media", "streamSid": "MZ1",
                                                       "media": {"payload": base64.b64encode(b"\x00\xff").decode()}}
    assert json.loads(framing.mark('u "1"')) == {"event": "mark", "streamSid": "MZ1", "mark": {"name": 'u "1"'}}
    assert json.loads(framing.clear()) == {"event": "clear", "streamSid": "MZ1"}
    odd = TwilioFraming('MZ"\\')  # a stream id that needs escaping still makes valid JSON
    assert json.loads(odd.media(b"x"))["streamSid"] == 'MZ"\\'


def test_the_stream_request_carries_the_call_and_its_token_as_parameters() -> None:
    xml = stream_request("wss://example.com/voice/stream", "c1", "t0k", action="https://example.com/a?x=1&y=2")
    assert xml == twiml.stream("wss://example.com/voice/stream", {"token": "t0k", "callId": "c1"},
                               action="https://example.com/a?x=1&y=2")
    framing = TwilioFraming()
    # What Twilio hands back in start is what the request gave it.
    event = framing.parse(start_message(customParameters={"token": "t0k", "callId": "c1"}))
    assert isinstance(event, Start) and (event.call_id, event.token) == ("c1", "t0k")
