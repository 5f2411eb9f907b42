"""The responder's Chat Completions core: request building, reply parsing,
text for speech. Pure functions, table-driven."""

from __future__ import annotations

import json

import pytest

from voicecalld import chat
from voicecalld.testing._openai_chat import build_completion, validate_chat_request

INBOUND = {"direction": "inbound", "from": "+15550002222", "to": "+15550009999", "transcript": []}
OUTBOUND = {"direction": "outbound", "from": "+15550009999", "to": "+15550003333", "transcript": []}


def entry(speaker: str, text: str, **extra) -> dict:
    return {"timestamp": 0, "speaker": speaker, "text": text, "isFinal": True, **extra}


@pytest.mark.parametrize(("configured", "sent"), [
    ("openai/gpt-4o-mini", "gpt-4o-mini"),
    ("gpt-4o-mini", "gpt-4o-mini"),
    ("local/meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"),
    ("llamacpp/qwen2.5", "qwen2.5"),
])
def test_model_name_drops_the_provider_prefix(configured: str, sent: str) -> None:
    assert chat.model_name(configured) == sent


def test_default_prompt_names_the_other_party_and_asks_for_short_speech() -> None:
    prompt = chat.system_prompt(None, INBOUND)
    assert "+15550002222" in prompt and "one or two short spoken sentences" in prompt and "hang_up" in prompt
    assert "+15550003333" in chat.system_prompt(None, OUTBOUND)


def test_custom_prompt_gets_the_caller_and_keeps_other_braces() -> None:
    prompt = chat.system_prompt("Caller {caller}. JSON like {\"a\": 1} stays.", INBOUND)
    assert prompt == "Caller +15550002222. JSON like {\"a\": 1} stays."


def test_conversation_merges_turns_keeps_order_and_bounds_history() -> None:
    transcript = [entry("bot", "Hello."), entry("user", "hi"), entry("user", "there"),
                  {"speaker": "user", "text": "partial", "isFinal": False}, entry("bot", "  "),
                  entry("bot", "How can I help?")]
    assert chat.conversation(transcript) == [
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "How can I help?"}]
    long = [entry("user" if i % 2 else "bot", f"t{i}") for i in range(500)]
    messages = chat.conversation(long)
    assert len(messages) == chat.MAX_HISTORY and messages[-1]["content"] == "t499"


@pytest.mark.parametrize(("transcript", "expected"), [
    ([], []),
    ([entry("bot", "Hi")], []),
    ([entry("bot", "Hi"), entry("user", "a"), entry("user", "b")], ["a", "b"]),
    ([entry("user", "a"), entry("bot", "Hi"), entry("user", "b")], ["b"]),
    ([entry("user", "a"), entry("user", "b"), entry("bot", "reply")], []),
])
def test_unanswered_is_what_the_caller_said_since_the_bot_spoke(transcript, expected) -> None:
    assert chat.unanswered(transcript) == expected


def test_request_body_is_accepted_by_the_real_api_shape() -> None:
    record = dict(INBOUND, transcript=[entry("bot", "Hello."), entry("user", "hi")])
    body = chat.request_body("openai/gpt-4o-mini", record, None)
    validate_chat_request(body, {"gpt-4o-mini"})  # raises on anything the real endpoint refuses
    assert body["model"] == "gpt-4o-mini"
    assert [m["role"] for m in body["messages"]] == ["system", "assistant", "user"]
    assert body["tools"][0]["function"]["name"] == "hang_up"
    assert "tools" not in chat.request_body("m", record, None, tools=False)


@pytest.mark.parametrize(("reply", "expected"), [
    ("Sure, I can help.", chat.Reply("Sure, I can help.")),
    ({"content": None, "tool_call": {"name": "hang_up", "arguments": {"goodbye": "Bye **now**!"}}},
     chat.Reply("Bye now!", hang_up=True)),
    ({"content": "Goodbye, take care.", "tool_call": {"name": "hang_up", "arguments": {}}},
     chat.Reply("Goodbye, take care.", hang_up=True)),
    ({"content": "", "tool_call": {"name": "hang_up", "arguments": "not json"}},
     chat.Reply(chat.DEFAULT_GOODBYE, hang_up=True)),
    ({"content": "Let me check.", "tool_call": {"name": "lookup", "arguments": {}}}, chat.Reply("Let me check.")),
    ({"content": None, "tool_call": {"name": "lookup", "arguments": {}}}, chat.Reply("")),
    ("<think>the user wants the time</think>It is noon.", chat.Reply("It is noon.")),
])
def test_parse_completion(reply, expected) -> None:
    completion = build_completion({"model": "m", "messages": [{"role": "user", "content": "x"}]}, reply)
    assert chat.parse_completion(json.loads(json.dumps(completion))) == expected


@pytest.mark.parametrize("data", [{}, {"choices": []}, {"choices": [{"message": "x"}]}, [], None])
def test_parse_completion_refuses_what_is_not_a_completion(data) -> None:
    with pytest.raises(chat.BadCompletion):
        chat.parse_completion(data)


def test_content_parts_are_read_as_text() -> None:
    data = {"choices": [{"message": {"role": "assistant", "content": [{"type": "text", "text": "Hi"},
                                                                      {"type": "text", "text": "there."}]}}]}
    assert chat.parse_completion(data).text == "Hi there."


@pytest.mark.parametrize(("raw", "spoken"), [
    ("Plain text stays.", "Plain text stays."),
    ("**Bold** and *italic* and __strong__ and _em_ and ~~gone~~.", "Bold and italic and strong and em and gone."),
    ("Use `pip install`.", "Use pip install."),
    ("```python\nprint('hi')\n```\nDone.", "print('hi') Done."),
    ("# Title\nSome text.", "Title. Some text."),
    ("Options:\n- apples\n- pears\n1. one\n2) two", "Options: apples. pears. one. two."),
    ("See [the docs](https://example.com/a_(b)) now.", "See the docs now."),
    ("![a cat](cat.png) Meow.", "a cat Meow."),
    ('[home](https://example.com "Home page"), then.', "home, then."),
    ("> quoted\ntext", "quoted text"),
    ("a\n\n---\n\nb", "a b"),
    ("| a | b |\n|---|---|\n| 1 | 2 |", "a, b. 1, 2."),
    ("snake_case_name and 2*3*4 stay.", "snake_case_name and 2*3*4 stay."),
    ("<b>html</b> gone", "html gone"),
    ("<think>unfinished reasoning", ""),
    ("  lots   of\n\n   space  ", "lots of space"),
])
def test_for_speech(raw: str, spoken: str) -> None:
    assert chat.for_speech(raw) == spoken


def test_for_speech_cuts_long_replies_at_a_sentence() -> None:
    text = "This is a sentence. " * 100
    spoken = chat.for_speech(text, limit=50)
    assert spoken == "This is a sentence. This is a sentence."
    assert chat.for_speech("word " * 100, limit=22) == "word word word word"
