"""RateLimitedLog: the first warning of a kind at once, then at most one per
interval saying how many were left out; kinds counted apart (a virtual
clock, no waiting)."""

from __future__ import annotations

import logging

import pytest

from voicecalld.ratelog import MAX_KINDS, RateLimitedLog


def test_one_warning_per_interval_and_kind_with_a_count_of_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    log = RateLimitedLog(logging.getLogger("ratelog-test"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="ratelog-test"):
        assert log.warning("forged", "rejected %s", "a")
        assert not any(log.warning("forged", "rejected %s", "b") for _ in range(5))
        assert log.warning("stale", "late %s", "c")  # another kind is not held back
        now[0] += 9.9
        assert not log.warning("forged", "rejected %s", "d")
        now[0] += 0.1
        assert log.warning("forged", "rejected %s", "e")
        now[0] += 10
        assert log.warning("forged", "rejected %s", "f")
    assert [r.getMessage() for r in caplog.records] == [
        "rejected a", "late c", "rejected e (6 more since the last warning)", "rejected f"]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_kinds_are_bounded() -> None:
    log = RateLimitedLog(logging.getLogger("ratelog-test"), 10.0, clock=lambda: 0.0)
    for i in range(MAX_KINDS * 3):
        log.warning(f"kind-{i}", "x")
    assert len(log._kinds) == MAX_KINDS
