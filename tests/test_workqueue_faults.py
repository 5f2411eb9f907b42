"""KeyedWorkQueue under the conditions that cost calls: a key made to wait
behind another key's slow task although a thread could have taken it, and
acknowledged work dropped at shutdown. Deterministic: events and barriers,
no sleeps."""

from __future__ import annotations

import threading

import pytest

from voicecalld.testing._wait import wait_until
from voicecalld.workqueue import KeyedWorkQueue


def one_idle_thread(queue: KeyedWorkQueue) -> None:
    """Leave the queue with exactly one thread, idle and waiting for work."""
    done = threading.Event()
    assert queue.submit("warm-up", done.set)
    assert done.wait(5)
    wait_until(lambda: len(queue._threads) == 1 and queue._idle_threads == 1, 5, "the worker to go idle")


@pytest.mark.parametrize("order", [("slow", "other"), ("other", "slow")])
def test_a_second_key_gets_its_own_thread_while_the_idle_one_has_not_woken(order: tuple[str, str]) -> None:
    queue = KeyedWorkQueue("t", workers=4)
    try:
        one_idle_thread(queue)
        # Each task waits for the other: they finish only if they run at the
        # same time, on two threads.
        both = threading.Barrier(2, timeout=5)
        ran: dict[str, str] = {}

        def task(key: str) -> None:
            both.wait()
            ran[key] = threading.current_thread().name

        # Holding the queue's lock keeps the idle thread from waking between
        # the two submissions: both keys are ready before it runs.
        with queue._cond:
            for key in order:
                assert queue.submit(key, lambda key=key: task(key))
        wait_until(lambda: len(ran) == 2 or both.broken, 10, "both tasks")
        assert not both.broken, "one key waited behind the other although a thread could have been started"
        assert ran["slow"] != ran["other"]
    finally:
        assert queue.stop()


def test_keys_beyond_the_idle_threads_start_threads_up_to_the_bound() -> None:
    queue = KeyedWorkQueue("t", workers=3)
    try:
        one_idle_thread(queue)
        all_three = threading.Barrier(3, timeout=5)
        fourth = threading.Event()
        with queue._cond:
            for key in ("a", "b", "c"):
                assert queue.submit(key, all_three.wait)
            assert queue.submit("d", fourth.set)  # no thread left for it: it waits its turn
        assert fourth.wait(10) and not all_three.broken
        assert len(queue._threads) <= 3
    finally:
        assert queue.stop()


def test_stop_with_drain_runs_the_queued_tasks_first() -> None:
    queue = KeyedWorkQueue("t", workers=2)
    gate = threading.Event()
    done: list[str] = []
    lock = threading.Lock()

    def record(name: str) -> None:
        with lock:
            done.append(name)

    assert queue.submit("a", lambda: (gate.wait(5), record("a1")))
    assert queue.submit("b", lambda: (gate.wait(5), record("b1")))
    wait_until(lambda: queue.pending == 0, 5, "both keys to be running")
    for i in range(2, 6):
        assert queue.submit("a", lambda i=i: record(f"a{i}"))
    assert queue.submit("c", lambda: record("c1"))  # waits for a free thread
    stopper = threading.Thread(target=lambda: done.append(f"stopped:{queue.stop(timeout=10, drain=True)}"))
    stopper.start()
    wait_until(lambda: not queue.submit("late", lambda: record("late")), 5, "stop to refuse new work")
    gate.set()
    stopper.join(15)
    assert not stopper.is_alive()
    assert done[-1] == "stopped:True"
    assert [n for n in done if n.startswith("a")] == ["a1", "a2", "a3", "a4", "a5"]
    assert sorted(done[:-1]) == ["a1", "a2", "a3", "a4", "a5", "b1", "c1"]
    assert queue.pending == 0 and not queue._threads


def test_stop_with_drain_keeps_to_its_deadline_and_drops_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    queue = KeyedWorkQueue("t", workers=1)
    gate = threading.Event()
    done: list[str] = []
    assert queue.submit("a", lambda: gate.wait(10))
    wait_until(lambda: queue.pending == 0, 5, "the first task to run")
    assert queue.submit("a", lambda: done.append("queued"))
    assert queue.stop(timeout=0.05, drain=True) is False  # the running task outlives the deadline
    assert queue.pending == 0
    assert "1 queued task(s) dropped at shutdown" in caplog.text
    gate.set()
    wait_until(lambda: not queue._threads, 5, "the worker to exit")
    assert done == []
