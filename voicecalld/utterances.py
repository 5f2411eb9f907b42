"""What the bot said, and what of it the caller heard.

A pipelined reply is said sentence by sentence, each an utterance of its
own, on one transcript line (``join_line``). When the caller speaks over
the bot, only what was heard may stay in the transcript, because the next
request to the model carries exactly that: ``barge_in_cuts`` works out how
much of each line was heard from the utterance cut off and those dropped
before they played, and ``keep_what_was_heard`` trims the lines. No I/O;
the lifecycle (``lifecycle.Call``, the ``MARK_INTERRUPTED`` step) uses
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .calls import Action, AfterSpeech, Publish


@dataclass(frozen=True)
class Utterance:
    """Something the bot said that may not have played yet."""

    then: AfterSpeech
    turn: int | None
    entry: dict[str, Any]  # its transcript entry, marked if it never plays
    start: int = 0  # where its text begins in the entry (a reply's sentences share one line)
    end: int = 0


def barge_in_cuts(heard: Utterance | None, dropped: list[Utterance]) -> list[tuple[dict[str, Any], int]]:
    """(transcript entry, characters of it heard) for a barge-in: ``heard``
    was cut off (it stays whole: where in it the caller spoke up is
    unknown, and whatever followed it in its line never played);
    ``dropped`` never played at all."""
    cuts: dict[int, tuple[dict[str, Any], int]] = {}
    for u in dropped:
        entry, at = cuts.get(id(u.entry), (u.entry, len(u.entry["text"])))
        cuts[id(u.entry)] = (entry, min(at, max(0, u.start - 1)))
    if heard is not None:
        cuts[id(heard.entry)] = (heard.entry, heard.end)
    return list(cuts.values())


def join_line(transcript: list[dict[str, Any]], text: str) -> list[Action] | None:
    """A reply's next sentence goes on the bot's line, if that is the
    transcript's last (and no barge-in cut it); None if it cannot."""
    last = transcript[-1] if transcript else None
    if last is None or last["speaker"] != "bot" or last.get("interrupted"):
        return None
    last["text"] += " " + text
    return [Publish("call.transcript", {"speaker": "bot", "text": text, "isFinal": True, "continues": True})]


def keep_what_was_heard(transcript: list[dict[str, Any]], entry: dict[str, Any],
                        cuts: list[tuple[dict[str, Any], int]]) -> list[Action]:
    """Barge-in on ``entry``: trim each cut line to what was heard, drop
    lines none of which was, and mark ``entry`` interrupted."""
    for line, heard in cuts:
        # Only what the caller heard stays: a reply's sentences that never
        # played were never said, and the model must not think they were.
        line["text"] = line["text"][:heard].rstrip()
        if not line["text"] and line is not entry:
            transcript[:] = [e for e in transcript if e is not line]
    if not entry["text"]:
        # Nothing of it was heard: the line goes, and subscribers (the
        # auto-responder writing the rest of it) still learn of the barge-in.
        transcript[:] = [e for e in transcript if e is not entry]
        return [Publish("call.transcript", {"speaker": "bot", "text": "", "isFinal": True, "interrupted": True})]
    entry["interrupted"] = True
    return [Publish("call.transcript", {"speaker": "bot", "text": entry["text"], "isFinal": True,
                                        "interrupted": True})]
