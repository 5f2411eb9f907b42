"""The timing wheel (driven tick by tick) and its thread shell."""

from __future__ import annotations

import random
import threading
import time

import pytest

from voicecalld.timers import TimerService, TimerWheel
from voicecalld.workerpool import WorkerPool


def test_fires_in_deadline_order_within_one_advance() -> None:
    wheel = TimerWheel(slots=8)
    fired: list[str] = []
    for name, ticks in [("c", 30), ("a", 3), ("b", 17), ("a2", 3), ("d", 8)]:
        wheel.schedule(ticks, lambda n=name: fired.append(n))
    for cb in wheel.advance(100):
        cb()
    assert fired == ["a", "a2", "d", "b", "c"]  # ties keep scheduling order
    assert len(wheel) == 0


def test_fires_exactly_at_its_tick_across_many_revolutions() -> None:
    wheel = TimerWheel(slots=4)
    fired_at: dict[int, int] = {}
    for ticks in (1, 4, 5, 13, 64, 65):
        wheel.schedule(ticks, lambda t=ticks: fired_at.__setitem__(t, wheel.now))
    for tick in range(1, 70):
        for cb in wheel.advance(tick):
            cb()
    assert fired_at == {t: t for t in (1, 4, 5, 13, 64, 65)}


def test_zero_or_negative_delay_fires_on_the_next_tick() -> None:
    wheel = TimerWheel()
    wheel.schedule(0, lambda: None)
    wheel.schedule(-5, lambda: None)
    assert wheel.advance(0) == []
    assert len(wheel.advance(1)) == 2


def test_cancel() -> None:
    wheel = TimerWheel(slots=16)
    fired: list[int] = []
    timers = [wheel.schedule(i, lambda i=i: fired.append(i)) for i in range(1, 40)]
    for t in timers[::2]:
        assert wheel.cancel(t) is True
        assert wheel.cancel(t) is False  # second cancel is a no-op
    assert len(wheel) == 19
    for cb in wheel.advance(1000):
        cb()
    assert fired == list(range(2, 40, 2))
    assert wheel.cancel(timers[1]) is False  # already fired


def test_random_schedule_matches_a_reference_model() -> None:
    rng = random.Random(7)
    wheel = TimerWheel(slots=32)
    expected: dict[int, int] = {}
    fired: dict[int, int] = {}
    handles = {}
    for i in range(2000):
        ticks = rng.randint(1, 300)
        handles[i] = wheel.schedule(ticks, lambda i=i: fired.__setitem__(i, wheel.now))
        expected[i] = ticks
    for i in rng.sample(range(2000), 500):
        wheel.cancel(handles[i])
        del expected[i]
    for tick in range(1, 301):
        for cb in wheel.advance(tick):
            cb()
    assert fired == expected


def test_advance_jump_larger_than_the_ring() -> None:
    wheel = TimerWheel(slots=8)
    fired: list[int] = []
    for ticks in (5, 50, 500):
        wheel.schedule(ticks, lambda t=ticks: fired.append(t))
    for cb in wheel.advance(60):
        cb()
    assert fired == [5, 50]
    for cb in wheel.advance(10_000):
        cb()
    assert fired == [5, 50, 500]


# --- the threaded service -----------------------------------------------------------------------


@pytest.fixture
def service():
    pool = WorkerPool(4, name="t-worker")
    svc = TimerService(pool, tick=0.005)
    svc.start()
    yield svc
    svc.stop()
    pool.stop()


def test_service_fires_in_order_on_worker_threads(service: TimerService) -> None:
    fired: list[tuple[float, str]] = []
    done = threading.Event()
    lock = threading.Lock()

    def note(name: str) -> None:
        with lock:
            fired.append((time.monotonic(), threading.current_thread().name))
            if len(fired) == 3:
                done.set()

    start = time.monotonic()
    service.call_later(0.09, note, "c")
    service.call_later(0.03, note, "a")
    service.call_later(0.06, note, "b")
    assert done.wait(5)
    assert all(t - start >= 0.03 for t, _ in fired)  # never early
    assert all(name.startswith("t-worker") for _, name in fired)


def test_service_never_fires_early(service: TimerService) -> None:
    lateness: list[float] = []
    done = threading.Event()
    n = 50

    def check(due: float) -> None:
        lateness.append(time.monotonic() - due)
        if len(lateness) == n:
            done.set()

    for i in range(n):
        delay = 0.001 * (i % 17)
        service.call_later(delay, check, time.monotonic() + delay)
    assert done.wait(5)
    assert min(lateness) >= 0


def test_service_cancel_and_concurrent_scheduling(service: TimerService) -> None:
    fired: list[int] = []
    lock = threading.Lock()

    def worker(base: int) -> None:
        for i in range(200):
            t = service.call_later(0.02, lambda v=base + i: (lock.acquire(), fired.append(v), lock.release()))
            if i % 2:
                service.cancel(t)

    threads = [threading.Thread(target=worker, args=(k * 1000,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 5
    while len(fired) < 800 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert sorted(fired) == sorted(k * 1000 + i for k in range(8) for i in range(0, 200, 2))


def test_slow_callback_does_not_delay_other_timers(service: TimerService) -> None:
    release = threading.Event()
    quick = threading.Event()
    service.call_later(0.0, release.wait, 2)  # occupies one worker
    service.call_later(0.02, quick.set)
    assert quick.wait(1)
    release.set()


def test_saturated_pool_defers_callbacks_without_blocking_the_wheel() -> None:
    pool = WorkerPool(1, queue_size=1)
    svc = TimerService(pool, tick=0.005)
    svc.start()
    try:
        gate = threading.Event()
        ran: list[int] = []
        svc.call_later(0, gate.wait, 5)
        for i in range(5):
            svc.call_later(0.01, ran.append, i)
        time.sleep(0.1)
        before = svc.heartbeat
        time.sleep(0.05)
        assert svc.heartbeat > before  # the wheel keeps turning
        gate.set()
        deadline = time.monotonic() + 5
        while len(ran) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ran == [0, 1, 2, 3, 4]
    finally:
        svc.stop()
        pool.stop()


def test_idle_service_keeps_a_heartbeat() -> None:
    pool = WorkerPool(1)
    svc = TimerService(pool, tick=0.005)
    svc.start()
    try:
        first = svc.heartbeat
        time.sleep(0.7)
        assert svc.heartbeat > first
    finally:
        svc.stop()
        pool.stop()


def test_stop_joins_the_thread() -> None:
    pool = WorkerPool(2)
    svc = TimerService(pool)
    svc.start()
    svc.call_later(10, lambda: None)
    svc.stop()
    pool.stop()
    assert not svc._thread.is_alive()
    assert not any(t.is_alive() for t in pool._threads)
