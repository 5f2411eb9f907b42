"""The bounded mapping behind the daemon's "seen before" memories."""

from __future__ import annotations

import pytest

from voicecalld.lru import Bounded


def test_forgets_the_oldest_and_refreshing_makes_an_entry_young() -> None:
    b: Bounded[str, int] = Bounded(3)
    for i, key in enumerate("abc"):
        b.put(key, i)
    b.put("a", 10)  # refreshed: now the youngest
    b.put("d", 3)
    assert list(b) == ["c", "a", "d"] and "b" not in b and len(b) == 3
    assert b.get("a") == 10 and b.get("b") is None
    assert b.pop("c") == 2 and b.pop("c") is None
    b.clear()
    assert len(b) == 0 and not b


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Bounded(0)
