"""KeyedWorkQueue: per-key order, parallel keys, bounds, shutdown."""

from __future__ import annotations

import threading
import time

import pytest

from voicecalld.workqueue import KeyedWorkQueue


def wait_until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


def test_one_keys_tasks_run_in_order_one_at_a_time() -> None:
    queue = KeyedWorkQueue("t", workers=4)
    seen: list[int] = []
    running = [0]
    overlap = [False]
    lock = threading.Lock()

    def task(i: int) -> None:
        with lock:
            running[0] += 1
            overlap[0] |= running[0] > 1
        time.sleep(0.001)
        with lock:
            seen.append(i)
            running[0] -= 1

    for i in range(50):
        assert queue.submit("call-1", lambda i=i: task(i))
    wait_until(lambda: len(seen) == 50)
    assert seen == list(range(50)) and not overlap[0]
    assert queue.stop()


def test_keys_run_in_parallel_and_a_slow_key_does_not_block_others() -> None:
    queue = KeyedWorkQueue("t", workers=2)
    release = threading.Event()
    done: list[str] = []
    queue.submit("slow", lambda: (release.wait(5), done.append("slow")))
    queue.submit("slow", lambda: done.append("slow-2"))
    queue.submit("fast", lambda: done.append("fast"))
    wait_until(lambda: "fast" in done)
    assert "slow" not in done
    release.set()
    wait_until(lambda: done[-1] == "slow-2")
    assert queue.stop()


def test_more_keys_than_workers_all_get_done() -> None:
    queue = KeyedWorkQueue("t", workers=2)
    done: set[int] = set()
    lock = threading.Lock()

    def add(i: int) -> None:
        with lock:
            done.add(i)

    for i in range(40):
        assert queue.submit(f"k{i}", lambda i=i: add(i))
    wait_until(lambda: len(done) == 40)
    assert len(queue._threads) <= 2
    assert queue.stop()


def test_submit_refuses_beyond_the_bound_and_a_failing_task_does_not_stop_its_key() -> None:
    queue = KeyedWorkQueue("t", workers=1, max_pending=3)
    gate = threading.Event()
    done: list[str] = []
    assert queue.submit("a", lambda: gate.wait(5))
    wait_until(lambda: queue.pending == 0)  # the first task is running, not pending

    def boom() -> None:
        raise RuntimeError("deliberate")

    assert queue.submit("a", boom)
    assert queue.submit("a", lambda: done.append("after"))
    assert queue.submit("b", lambda: done.append("b"))
    assert not queue.submit("c", lambda: done.append("c"))  # full: the caller says "retry later"
    gate.set()
    wait_until(lambda: sorted(done) == ["after", "b"])
    assert queue.submit("c", lambda: done.append("c"))
    wait_until(lambda: "c" in done)
    assert queue.stop()


def test_idle_threads_exit_and_come_back() -> None:
    queue = KeyedWorkQueue("t", workers=2, idle=0.05)
    done: list[int] = []
    queue.submit("a", lambda: done.append(1))
    wait_until(lambda: done == [1] and not queue._threads)
    queue.submit("a", lambda: done.append(2))
    wait_until(lambda: done == [1, 2])
    assert queue.stop()


def test_stop_drops_queued_work_refuses_new_and_reports_a_stuck_worker() -> None:
    queue = KeyedWorkQueue("t", workers=1)
    gate = threading.Event()
    done: list[str] = []
    queue.submit("a", lambda: gate.wait(5))
    queue.submit("a", lambda: done.append("queued"))
    wait_until(lambda: queue.pending == 1)
    assert queue.stop(timeout=0.05) is False  # the running task is still running
    assert queue.pending == 0 and not queue.submit("a", lambda: done.append("late"))
    gate.set()
    wait_until(lambda: not queue._threads)
    assert done == []


def test_invalid_sizes() -> None:
    with pytest.raises(ValueError):
        KeyedWorkQueue("t", workers=0)
