"""A streamed Chat Completions reply put back together (voicecalld.chat_stream),
from the bytes the fake server really sends."""

from __future__ import annotations

import json

import pytest

from voicecalld import chat
from voicecalld.chat_stream import BadChunk, SseDecoder, StreamedReply, ThinkFilter
from voicecalld.testing._openai_chat import build_completion, stream_chunks

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def wire(reply: str | dict) -> bytes:
    events = [b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk, _ in
              stream_chunks(build_completion(BODY, reply))]
    return b"".join(events) + b"data: [DONE]\n\n"


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_text_and_a_tool_call_survive_any_split(size: int) -> None:
    data = wire({"content": "Goodbye, take care!", "tool_call": {"name": "hang_up",
                                                                 "arguments": {"goodbye": "Bye now."}}})
    decoder, reply = SseDecoder(), StreamedReply()
    pieces: list[str] = []
    for i in range(0, len(data), size):
        for payload in decoder.feed(data[i:i + size]):
            pieces.append(reply.add(payload))
    assert reply.done and reply.finish_reason == "tool_calls"
    assert "".join(pieces) == reply.text == "Goodbye, take care!"
    assert len([p for p in pieces if p]) > 3  # token by token
    assert reply.tool() == chat.ToolCall("hang_up", goodbye="Bye now.")


def test_events_spanning_lines_comments_and_crlf() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b": keep-alive\r\n\r\nevent: x\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n") == ['{"a":\n1}']
    assert decoder.feed(b"data: tail") == []
    assert decoder.close() == ["tail"]


def test_a_transfer_and_unknown_tools() -> None:
    reply = StreamedReply()
    for payload in SseDecoder().feed(wire({"tool_calls": [
            {"name": "lookup", "arguments": {}},
            {"name": "transfer_call", "arguments": {"to": "+15550001234", "message": "One moment."}}]})):
        reply.add(payload)
    assert reply.calls_tool and reply.tool() == chat.ToolCall("transfer_call", to="+15550001234",
                                                              message="One moment.")


@pytest.mark.parametrize("payload", ["not json", "[1, 2]", '{"error": {"message": "overloaded"}}'])
def test_bad_chunks_are_refused(payload: str) -> None:
    with pytest.raises(BadChunk):
        StreamedReply().add(payload)


def test_usage_and_empty_chunks_add_nothing() -> None:
    reply = StreamedReply()
    assert reply.add('{"choices": [], "usage": {"total_tokens": 3}}') == ""
    assert reply.add('{"choices": [{"index": 0, "delta": {}}]}') == "" and not reply.done


@pytest.mark.parametrize("pieces,expected", [
    (["<think>plan</think>Hello."], "Hello."),
    (["<thi", "nk>plan the", " answer</th", "ink>Hello", " there."], "Hello there."),
    (["Hi <", "b>there</b>"], "Hi <b>there</b>"),  # other tags pass (for_speech cleans them)
    (["<THINK>x"], ""),                               # never closed: nothing of it is spoken
    (["a < b"], "a < b"),
])
def test_think_blocks_are_dropped_even_when_split(pieces: list[str], expected: str) -> None:
    f = ThinkFilter()
    assert "".join(f.feed(p) for p in pieces) + f.flush() == expected
