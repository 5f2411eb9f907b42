"""Dial pacing: the pace's arithmetic as tables, then the real daemon
against the fake Twilio and the fake Telnyx: queue order and rate, list
positions, cancelling a queued call, the queue's bound, a carrier's
rate-limit answer (re-queued with backoff, never dialled twice), and a
daemon killed with calls queued (each dialled exactly once after the
restart)."""

from __future__ import annotations

import base64
import random
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from callctl import Events
from daemon import Daemon, merge, remove, short_tmp
from engine import Engine

from voicecalld.control.client import RpcError
from voicecalld.dialer import GUARD, MAX_BACKOFF, MIN_BACKOFF, Pace, window
from voicecalld.errors import LimitReached
from voicecalld.store import Store
from voicecalld.testing.fake_telnyx import FakeTelnyx
from voicecalld.testing.fake_twilio import FakeTwilio
from voicecalld.testing.ports import free_port

FROM = "+15550001111"
TO = "+15550002222"

# --- the pace -----------------------------------------------------------------------------


def test_the_pace_spaces_dials_by_the_interval_on_an_ideal_schedule() -> None:
    pace, gap = Pace(), 0.25 * (1 + GUARD)   # 4 a second, and the guard against jitter
    pace.take(100.0, 4, catch_up=False)   # nobody waited: the schedule starts now
    assert pace.ready_at(4) == pytest.approx(100 + gap)
    pace.take(100.26, 4)                  # a turn a little late: the schedule keeps its slots
    assert pace.ready_at(4) == pytest.approx(100 + 2 * gap)


def due(pace: Pace, rate: float, now: float) -> int:
    """Dials a turn at ``now`` takes."""
    taken = 0
    while pace.ready_at(rate) <= now:
        pace.take(now, rate)
        taken += 1
    return taken


def test_a_late_queue_catches_up_on_missed_slots_within_the_window() -> None:
    pace, rate, gap = Pace(), 10.0, 0.1 * (1 + GUARD)
    pace.take(100.0, rate, catch_up=False)
    assert due(pace, rate, 100.0 + 5 * gap + 1e-9) == 5  # the wheel stalled: the five missed slots go now
    assert pace.ready_at(rate) == pytest.approx(100.0 + 6 * gap)  # and the schedule goes on
    # Behind by more than a window (stalled, or waiting for a free slot): afresh, no burst.
    assert due(pace, rate, 104.0) == 1
    assert pace.ready_at(rate) == pytest.approx(104.0 + gap)


def test_catching_up_never_passes_the_windows_count() -> None:
    pace, rate, gap = Pace(), 10.0, 0.1 * (1 + GUARD)
    pace.take(100.0, rate, catch_up=False)
    assert due(pace, rate, 101.0) == 9          # stalled right after the first dial: 9 slots missed
    assert due(pace, rate, 100.0 + 10 * gap + 1e-9) == 1  # the next slot: 10 in the window, the count
    assert due(pace, rate, 101.3) == 0          # its slots are due, but the window is full
    assert pace.ready_at(rate) == pytest.approx(101.0 + 1 + GUARD)  # until the burst leaves it


def test_after_idling_nothing_is_caught_up() -> None:
    pace = Pace()
    pace.take(10.0, 4, catch_up=False)
    pace.take(500.0, 4, catch_up=False)  # long idle: a dial with nobody waiting
    assert pace.ready_at(4) == pytest.approx(500 + 0.25 * (1 + GUARD))


@pytest.mark.parametrize("rate,seconds,count", [(50, 1.0, 50), (6, 1.0, 6), (1, 1.0, 1), (0.5, 2.0, 1),
                                                (0.1, 10.0, 1)])
def test_the_window_is_a_second_or_one_interval_and_the_guard(rate: float, seconds: float, count: int) -> None:
    assert window(rate) == (pytest.approx(seconds * (1 + GUARD)), count)


def test_no_rate_means_no_spacing() -> None:
    pace = Pace()
    pace.take(5.0, None)
    assert pace.ready_at(None) == float("-inf")


@pytest.mark.parametrize("rate,retry_after,refusals,low,high", [
    (10, 2.0, 1, 2.0, 2.0),                    # Retry-After is honoured exactly
    (10, 99.0, 1, MAX_BACKOFF, MAX_BACKOFF),   # ... up to the cap
    (10, None, 1, 0.05, 0.1),                  # one interval (0.1 s), half of it random
    (10, None, 3, 0.2, 0.4),                   # doubling with each refusal in a row
    (1000, None, 1, MIN_BACKOFF / 2, MIN_BACKOFF),  # never shorter than MIN_BACKOFF (half random)
    (1, None, 20, MAX_BACKOFF / 2, MAX_BACKOFF),
    (1, None, 1500, MAX_BACKOFF / 2, MAX_BACKOFF),  # hours of refusals: capped, no overflow
])
def test_refusals_pause_dialling(rate: float, retry_after: float | None, refusals: int, low: float,
                                 high: float) -> None:
    pace = Pace(random.Random(7))
    now = 50.0
    for _ in range(refusals):
        now = max(now, pace.ready_at(rate))  # each retry, once the last pause is over, refused again
        pause = pace.refused(now, rate, retry_after)
    resume = now + pause
    assert low <= pause <= high and pace.ready_at(rate) == pytest.approx(resume)
    pace.take(resume, rate)  # the next dial resumes the schedule after the pause, no catching up
    assert pace.ready_at(rate) == pytest.approx(resume + (1 + GUARD) / rate)
    pace.succeeded()
    assert pace.refusals == 0


def test_refusals_of_dials_sent_before_the_pause_do_not_double_it() -> None:
    pace = Pace(random.Random(1))
    first = pace.refused(10.0, 10, None, sent_at=9.9)       # three dials were in flight
    assert pace.refused(10.01, 10, None, sent_at=9.95) == pytest.approx(10.0 + first - 10.01)
    pace.refused(10.02, 10, None, sent_at=9.99)
    assert pace.refusals == 1 and pace.ready_at(10) == pytest.approx(10.0 + first)
    resume = pace.ready_at(10)
    again = pace.refused(resume + 0.01, 10, None, sent_at=resume)  # one sent after it: that doubles
    assert pace.refusals == 2 and 0.1 <= again <= 0.2


# --- the queue in the engine (the mock carrier) ----------------------------------------------


def test_racing_initiates_fill_the_slots_then_the_queue_then_are_refused(make_engine) -> None:
    e: Engine = make_engine(maxConcurrentCalls=3, mock={"answerDelayMs": 60_000},
                            outbound={"maxQueued": 10})
    barrier = threading.Barrier(50)
    results: list[dict[str, Any]] = []
    refused: list[LimitReached] = []
    lock = threading.Lock()

    def dial() -> None:
        barrier.wait()
        try:
            r = e.manager.initiate("hello")
            with lock:
                results.append(r)
        except LimitReached as exc:
            with lock:
                refused.append(exc)

    threads = [threading.Thread(target=dial) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    states = Counter(r["state"] for r in results)
    assert states == {"initiated": 3, "queued": 10} and len(refused) == 37
    assert refused[0].code == -32001 and "outbound.maxQueued" in refused[0].message
    assert sorted(r["queuePosition"] for r in results if r["state"] == "queued") == list(range(1, 11))
    assert (e.manager.active_count, e.manager.queued_count) == (3, 10)
    first = [r["callId"] for r in results if r["state"] == "initiated"][0]
    e.manager.end(first)  # a slot frees: the head of the queue is dialled
    head = [r["callId"] for r in results if r.get("queuePosition") == 1][0]
    e.wait_state(head, "ringing")
    assert (e.manager.active_count, e.manager.queued_count) == (3, 9)


def test_without_a_queue_a_call_the_rate_holds_back_is_refused(make_engine) -> None:
    e: Engine = make_engine(mock={"answerDelayMs": 60_000}, maxConcurrentCalls=5,
                            outbound={"maxQueued": 0, "dialsPerSecond": 0.5})
    assert e.manager.initiate("first")["state"] == "initiated"
    with pytest.raises(LimitReached) as info:
        e.manager.initiate("second")  # within two seconds of the first
    assert info.value.code == -32001
    assert info.value.message.startswith("the dial rate (0.5 per second) allows no call right now")
    assert e.manager.queued_count == 0 and e.manager.active_count == 1


def test_a_reload_that_empties_the_queue_bound_refuses_new_calls_and_keeps_the_queued(make_engine) -> None:
    e: Engine = make_engine(mock={"answerDelayMs": 60_000}, maxConcurrentCalls=1, outbound={"maxQueued": 5})
    e.manager.initiate("first")
    waiting = e.manager.initiate("waiting")["callId"]
    e.manager.reconfigure(e.config.replace({"outbound.maxQueued": 0}))
    with pytest.raises(LimitReached, match="1 calls wait in the dial queue and outbound.maxQueued is 0"):
        e.manager.initiate("refused")
    assert e.manager.status(waiting)["queuePosition"] == 1


# --- the real daemon against the fake Twilio --------------------------------------------------


def twilio_config(fake: FakeTwilio, port: int, **outbound: Any) -> dict[str, Any]:
    return {
        "provider": "twilio", "fromNumber": FROM, "toNumber": TO, "publicUrl": f"http://127.0.0.1:{port}",
        "serve": {"port": port}, "ringTimeoutMs": 60_000, "maxConcurrentCalls": 20,
        "twilio": {"accountSid": fake.account_sid, "authToken": fake.auth_token, "apiBaseUrl": fake.base_url},
        "outbound": {"notifyHangupDelaySec": 0, **outbound},
    }


def call_id_of(form: list[tuple[str, str]]) -> str:
    return {k: v[-1] for k, v in parse_qs(urlsplit(dict(form)["Url"]).query).items()}["callId"]


def creates(fake: FakeTwilio) -> list[Any]:
    return [r for r in list(fake.requests) if r.method == "POST" and r.path.endswith("/Calls.json")]


def placed(fake: FakeTwilio) -> list[str]:
    """Call ids the fake placed (answered 201), in the order it placed them."""
    return [call_id_of(r.form) for r in creates(fake) if r.status == 201]


def queued(d: Daemon) -> dict[str, int]:
    return {c["callId"]: c["queuePosition"] for c in d.rpc("voicecall.list")["calls"] if c["state"] == "queued"}


@pytest.fixture
def ringing_fake() -> Iterator[FakeTwilio]:
    """Callees that ring for a minute: calls stay up (and hold their slots) until ended."""
    with FakeTwilio(ms_per_char=1, answer_delay=60, owned_numbers=[FROM]) as fake:
        yield fake


def test_queued_calls_are_dialled_in_order_at_the_configured_rate(start_daemon, ringing_fake) -> None:
    fake, rate, n = ringing_fake, 4.0, 8
    fake.calls_per_second = rate  # the account's CPS: the daemon must keep to it
    d = start_daemon(twilio_config(fake, free_port(), dialsPerSecond=rate))
    results = [d.rpc("voicecall.initiate", {"message": f"call {i}"}) for i in range(n)]
    ids = [r["callId"] for r in results]
    assert results[0]["state"] == "initiated" and "queuePosition" not in results[0]
    assert [(r["state"], r["queuePosition"]) for r in results[1:]] == [("queued", i) for i in range(1, n)]
    d.wait(lambda: len(placed(fake)) == n, timeout=20, what="every call placed")
    assert placed(fake) == ids  # first in, first out; each exactly once
    records = [d.wait_state(i, "ringing") for i in ids]
    assert records[0]["queuedAt"] is None and all(r["queuedAt"] is not None for r in records[1:])
    # startedAt is when a call was dialled: no faster than the rate, however late the wheel turned.
    assert records[-1]["startedAt"] - records[0]["startedAt"] >= (n - 1) / rate * 1000 - 2
    # The fake refuses creates past its CPS; any it refused were placed later, never twice.
    assert all(r.status in (201, 429) for r in creates(fake))


def test_list_positions_cancel_and_the_queue_bound(start_daemon, ringing_fake) -> None:
    fake = ringing_fake
    config = twilio_config(fake, free_port(), dialsPerSecond=1000, maxQueued=3)
    d = start_daemon({**config, "maxConcurrentCalls": 1})
    code, first, err = d.ctl("call", "--message", "one")
    assert code == 0 and first["state"] == "initiated", err
    waiting = []
    for i in (1, 2, 3):
        code, out, err = d.ctl("call", "--message", f"waiting {i}")
        assert code == 0 and out["state"] == "queued" and out["queuePosition"] == i, err
        waiting.append(out["callId"])
    assert queued(d) == {waiting[0]: 1, waiting[1]: 2, waiting[2]: 3}
    assert d.rpc("voicecall.status", {"callId": waiting[1]})["queuePosition"] == 2
    status = d.rpc("daemon.status")
    assert (status["activeCalls"], status["queuedCalls"]) == (1, 3)

    code, out, err = d.ctl("call", "--message", "one too many")
    assert code == 1 and out is None and "(error -32001)" in err and "outbound.maxQueued" in err

    # Ending a queued call cancels it: no carrier request, hangup-bot.
    ended = d.rpc("voicecall.end", {"callId": waiting[1]})
    assert ended == {"callId": waiting[1], "ok": True, "endReason": "hangup-bot"}
    record = d.rpc("voicecall.status", {"callId": waiting[1]})
    assert (record["state"], record["providerCallId"], record["answeredAt"]) == ("hangup-bot", None, None)
    assert queued(d) == {waiting[0]: 1, waiting[2]: 2}
    with pytest.raises(RpcError) as info:
        d.rpc("voicecall.speak", {"callId": waiting[0], "message": "too early"})
    assert info.value.code == -32002 and "queued" in info.value.message

    # A slot frees: the head of the queue goes, then the next.
    d.rpc("voicecall.end", {"callId": first["callId"]})
    d.wait(lambda: placed(fake) == [first["callId"], waiting[0]], what="the head dialled")
    assert queued(d) == {waiting[2]: 1}
    d.rpc("voicecall.end", {"callId": waiting[0]})
    d.wait(lambda: placed(fake) == [first["callId"], waiting[0], waiting[2]], what="the next dialled")
    assert queued(d) == {}
    d.rpc("voicecall.end", {"callId": waiting[2]})
    history = {c["callId"]: c for c in d.rpc("voicecall.history", {"limit": 10})["calls"]}
    assert all(history[i]["state"] == "hangup-bot" for i in (first["callId"], *waiting))


def test_a_rate_limited_dial_is_queued_again_after_retry_after_and_placed_once(start_daemon, fake) -> None:
    d = start_daemon(twilio_config(fake, free_port(), dialsPerSecond=1000))
    fake.fail_next_creates(2, status=429, retry_after=1)
    events = Events(d)
    try:
        first = d.rpc("voicecall.initiate", {"message": "first"})
        assert first["state"] == "queued" and first["queuePosition"] == 1  # refused, so it waits
        second = d.rpc("voicecall.initiate", {"message": "second"})
        assert second["state"] == "queued" and second["queuePosition"] == 2
        d.wait(lambda: len(placed(fake)) == 2, timeout=15, what="both placed")
        assert sorted(placed(fake)) == sorted([first["callId"], second["callId"]])  # each placed once
        attempts = [r for r in creates(fake) if call_id_of(r.form) == first["callId"]]
        later = [r for r in creates(fake) if call_id_of(r.form) == second["callId"]]
        assert [r.status for r in attempts] == [429, 429, 201] and [r.status for r in later] == [201]
        # Retry-After (1 s) is honoured: by the refused call, and by the queue
        # behind it, which the refused call heads (it is tried again first).
        assert all(b.at - a.at >= 1.0 for a, b in zip(attempts, attempts[1:], strict=False))
        assert later[0].at - attempts[0].at >= 1.0
        assert creates(fake).index(later[0]) > creates(fake).index(attempts[1])
        record = d.wait_state(first["callId"], "completed", timeout=15)
        assert record["error"] is None
        states = [e["data"]["to"] for e in events.named("call.state", first["callId"])]
        assert states[:5] == ["queued", "initiated", "queued", "initiated", "ringing"]
    finally:
        events.close()


def test_a_daemon_killed_with_calls_queued_dials_each_exactly_once_after_restart(ringing_fake) -> None:
    fake = ringing_fake
    tmp = short_tmp("dial-restart")
    daemons: list[Daemon] = []
    try:
        port = free_port()
        config = twilio_config(fake, port, dialsPerSecond=1000)
        d = Daemon(tmp, {**config, "maxConcurrentCalls": 2})
        daemons.append(d)
        ids = [d.rpc("voicecall.initiate", {"message": f"call {i}"})["callId"] for i in range(6)]
        d.wait(lambda: placed(fake) == ids[:2], what="two placed")
        for call_id in ids[:2]:
            d.wait_state(call_id, "ringing")
        assert list(queued(d)) == ids[2:]  # waiting for a slot: nothing more can be dialled
        d.kill()
        logged = Store(str(tmp / "state")).load().records
        assert [logged[i]["state"] for i in ids] == ["ringing"] * 2 + ["queued"] * 4

        d2 = Daemon(tmp, {**config, "maxConcurrentCalls": 3})  # room for one more
        daemons.append(d2)
        # The head of the restored queue is dialled; the others keep their order.
        d2.wait(lambda: placed(fake) == ids[:3], what="the head of the queue placed")
        assert queued(d2) == {ids[3]: 1, ids[4]: 2, ids[5]: 3}
        for n in range(3):  # each call that ends lets the next one go, in order
            d2.rpc("voicecall.end", {"callId": ids[n]})
            d2.wait(lambda n=n: placed(fake) == ids[:4 + n], what=f"call {4 + n} placed")
        assert Counter(placed(fake)) == dict.fromkeys(ids, 1)  # the two placed before are not dialled again
        for call_id in ids[3:]:
            assert d2.wait_state(call_id, "ringing")["providerCallId"]
        assert d2.stop() == 0  # hangs up the last three
    finally:
        for daemon in daemons:
            daemon.kill()
        remove(tmp)


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio(time_scale=0.05, ms_per_char=1, owned_numbers=[FROM]) as f:
        yield f


# --- the real daemon against the fake Telnyx --------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def telnyx_daemon(start_daemon: Any, fake: FakeTelnyx, **extra: Any) -> Daemon:
    port = free_port()
    return start_daemon(merge({
        "provider": "telnyx", "fromNumber": FROM, "toNumber": TO, "publicUrl": f"http://127.0.0.1:{port}",
        "serve": {"port": port}, "maxConcurrentCalls": 30,
        "telnyx": {"apiKey": fake.api_key, "connectionId": fake.connection_id, "publicKey": fake.public_key_b64,
                   "apiBaseUrl": fake.base_url},
        "outbound": {"notifyHangupDelaySec": 0.05},
    }, extra))


def dials(fake: FakeTelnyx) -> list[Any]:
    return [r for r in list(fake.requests) if r.method == "POST" and r.path == "/v2/calls"]


def test_telnyx_90103_requeues_the_dial_which_is_placed_once(start_daemon) -> None:
    with FakeTelnyx(seed=3, answer_after=0.02) as fake:
        d = telnyx_daemon(start_daemon, fake)
        fake.fail_next(1, status=429, code="90103", path_contains="/v2/calls")
        result = d.rpc("voicecall.initiate", {"message": "hello"})
        assert result["state"] == "queued"
        record = d.wait_state(result["callId"], "completed", timeout=10)
        assert [r.status for r in dials(fake)] == [429, 200]
        assert [c for c in fake.calls.values() if c.client_state == b64(result["callId"])] != []
        assert sum(c.client_state == b64(result["callId"]) for c in fake.calls.values()) == 1
        assert record["error"] is None


def test_telnyx_dials_past_the_accounts_limit_back_off_until_each_is_placed_once(start_daemon) -> None:
    # The daemon is told it may dial far faster than the account allows:
    # Telnyx's 429 / 90103 (2 per second over 5 s) paces it instead.
    with FakeTelnyx(seed=4, answer_after=30, dials_per_second=2) as fake:
        d = telnyx_daemon(start_daemon, fake, outbound={"dialsPerSecond": 1000})
        ids = [d.rpc("voicecall.initiate", {"message": f"call {i}"})["callId"] for i in range(14)]
        d.wait(lambda: sum(r.status == 200 for r in dials(fake)) == 14, timeout=30, what="every dial placed")
        refused = [r for r in dials(fake) if r.status == 429]
        assert refused and all(r.response["errors"][0]["code"] == "90103" for r in refused)
        states = Counter(c.client_state for c in fake.calls.values())
        assert states == {b64(i): 1 for i in ids}  # each placed exactly once
        for call_id in ids:
            d.wait_state(call_id, "ringing")
