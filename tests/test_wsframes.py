"""The media layer's WebSocket fast paths (voicecalld.media.wsframes):
checked against wsproto, the general parser and framer they stand in for,
and end to end in test_media_loop (mixed frames over the read loop)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode

from voicecalld.media.wsframes import FAST_LIMIT, FrameSplitter, masked_text_frame, unmask


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False, masked: bool = True) -> bytes:
    """A client frame built by hand (RFC 6455 5.2)."""
    n = len(payload)
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    if n < 126:
        head = bytes((first, (0x80 if masked else 0) | n))
    elif n < 65536:
        head = bytes((first, (0x80 if masked else 0) | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, (0x80 if masked else 0) | 127)) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


def text(s: str, **kw: bool) -> bytes:
    return client_frame(0x1, s.encode(), **kw)


def split(data: bytes, chunks: list[int]) -> list[str | bytes]:
    """Feed ``data`` in pieces of the given sizes (the rest at the end);
    wsproto's runs are joined, as its parser sees one stream."""
    splitter = FrameSplitter()
    out: list[str | bytes] = []
    pos = 0
    for size in [*chunks, len(data)]:
        for part in splitter.feed(data[pos:pos + size]):
            if isinstance(part, bytes) and out and isinstance(out[-1], bytes):
                out[-1] += part
            else:
                out.append(part)
        pos += size
    return out


def test_text_frames_of_every_length_form_are_parsed_in_order() -> None:
    messages = ["", "x", "é" * 62, "y" * 126, "z" * 300, "w" * FAST_LIMIT]
    assert split(b"".join(text(m) for m in messages), []) == messages


@given(st.lists(st.text(max_size=300), min_size=1, max_size=8), st.lists(st.integers(1, 400), max_size=30))
def test_however_the_bytes_arrive_the_messages_are_the_same(messages: list[str], chunks: list[int]) -> None:
    assert split(b"".join(text(m) for m in messages), chunks) == messages


@pytest.mark.parametrize("frame", [
    client_frame(0x9, b"ping?"),  # control frames
    client_frame(0xA, b""),
    client_frame(0x2, b"\x00\x01"),  # binary
    text("compressed?", rsv1=True),
    text("unmasked", masked=False),
    client_frame(0x1, b"\xff\xfe not UTF-8"),
    text("v" * (FAST_LIMIT + 1)),
])
def test_other_frames_go_to_wsproto_whole_and_in_place(frame: bytes) -> None:
    data = text("before") + frame + text("after")
    assert split(data, []) == ["before", frame, "after"]
    for cut in (1, 2, 5, len(text("before")) + 3, len(data) - 2):  # whatever the reads
        assert split(data, [cut]) == ["before", frame, "after"]


def test_a_fragmented_message_is_wholly_wsproto_s() -> None:
    fragments = (client_frame(0x1, b"one ", fin=False) + client_frame(0x9, b"interleaved ping")
                 + client_frame(0x0, b"two ", fin=False) + client_frame(0x0, b"three"))
    assert split(text("a") + fragments + text("b"), [7, 3]) == ["a", fragments, "b"]


def test_what_wsproto_is_given_it_parses_as_if_it_had_all() -> None:
    """The runs handed over are whole frames: wsproto makes of them what it
    would of the whole stream, minus the messages taken out."""
    stream = (text("a") + client_frame(0x9, b"p") + client_frame(0x1, b"x", fin=False) + client_frame(0x0, b"y")
              + client_frame(0x2, b"bin") + text("b") + client_frame(0x8, (1000).to_bytes(2, "big")))
    parts = split(stream, [3, 9, 4])
    assert [p for p in parts if isinstance(p, str)] == ["a", "b"]
    proto = FrameProtocol(client=False, extensions=[])
    for part in parts:
        if isinstance(part, bytes):
            proto.receive_bytes(part)
    frames = [(f.opcode, f.payload) for f in proto.received_frames()]
    assert frames == [(Opcode.PING, b"p"), (Opcode.TEXT, "x"), (Opcode.TEXT, "y"),  # the fragment, as its message
                      (Opcode.BINARY, b"bin"), (Opcode.CLOSE, (1000, ""))]


@given(st.binary(max_size=70_000))
def test_masked_text_frames_are_what_wsproto_reads(payload: bytes) -> None:
    text_ = payload.decode("latin-1")  # any bytes as valid UTF-8 text
    frame = masked_text_frame(text_.encode())
    server = FrameProtocol(client=False, extensions=[])
    server.receive_bytes(frame)
    (got,) = list(server.received_frames())
    assert got.opcode == Opcode.TEXT and got.message_finished and got.payload == text_


def test_masks_differ_per_frame_and_unmask_inverts() -> None:
    assert len({masked_text_frame(b"same")[2:6] for _ in range(20)}) > 1
    assert unmask(b"abcd", unmask(b"abcd", b"hello world")) == b"hello world"
    assert unmask(b"abcd", b"") == b""
