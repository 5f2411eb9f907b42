"""Cutting a reply that is still being generated into sentences, with no
I/O, so each one can be synthesized as soon as it is complete.

``SentenceCutter.feed`` takes the text as it streams in and returns the
sentences it completes; ``flush`` returns what is left once the reply is
over. A sentence ends at ``.``, ``!``, ``?`` or an ellipsis followed by
white space (closing quotes and brackets stay with it), except:

* after a known abbreviation ("Dr.", "e.g.", "Mr.", "etc."), an initial
  ("J. Smith") or a number's point ("3.5" is never cut, as there is no
  space after its point);
* before a lower-case word ("... and then"), which continues the sentence.

A sentence that runs long (``long_after`` characters) is cut at the next
clause boundary (a comma, semicolon, colon or dash followed by a space),
so the caller does not wait for a model that writes one endless sentence;
one that grows past ``hard_limit`` with no boundary at all is cut at a word.

The end of a sentence can only be decided once the character after its
punctuation has arrived (is it a space? is the next word lower-case?), so
the cutter holds back the last few characters until it can tell.
"""

from __future__ import annotations

import re

#: Words that end in a full stop without ending the sentence (compared
#: lower-case, without the final point).
ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ft", "vs", "etc", "e.g", "i.e", "eg", "ie",
    "approx", "no", "nr", "tel", "fig", "inc", "ltd", "co", "corp", "dept", "est", "min", "max", "jan", "feb",
    "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mon", "tue", "wed", "thu", "fri",
    "sat", "sun", "a.m", "p.m", "u.s", "u.k", "ave", "blvd", "rd", "gen", "col", "capt", "lt", "sgt", "rev",
})
#: Characters after the point that still belong to the sentence.
_CLOSERS = "\"')]}\u201d\u2019\u00bb"
_END = re.compile(r"(?:\.{3}|\u2026|[.!?]+)[" + re.escape(_CLOSERS) + r"]*(?=\s|$)")
_CLAUSE = re.compile(r"(?:[,;:]|\s[-\u2013\u2014])(?=\s)")
_WORD_BEFORE = re.compile(r"(\S+)$")


class SentenceCutter:
    def __init__(self, long_after: int = 120, hard_limit: int = 250) -> None:
        self.long_after = long_after
        self.hard_limit = hard_limit
        self._text = ""
        self._after_point = False

    def feed(self, text: str) -> list[str]:
        """Add streamed text; the sentences it completes, in order."""
        if self._after_point:
            # The cut came at a point with nothing after it, and it was the
            # start of an ellipsis: the pause is lost, not spoken as dots.
            text = text.lstrip(".") if not self._text else text
            self._after_point = not text
        self._text += text
        out: list[str] = []
        while True:
            cut = self._next_cut()
            if cut is None:
                return out
            sentence, self._text = self._text[:cut].strip(), self._text[cut:].lstrip()
            self._after_point = not self._text and sentence.endswith(".")
            if sentence:
                out.append(sentence)

    def flush(self) -> str:
        """The rest, once the reply is complete (may be empty)."""
        rest, self._text = self._text.strip(), ""
        self._after_point = False
        return rest

    @property
    def pending(self) -> str:
        """Text held back so far (not yet a complete sentence)."""
        return self._text

    def _next_cut(self) -> int | None:
        text = self._text
        for match in _END.finditer(text):
            end = match.end()
            if end >= self.long_after:
                break  # a long sentence: its clauses first
            before, after = text[:match.start()], text[end:].lstrip()
            if not after:
                # Nothing follows yet. Usually the sentence is over, and
                # waiting for the next token would cost the caller its
                # time; but after a digit ("3." of "3.5"), an abbreviation,
                # an ellipsis or inside quotes, what comes next decides.
                return end if _complete_at_end(before, match.group()) else None
            if not _continues(before, match.group(), after):
                return end
        return self._clause_cut(text)

    def _clause_cut(self, text: str) -> int | None:
        """A long sentence is cut at its first clause boundary past a third
        of ``long_after``; one with none at all, at a word."""
        if len(text) < self.long_after:
            return None
        for match in _CLAUSE.finditer(text, 0, len(text) - 1):
            if match.end() >= self.long_after // 3:
                return match.end()
        if len(text) >= self.hard_limit:
            space = text.rfind(" ", 0, self.hard_limit)
            return space if space > 0 else self.hard_limit
        return None


_OPEN_CLOSE = (("(", ")"), ("[", "]"), ("\u201c", "\u201d"), ("\u2018", "\u2019"))


def _complete_at_end(before: str, punctuation: str) -> bool:
    """Is a sentence ending in ``punctuation`` complete, with nothing after it yet?"""
    if punctuation.startswith(("...", "\u2026")) or not before or before[-1].isdigit():
        return False
    if punctuation[-1] in _CLOSERS:
        return False  # a quotation may go on: "Really?" she asked.
    if any(punctuation.count(c) < before.count(o) - before.count(c) for o, c in _OPEN_CLOSE):
        return False  # inside brackets or quotes: the closing one may come next
    if (before.count('"') + punctuation.count('"')) % 2:
        return False
    return not (punctuation[0] == "." and _abbreviated(before))


def _continues(before: str, punctuation: str, after: str) -> bool:
    """Does the text go on in the same sentence after ``punctuation``?"""
    if punctuation.startswith(("...", "\u2026")) or punctuation[-1] in _CLOSERS:
        return after[0].islower()  # "Wait... what?", "Really?" she asked.
    return punctuation[0] == "." and _abbreviated(before)


def _abbreviated(before: str) -> bool:
    """Is the point after ``before`` an abbreviation's (or an initial's)?"""
    word = _WORD_BEFORE.search(before)
    if word is None:
        return False
    token = word.group(1).lstrip("\"'([{\u201c\u2018").lower()
    # An initial ("J. Smith") counts too: a one-letter word ending a
    # sentence is rarer than a name.
    return token in ABBREVIATIONS or (len(token) == 1 and token.isalpha())
