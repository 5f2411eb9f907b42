"""The JSONL call log: durability, torn and corrupt lines, scale."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from voicecalld.errors import StoreFailed
from voicecalld.store import LOG_NAME, Store


def rec(call_id: str, state: str = "initiated", **extra) -> dict:
    return {"callId": call_id, "provider": "mock", "state": state, **extra}


def test_append_then_load_keeps_last_snapshot_per_call(tmp_path) -> None:
    store = Store(str(tmp_path))
    store.append(rec("a"))
    store.append(rec("b"))
    store.append(rec("a", "ringing"))
    store.append(rec("a", "completed", endReason="completed"))
    store.close()
    result = Store(str(tmp_path)).load()
    assert result.records == {"a": rec("a", "completed", endReason="completed"), "b": rec("b")}
    assert (result.lines, result.corrupt) == (4, 0)


def test_log_file_is_owner_only(tmp_path) -> None:
    store = Store(str(tmp_path / "state"))
    store.append(rec("a"))
    mode = stat.S_IMODE(os.stat(store.path).st_mode)
    assert mode & 0o077 == 0
    store.close()


@pytest.mark.parametrize("cut", [1, 5, 20, -2])
def test_torn_last_line_is_skipped_and_next_append_is_clean(tmp_path, cut) -> None:
    store = Store(str(tmp_path))
    for i in range(3):
        store.append(rec(f"c{i}", "answered"))
    store.close()
    path = tmp_path / LOG_NAME
    data = path.read_bytes()
    last = json.dumps(rec("c3", "answered"), separators=(",", ":")).encode()
    path.write_bytes(data + last[:cut])  # a crash in the middle of writing line 4
    store = Store(str(tmp_path))
    store.append(rec("c4"))
    store.close()
    result = Store(str(tmp_path)).load()
    assert sorted(result.records) == ["c0", "c1", "c2", "c4"]
    assert result.corrupt == 1


def test_corrupt_lines_in_the_middle_lose_nothing_else(tmp_path) -> None:
    path = tmp_path / LOG_NAME
    lines = [json.dumps(rec("a")), "{not json", json.dumps(rec("b")), "\x00\x00\x00", json.dumps([1, 2]),
             json.dumps({"no": "callId"}), json.dumps(rec("a", "completed")), ""]
    path.write_text("\n".join(lines) + "\n")
    path.write_bytes(path.read_bytes() + b"\xff\xfe\n")  # invalid UTF-8
    path.write_bytes(path.read_bytes() + b"[" * 100_000 + b"\n")  # nested past the parser's recursion limit
    result = Store(str(tmp_path)).load()
    assert result.records == {"a": rec("a", "completed"), "b": rec("b")}
    assert result.corrupt == 6


def test_ten_thousand_records_reload(tmp_path) -> None:
    store = Store(str(tmp_path))
    for i in range(10_000):
        store.append(rec(f"call-{i % 2500}", "answered" if i < 7500 else "completed", n=i))
    store.close()
    result = Store(str(tmp_path)).load()
    assert len(result.records) == 2500 and result.lines == 10_000
    assert all(r["state"] == "completed" for r in result.records.values())
    assert result.records["call-7"]["n"] == 7507


def test_find_and_history_scan_from_the_end(tmp_path) -> None:
    store = Store(str(tmp_path))
    for i in range(3000):  # several 64 KiB blocks
        store.append(rec(f"id-{i}", "answered", pad="x" * 40))
    store.append(rec("id-5", "completed"))
    assert store.find("id-5")["state"] == "completed"
    assert store.find("id-2999")["state"] == "answered"
    assert store.find("id-0")["callId"] == "id-0"
    assert store.find("missing") is None
    assert store.find("id-29") is not None and store.find("id-29")["callId"] == "id-29"
    history = store.history(3)
    assert [r["callId"] for r in history] == ["id-2998", "id-2999", "id-5"]
    assert history[-1]["state"] == "completed"
    assert store.history(0) == []
    store.close()


def test_concurrent_appends_all_land(tmp_path) -> None:
    store = Store(str(tmp_path))

    def writer(k: int) -> None:
        for i in range(200):
            store.append(rec(f"w{k}-{i}", pad="y" * (i % 300)))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    result = Store(str(tmp_path)).load()
    assert len(result.records) == 1600 and result.corrupt == 0


_WRITER = textwrap.dedent("""
    import sys
    from voicecalld.store import Store
    store = Store(sys.argv[1])
    i = 0
    while True:
        store.append({"callId": f"k{i}", "state": "answered", "pad": "z" * (i % 500)})
        print(i, flush=True)   # acknowledged: the append returned
        i += 1
""")


@pytest.mark.parametrize("acks", [1, 37, 400])
def test_kill_9_mid_write_keeps_every_acknowledged_record(tmp_path, acks) -> None:
    """The process dies, the machine does not: this catches a line
    acknowledged before it was written (buffered), not a missing fsync (the
    kernel keeps unsynced data across a process kill); the fsync is checked
    by test_append_returns_only_after_its_line_was_synced."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    seen = -1
    while seen < acks:
        seen = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    result = Store(str(tmp_path)).load()
    for i in range(seen + 1):
        assert f"k{i}" in result.records
    assert result.corrupt <= 1  # at most the line being written when killed


class SyncRecorder:
    """Stands in for os.fdatasync/os.fsync: records, for every sync of the
    log, how many bytes of it were written by then, then really syncs."""

    def __init__(self, monkeypatch, path: str) -> None:
        self.path = path
        self.synced: list[int] = []  # file size at each sync, in order
        self.lock = threading.Lock()
        self.fail_next: OSError | None = None
        for name in ("fdatasync", "fsync"):
            real = getattr(os, name)
            monkeypatch.setattr(os, name, self._wrap(real))

    def _wrap(self, real):
        def sync(fd: int) -> None:
            is_log = os.path.exists(self.path) and os.path.samestat(os.fstat(fd), os.stat(self.path))
            if is_log:
                with self.lock:
                    failure, self.fail_next = self.fail_next, None
                    if failure is not None:
                        raise failure
                    self.synced.append(os.fstat(fd).st_size)
            real(fd)
        return sync

    def count(self) -> int:
        with self.lock:
            return len(self.synced)

    def covered_by(self, n: int) -> int:
        """The most bytes any of the first ``n`` syncs covered."""
        with self.lock:
            return max(self.synced[:n], default=0)


def end_of_line(path: str, call_id: str) -> int:
    data = open(path, "rb").read()
    start = data.index(json.dumps(call_id).encode())
    return data.index(b"\n", start) + 1


def test_append_returns_only_after_its_line_was_synced(tmp_path, monkeypatch) -> None:
    store = Store(str(tmp_path))
    syncs = SyncRecorder(monkeypatch, store.path)
    for i in range(20):
        store.append(rec(f"s{i}", pad="x" * i))
        assert syncs.covered_by(syncs.count()) >= end_of_line(store.path, f"s{i}")

    # Concurrent appenders share syncs, but none returns before a sync covered its line.
    problems: list[str] = []

    def writer(k: int) -> None:
        for i in range(50):
            call_id = f"w{k}-{i}"
            store.append(rec(call_id))
            seen = syncs.count()  # syncs that happened before append returned
            if syncs.covered_by(seen) < end_of_line(store.path, call_id):
                problems.append(call_id)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert problems == []
    assert syncs.count() <= 20 + 300  # at most one sync per append
    store.close()


def test_a_failed_sync_fails_every_append_it_covered(tmp_path, monkeypatch) -> None:
    store = Store(str(tmp_path))
    syncs = SyncRecorder(monkeypatch, store.path)
    syncs.fail_next = OSError(5, "Input/output error")
    with pytest.raises(StoreFailed) as info:
        store.append(rec("a"))
    assert info.value.code == -32005
    assert info.value.message == f"the call log cannot be written: Input/output error ({store.path})"
    assert store.failure == f"Input/output error ({store.path})"
    store.append(rec("b"))  # the next sync works: the log is usable again
    assert store.failure is None
    store.close()


def short_then_full(real_write):
    """os.write whose first call writes part of the line, then fails as a full disk does."""
    calls = {"n": 0}

    def write(fd: int, data) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            real_write(fd, bytes(data[:10]))  # part of the line reaches the file ...
            raise OSError(28, "No space left on device")  # ... then the disk is full
        return real_write(fd, data)
    return write


def test_a_failed_write_leaves_no_fragment_and_the_log_recovers(tmp_path, monkeypatch) -> None:
    store = Store(str(tmp_path))
    store.append(rec("before"))
    real_write = os.write
    monkeypatch.setattr(os, "write", short_then_full(real_write))
    with pytest.raises(StoreFailed, match="No space left on device"):
        store.append(rec("lost", pad="p" * 100))
    monkeypatch.setattr(os, "write", real_write)
    store.append(rec("after"))
    store.close()
    result = Store(str(tmp_path)).load()
    assert sorted(result.records) == ["after", "before"] and result.corrupt == 0


def test_a_fragment_that_cannot_be_cut_off_costs_only_itself(tmp_path, monkeypatch) -> None:
    store = Store(str(tmp_path))
    store.append(rec("before"))

    def no_truncate(fd: int, size: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "write", short_then_full(os.write))
    monkeypatch.setattr(os, "ftruncate", no_truncate)
    with pytest.raises(StoreFailed):
        store.append(rec("lost", pad="p" * 100))
    store.append(rec("after"))  # starts a line of its own
    store.append(rec("later"))
    store.close()
    result = Store(str(tmp_path)).load()
    assert sorted(result.records) == ["after", "before", "later"] and result.corrupt == 1


def test_append_after_close_fails_cleanly(tmp_path) -> None:
    store = Store(str(tmp_path))
    store.append(rec("a"))
    store.close()
    store.close()  # twice is fine
    unrelated = os.open(os.devnull, os.O_WRONLY)  # may reuse the log's descriptor number
    try:
        with pytest.raises(StoreFailed, match="closed"):
            store.append(rec("late"))
    finally:
        os.close(unrelated)
    assert list(Store(str(tmp_path)).load().records) == ["a"]


# --- compaction ------------------------------------------------------------------------------


def test_compaction_keeps_last_snapshots_live_calls_and_order(tmp_path) -> None:
    store = Store(str(tmp_path), keep_calls=2)
    for i in range(5):
        store.append(rec(f"e{i}", "answered"))
        store.append(rec(f"e{i}", "completed", endedAt=i + 1))
    store.append(rec("live", "answered"))
    store.append(rec("e0", "completed", endedAt=99, note="touched last"))
    before = store.history(100)
    store.compact()
    result = Store(str(tmp_path)).load()
    # The live call and the two most recently logged ended calls survive.
    assert list(result.records) == ["e4", "live", "e0"]
    assert result.records["e0"]["note"] == "touched last" and result.lines == 3
    assert [r["callId"] for r in store.history(100)] == ["e4", "live", "e0"]
    assert [r["callId"] for r in before][-3:] == ["e4", "live", "e0"]
    store.append(rec("after", "initiated"))  # appends go to the new file
    assert Store(str(tmp_path)).load().records["after"]["state"] == "initiated"
    store.close()


def test_compaction_runs_by_itself_and_loses_nothing_under_concurrent_appends(tmp_path) -> None:
    store = Store(str(tmp_path), compact_bytes=64 * 1024, keep_calls=100_000)
    expected: dict[str, int] = {}
    lock = threading.Lock()

    def writer(k: int) -> None:
        for i in range(1500):
            cid = f"w{k}-{i % 40}"
            store.append(rec(cid, "answered", n=i, pad="p" * 100))
            with lock:
                expected[cid] = i

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 10
    while store._compacting and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.compactions >= 1
    result = Store(str(tmp_path)).load()
    assert {cid: r["n"] for cid, r in result.records.items()} == expected
    assert result.corrupt == 0
    assert os.path.getsize(store.path) < 10 * 64 * 1024  # it really shrank (6000 lines would be ~900 KiB)
    assert not os.path.exists(store.path + ".compact")
    store.close()


def test_leftover_temporary_file_from_a_crashed_compaction_is_harmless(tmp_path) -> None:
    store = Store(str(tmp_path))
    store.append(rec("a", "answered"))
    store.close()
    (tmp_path / (LOG_NAME + ".compact")).write_bytes(b'{"callId":"half')
    store = Store(str(tmp_path))
    store.append(rec("b"))
    store.compact()
    assert sorted(Store(str(tmp_path)).load().records) == ["a", "b"]
    store.close()
