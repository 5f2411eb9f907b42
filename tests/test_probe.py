"""probe.Probes: tokens are issued, marked when they arrive, and forgotten
when old or too many (doctor's reachability check)."""

from __future__ import annotations

import pytest

from voicecalld import probe


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(probe.time, "monotonic", c)
    return c


def test_a_token_is_seen_only_once_it_arrived(clock: Clock) -> None:
    probes = probe.Probes()
    token = probe.Probes().issue()  # another daemon's token means nothing here
    assert probes.seen(token) is None
    mine = probes.issue()
    assert probes.seen(mine) is False
    probes.arrived("not-a-token")
    assert probes.seen(mine) is False
    probes.arrived(mine)
    assert probes.seen(mine) is True


def test_tokens_expire_after_ttl(clock: Clock) -> None:
    probes = probe.Probes()
    token = probes.issue()
    clock.now += probe.TTL
    assert probes.seen(token) is False
    clock.now += 0.001
    probes.arrived(token)  # too late: ignored
    assert probes.seen(token) is None


def test_only_the_newest_tokens_are_kept(clock: Clock) -> None:
    probes = probe.Probes()
    tokens = [probes.issue() for _ in range(probe.LIMIT + 1)]
    assert probes.seen(tokens[0]) is None
    assert all(probes.seen(t) is False for t in tokens[1:])
