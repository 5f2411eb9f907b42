"""Telnyx's media-stream framing: Telnyx's frames (as the AsyncAPI page
shows them, and as the fake Telnyx sends them) parsed into the media
layer's neutral events, frames put back in order, and our outgoing frames
in Telnyx's shape."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, urlsplit

import pytest

from voicecalld.media.framing import PHONE_AUDIO, Audio, Dtmf, Mark, MediaFormat, Other, Start, Stop
from voicecalld.providers.telnyx_media import Reorder, TelnyxFraming, same_secret, stream_request


def start_message(**start: object) -> str:
    return json.dumps({"event": "start", "sequence_number": "1", "stream_id": "32DE0DEA", "start": {
        "user_id": "3E6F995F", "call_control_id": "v3:abc", "call_session_id": "ff55", "from": "+1", "to": "+2",
        "client_state": None, "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}, **start}})


def media(chunk: int | None, payload: bytes = b"\xff" * 160, track: str = "inbound") -> str:
    body: dict[str, object] = {"track": track, "timestamp": str(20 * (chunk or 0)),
                               "payload": base64.b64encode(payload).decode()}
    if chunk is not None:
        body["chunk"] = str(chunk)
    return json.dumps({"event": "media", "sequence_number": str((chunk or 0) + 1), "stream_id": "32DE0DEA",
                       "media": body})


def test_start_names_the_call_from_the_url_and_the_call_control_id_from_start() -> None:
    framing = TelnyxFraming("c1", "t0k")
    assert framing.parse(start_message()) == Start("32DE0DEA", call_id="c1", carrier_call_id="v3:abc",
                                                   token="t0k", media_format=PHONE_AUDIO)
    alaw = TelnyxFraming("c1", "t0k").parse(start_message(media_format={"encoding": "PCMA", "sample_rate": 8000,
                                                                         "channels": 1}))
    assert isinstance(alaw, Start) and alaw.media_format == MediaFormat("PCMA")
    wide = TelnyxFraming().parse(start_message(media_format={"encoding": "L16", "sample_rate": 16000}))
    assert isinstance(wide, Start) and wide.media_format == MediaFormat("L16", 16000, 1)
    bare = TelnyxFraming().parse(start_message(call_control_id=5, media_format=None))
    assert bare == Start("32DE0DEA")


def test_media_frames_in_order_pass_straight_through() -> None:
    framing = TelnyxFraming()
    assert framing.parse(media(1, b"a")) == Audio(b"a", 1, 20)
    assert framing.parse(media(2, b"b")) == Audio(b"b", 2, 40)
    assert framing.parse(media(None, b"c")) == Audio(b"c", None, 0)  # unnumbered: nothing to order by


def test_a_frame_that_arrives_early_waits_for_the_one_before_it() -> None:
    framing = TelnyxFraming()
    assert framing.parse(media(1, b"1")) == Audio(b"1", 1, 20)
    assert framing.parse(media(3, b"3")) is None
    assert framing.parse(media(2, b"2")) == Audio(b"23", 2, 40)  # released together, in order
    assert (framing.late, framing.lost, framing.reorder.reordered) == (0, 0, 1)


def test_a_lost_frame_is_given_up_on_after_the_window_and_a_late_one_dropped() -> None:
    order = Reorder(window=3)
    got = [order.push(Audio(bytes([n]), n)) for n in (1, 3, 4, 5, 2, 6)]
    assert [[a.sequence for a in batch] for batch in got] == [[1], [], [], [3, 4, 5], [], [6]]
    assert (order.late, order.lost) == (1, 1)
    assert order.push(Audio(b"x", 6)) == [] and order.late == 2  # a duplicate is late too


def test_numbering_that_starts_again_is_followed_not_dropped() -> None:
    order = Reorder(window=3)
    assert [a.sequence for n in range(100, 110) for a in order.push(Audio(b"", n))] == list(range(100, 110))
    assert [a.sequence for n in (1, 2) for a in order.push(Audio(b"", n))] == [1, 2]
    assert order.late == 0


@pytest.mark.parametrize("body", [{"track": "outbound", "payload": "AAAA"}, {"payload": "not base64!"},
                                  {"payload": 5}])
def test_media_that_is_not_caller_audio_is_other(body: dict) -> None:
    assert TelnyxFraming().parse(json.dumps({"event": "media", "media": body})) == Other("media")


@pytest.mark.parametrize(("message", "event"), [
    ({"event": "connected", "version": "1.0.0"}, None),
    ({"event": "dtmf", "stream_id": "s", "dtmf": {"digit": "5"}}, Dtmf("5")),
    ({"event": "dtmf", "dtmf": {}}, Other("dtmf")),
    ({"event": "mark", "stream_id": "s", "mark": {"name": "utt-3"}}, Mark("utt-3")),
    ({"event": "stop", "stop": {"user_id": "u", "call_control_id": "v3:abc"}}, Stop()),
    ({"event": "error", "payload": {"code": 100002, "title": "unknown error", "detail": "x"}}, Other("error")),
    ({"event": "surprise"}, Other("surprise")),
    ([1, 2], None),
])
def test_other_frames(message: object, event: object) -> None:
    assert TelnyxFraming().parse(json.dumps(message)) == event


@pytest.mark.parametrize("raw", ["{", "[" * 100_000, b"\xff\xfe", ""])
def test_garbage_is_ignored(raw: str | bytes) -> None:
    assert TelnyxFraming().parse(raw) is None


def test_outgoing_frames_are_telnyx_bidirectional_ones() -> None:
    framing = TelnyxFraming()
    assert json.loads(framing.media(b"\x00\xff")) == {"event": "media",
                                                       "media": {"payload": base64.b64encode(b"\x00\xff").decode()}}
    assert json.loads(framing.mark('u "1"')) == {"event": "mark", "mark": {"name": 'u "1"'}}
    assert json.loads(framing.clear()) == {"event": "clear"}


def test_the_stream_request_carries_the_call_and_its_token_in_the_url() -> None:
    params = stream_request("wss://example.com/voice/stream", "c1", "t0k/+=")
    url = urlsplit(params.pop("stream_url"))
    assert (url.scheme, url.netloc, url.path) == ("wss", "example.com", "/voice/stream")
    assert parse_qs(url.query) == {"call": ["c1"], "token": ["t0k/+="]}
    assert params == {"stream_track": "inbound_track", "stream_bidirectional_mode": "rtp",
                      "stream_bidirectional_codec": "PCMU"}


def test_secrets_compare_only_when_both_are_there() -> None:
    assert same_secret("abc", "abc") and not same_secret("abc", "abd")
    assert not same_secret(None, "abc") and not same_secret("abc", None) and not same_secret("", "")
