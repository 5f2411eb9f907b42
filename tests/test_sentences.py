"""The sentence cutter (voicecalld.sentences), as a table of cases: each
reply is fed whole, then again in tokens as a model streams them (words
with their leading space, runs of punctuation), and must come out as the
same sentences either way."""

from __future__ import annotations

import re

import pytest

from voicecalld.sentences import SentenceCutter

CASES: list[tuple[str, list[str]]] = [
    ("Hello there. How can I help?", ["Hello there.", "How can I help?"]),
    ("Great! See you soon.", ["Great!", "See you soon."]),
    ("Is it Tuesday? Yes.", ["Is it Tuesday?", "Yes."]),
    # abbreviations and initials do not end a sentence
    ("Dr. Smith will call you. Bye.", ["Dr. Smith will call you.", "Bye."]),
    ("Bring something, e.g. a passport. Thanks.", ["Bring something, e.g. a passport.", "Thanks."]),
    ("Fruit, i.e. apples, etc. Anything else?", ["Fruit, i.e. apples, etc. Anything else?"]),
    ("Ask Mr. J. Doe. He knows.", ["Ask Mr. J. Doe.", "He knows."]),
    # numbers
    ("It costs 3.5 dollars. Okay?", ["It costs 3.5 dollars.", "Okay?"]),
    ("Version 2.0.1 is out. Update now.", ["Version 2.0.1 is out.", "Update now."]),
    ("Call 555.1234 today.", ["Call 555.1234 today."]),
    ("We open at 9. See you.", ["We open at 9.", "See you."]),
    # quotes and brackets stay with their sentence
    ('He said "stop." Then he left.', ['He said "stop."', "Then he left."]),
    ("It is fine (really.) Go on.", ["It is fine (really.)", "Go on."]),
    ("\u201cReally?\u201d she asked. Yes.", ["\u201cReally?\u201d she asked.", "Yes."]),
    # ellipses: a pause, unless the sentence goes on in lower case
    ("Well... I think so.", ["Well...", "I think so."]),
    ("Wait... what happened? Tell me.", ["Wait... what happened?", "Tell me."]),
    ("Hmm\u2026 Let me check.", ["Hmm\u2026", "Let me check."]),
    # no punctuation at all: one piece, given at the end
    ("sure thing", ["sure thing"]),
    ("", []),
    ("   ", []),
    # a sentence that runs long is cut at a clause boundary
    ("I checked the calendar for the whole of next week and the week after, and there is a free slot on "
     "Thursday afternoon, which I can book for you now. Shall I?",
     ["I checked the calendar for the whole of next week and the week after,",
      "and there is a free slot on Thursday afternoon, which I can book for you now.", "Shall I?"]),
]


def _tokens(text: str) -> list[str]:
    return re.findall(r"\s*\w+|\s*[^\w\s]+|\s+", text)


def _cut(text: str, pieces: list[str]) -> list[str]:
    cutter = SentenceCutter()
    out: list[str] = []
    for piece in pieces:
        out += cutter.feed(piece)
    rest = cutter.flush()
    return out + ([rest] if rest else [])


@pytest.mark.parametrize("text,expected", CASES)
def test_whole(text: str, expected: list[str]) -> None:
    assert _cut(text, [text]) == expected


@pytest.mark.parametrize("text,expected", CASES)
def test_streamed_in_tokens(text: str, expected: list[str]) -> None:
    assert "".join(_tokens(text)) == text
    assert _cut(text, _tokens(text)) == expected


def test_an_ellipsis_split_after_its_first_point_is_not_spoken_as_dots() -> None:
    assert _cut("Well... I think so.", list("Well... I think so.")) == ["Well.", "I think so."]


def test_a_sentence_is_given_as_soon_as_it_ends() -> None:
    """No waiting for the next token when the sentence is plainly over."""
    cutter = SentenceCutter()
    assert cutter.feed("Sure") == []
    assert cutter.feed(", I can do that!") == ["Sure, I can do that!"]
    assert cutter.feed(" It is 3") == []
    assert cutter.feed(".") == []          # 3.5? the next character decides
    assert cutter.feed("5 euros.") == ["It is 3.5 euros."]


def test_no_boundary_at_all_is_cut_at_a_word() -> None:
    cutter = SentenceCutter(long_after=40, hard_limit=60)
    out = cutter.feed("word " * 20)
    assert out and all(len(s) <= 60 for s in out)
    assert " ".join(out + [cutter.flush()]).split() == ["word"] * 20
