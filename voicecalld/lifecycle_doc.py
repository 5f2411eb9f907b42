"""The call lifecycle table, rendered for people, so the docs cannot drift.

    python -m voicecalld.lifecycle_doc --write   # rewrite docs/lifecycle.rst and the
                                                 # CALL STATES section of man/voicecalld.8
    python -m voicecalld.lifecycle_doc --check   # exit 1 if either differs from the table
    python -m voicecalld.lifecycle_doc rst       # print the page (or: man, the section)

Both are rendered from ``lifecycle_table.TABLE``: its rows, and the labels and
meanings of its inputs, guards and steps. In man/voicecalld.8 only the lines
between ``.\\" BEGIN GENERATED: lifecycle`` and ``.\\" END GENERATED:
lifecycle`` are generated. tests/test_lifecycle_doc.py fails when the
committed files differ from what this renders.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

from .calls import TERMINAL, State
from .docs import roff_escape, wrap
from .lifecycle_steps import MEANING, MOVE, SAME, Input, Row, Step
from .lifecycle_table import ANY, TABLE

ROOT = Path(__file__).resolve().parent.parent
RST_PATH = ROOT / "docs" / "lifecycle.rst"
MAN_PATH = ROOT / "man" / "voicecalld.8"
BEGIN = '.\\" BEGIN GENERATED: lifecycle'
END = '.\\" END GENERATED: lifecycle'
COMMAND = "python -m voicecalld.lifecycle_doc --write"

LIVE = [s for s in State if s not in TERMINAL]
INTRO = [
    "A call is in one state at a time. The live states are " + ", ".join(LIVE) + "; a call moves "
    "forward through them only, except between speaking and listening, which alternate, and back from "
    "initiated to queued when the carrier refuses the dial for its rate limit. It ends in one "
    "of the terminal states, which are also its end reason: " + ", ".join(s for s in State if s in TERMINAL)
    + ". A terminal state is final.",
    "What a call does is one table: for an input (a carrier event, a command, a timer) in a state, the "
    "first row whose condition holds gives the next state and the steps, in order. Each change of state "
    "publishes call.state. Where no row applies, a carrier event or a timer changes nothing, and speak, "
    "continue and goodbye are refused as not connected. A terminal call takes no input, and the same "
    "carrier event (by its id) counts once, as carriers retry their webhooks.",
    "Four facts outside the state decide between rows: whether the opening (the outbound message, or "
    "the inbound greeting) was spoken, which the call log keeps, so a restarted daemon neither repeats "
    "nor forgets it; the end reason the bot chose (by voicecall.end, a goodbye, a deadline or an "
    "error), which wins over what the carrier reports next, until the carrier refuses the hang-up; "
    "whether an utterance that ends the call was delivered, so a callee who hangs up after the "
    "notification leaves the call completed; and whether an answering machine's greeting ended (the "
    "beep), after which outbound.voicemail = leave-message leaves the message.",
]


def _groups() -> Iterator[tuple[Input, list[Row]]]:
    """The rows by input, in the order the table first names each."""
    order: dict[Input, list[Row]] = {}
    for row in TABLE:
        order.setdefault(row.input, []).append(row)
    yield from order.items()


def _states(row: Row) -> str:
    return "any live state" if row.states == ANY else ", ".join(row.states)


def _condition(row: Row, earlier: list[Row]) -> str:
    if row.guard is not None:
        return row.guard.label
    overlaps = any(set(e.states) & set(row.states) for e in earlier)
    return "otherwise" if overlaps else ""


def _next(row: Row) -> str:
    if row.next is SAME:
        return "(same)"
    return str(row.next) if isinstance(row.next, State) else row.next.label


def _steps(row: Row) -> str:
    return ", ".join(step.label for step in row.steps if step is not MOVE) or "nothing"


def _explained_steps() -> list[Step]:
    """Steps whose label is not enough, once each: of those that mean the
    same (hang up, with each reason), the one with the shortest label."""
    seen: dict[str, Step] = {}
    for row in TABLE:
        for step in row.steps:
            if step.means and len(step.label) < len(seen.get(step.means, step).label + "?"):
                seen[step.means] = step
    return list(seen.values())


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


# --- reStructuredText ----------------------------------------------------------------------------


def _table() -> list[str]:
    """A simple table: one line a row, readable as text too."""
    rows = [("In state", "Input", "If", "Next", "Steps")]
    for input_, group in _groups():
        rows += [(_states(row), str(input_), _condition(row, group[:i]), _next(row), _steps(row))
                 for i, row in enumerate(group)]
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    border = "  ".join("=" * w for w in widths)
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return [border, lines[0], border, *lines[1:], border]


def rst() -> str:
    out = [f".. Generated by \"{COMMAND}\" from voicecalld/lifecycle.py; do not edit.", "",
           "Call lifecycle", "--------------", ""]
    for paragraph in INTRO:
        out += [paragraph, ""]
    out += _table()
    out += ["", "Inputs", "~~~~~~", ""]
    for input_, _ in _groups():
        out += [f"``{input_}``", f"   {_sentence(MEANING[input_])}", ""]
    out += ["Steps", "~~~~~", ""]
    for step in _explained_steps():
        out += [f"``{step.label}``", f"   {_sentence(step.means)}", ""]
    return "\n".join(out).rstrip() + "\n"


# --- roff ------------------------------------------------------------------------------------------


def _rule(row: Row, earlier: list[Row]) -> str:
    """A row as a sentence: "In answered or active, if ...: to speaking; persist, speak." """
    states = "any live state" if row.states == ANY else " or ".join(
        filter(None, (", ".join(row.states[:-1]), row.states[-1])))
    condition = _condition(row, earlier)
    if condition and condition != "otherwise":
        condition = "if " + condition
    next_ = "stays" if row.next is SAME else f"to {_next(row)}"
    return f"In {states}{', ' + condition if condition else ''}: {next_}; {_steps(row)}."


def _lit(text: str) -> str:
    """A name (state, input, step) in roff: minus signs stay minus signs."""
    return roff_escape(text).replace("-", "\\-")


def man() -> str:
    """The CALL STATES section of voicecalld(8), markers included."""
    out = [BEGIN, f".\\\" Generated by \"{COMMAND}\" from voicecalld/lifecycle.py; do not edit.",
           ".SH CALL STATES"]
    for i, paragraph in enumerate(INTRO):
        if i:
            out.append(".PP")
        out += [roff_escape(s.strip() + ".") for s in paragraph.rstrip(".").split(". ")]
    out += [".PP", "Each input, and what it does: in which states, if what holds, to which state, with which steps."]
    for input_, rows in _groups():
        out += [".TP", f".B {_lit(input_)}", roff_escape(_sentence(MEANING[input_]))]
        for i, row in enumerate(rows):
            out += [".br", _lit(_rule(row, rows[:i]))]
    out += [".PP", "Steps that say more than their name:"]
    for step in _explained_steps():
        out += [".TP", f".B {_lit(step.label)}", roff_escape(_sentence(step.means))]
    out.append(END)
    return wrap("\n".join(out)) + "\n"


def with_man_section(page: str) -> str:
    """``page`` (voicecalld.8) with its generated section replaced."""
    start, end = page.find(BEGIN + "\n"), page.find(END + "\n")
    if start < 0 or end < start:
        raise ValueError(f"{MAN_PATH.name} has no {BEGIN!r} ... {END!r} section")
    return page[:start] + man() + page[end + len(END) + 1:]


# --- command line ---------------------------------------------------------------------------------


def stale() -> list[Path]:
    """The generated files that differ from the table."""
    out = []
    if not RST_PATH.exists() or RST_PATH.read_text() != rst():
        out.append(RST_PATH)
    page = MAN_PATH.read_text()
    if with_man_section(page) != page:
        out.append(MAN_PATH)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["rst"]:
        sys.stdout.write(rst())
    elif args == ["man"]:
        sys.stdout.write(man())
    elif args == ["--write"]:
        RST_PATH.parent.mkdir(exist_ok=True)
        RST_PATH.write_text(rst())
        MAN_PATH.write_text(with_man_section(MAN_PATH.read_text()))
    elif args == ["--check"]:
        for path in stale():
            print(f"{path} is out of date; regenerate it with: {COMMAND}", file=sys.stderr)
        return 1 if stale() else 0
    else:
        print("usage: python -m voicecalld.lifecycle_doc --write | --check | rst | man", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
