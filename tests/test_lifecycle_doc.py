"""docs/lifecycle.rst and the CALL STATES section of man/voicecalld.8 are
exactly what ``python -m voicecalld.lifecycle_doc`` renders from the
lifecycle table, as voicecalld.toml(5) is from the settings table."""

from __future__ import annotations

import dataclasses

import pytest

from voicecalld import lifecycle_doc, lifecycle_table
from voicecalld.calls import State


def test_rst_page_is_generated_from_the_table() -> None:
    committed = lifecycle_doc.RST_PATH.read_text()
    assert committed == lifecycle_doc.rst(), (
        f"docs/lifecycle.rst is out of date; regenerate it with: {lifecycle_doc.COMMAND}")


def test_man_section_is_generated_from_the_table() -> None:
    page = lifecycle_doc.MAN_PATH.read_text()
    assert lifecycle_doc.BEGIN in page and lifecycle_doc.END in page
    assert lifecycle_doc.with_man_section(page) == page, (
        f"the CALL STATES section of man/voicecalld.8 is out of date; regenerate it with: "
        f"{lifecycle_doc.COMMAND}")


def test_check_reports_nothing_stale() -> None:
    assert lifecycle_doc.stale() == []
    assert lifecycle_doc.main(["--check"]) == 0


def test_a_changed_row_makes_both_docs_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    """The drift tests can fail: a row that says something else renders differently."""
    table = list(lifecycle_table.TABLE)
    i = next(i for i, row in enumerate(table) if row.input == lifecycle_table.Input.RINGING)
    table[i] = dataclasses.replace(table[i], next=State.ANSWERED)
    monkeypatch.setattr(lifecycle_doc, "TABLE", tuple(table))
    assert lifecycle_doc.stale() == [lifecycle_doc.RST_PATH, lifecycle_doc.MAN_PATH]
    assert lifecycle_doc.main(["--check"]) == 1


def test_every_row_is_in_both_docs() -> None:
    rst, man = lifecycle_doc.rst(), lifecycle_doc.man()
    for input_, rows in lifecycle_doc._groups():
        assert f".B {lifecycle_doc._lit(input_)}\n" in man
        for i, row in enumerate(rows):
            assert lifecycle_doc._lit(lifecycle_doc._rule(row, rows[:i])) in man.replace("\n", " ")
            assert lifecycle_doc._steps(row) in rst
    assert sum(len(rows) for _, rows in lifecycle_doc._groups()) == len(lifecycle_table.TABLE)


def test_a_man_page_without_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="BEGIN GENERATED"):
        lifecycle_doc.with_man_section(".TH X 8\n.SH NAME\nx\n")
