"""The call log: ``<store>/calls.jsonl``, one full record snapshot per line.

Appends are durable before they return (write, then fsync). Concurrent
appenders share fsyncs ("group commit"): whoever syncs covers every line
written before the sync began, so a burst of N appends costs far fewer than
N fsyncs while each caller still waits for its own line to be on disk.

Loading keeps the last snapshot per ``callId`` and skips, and counts, lines
that are torn (a crash mid-write) or corrupt, without losing the others.

A write or sync that fails (disk full, I/O error) raises ``StoreFailed``
and nothing is acknowledged: a partly written line is cut off again (or,
if that fails too, ended by the next line's leading newline, so it loads as
one skipped line), and every appender whose line a failed sync covered gets
the error, even if a later sync succeeds. ``failure`` holds the last error
until an append succeeds again; each line is a full snapshot, so the next
successful append of a call brings its record up to date. After ``close``
appends fail with ``StoreFailed`` rather than touching a closed descriptor.

Compaction: once the file grows past ``compact_bytes``, a background thread
rewrites it keeping only the last snapshot of each call: every call still
in progress, and the ``keep_calls`` most recently logged ended calls (older
ended calls are dropped). The rewrite goes to a temporary file that is
fsynced and renamed over the log, so a crash at any point leaves either the
old or the new file, both complete. Appends continue while the snapshot is
being rewritten; they are blocked only for the final catch-up and rename.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import jsonsafe, metrics
from .errors import StoreFailed

log = logging.getLogger(__name__)

LOG_NAME = "calls.jsonl"
_BLOCK = 64 * 1024


@dataclass
class LoadResult:
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    lines: int = 0
    corrupt: int = 0


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = jsonsafe.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("callId"), str):
        return None
    return record


def _ended(record: dict[str, Any]) -> bool:
    return record.get("endedAt") is not None


class Store:
    def __init__(self, directory: str, *, compact_bytes: int | None = None, keep_calls: int = 50_000) -> None:
        self.directory = directory
        self.path = os.path.join(directory, LOG_NAME)
        self.compact_bytes = compact_bytes
        self.keep_calls = keep_calls
        self.compactions = 0
        self._compacting = False
        os.makedirs(directory, mode=0o750, exist_ok=True)
        created = not os.path.exists(self.path)
        # The log holds phone numbers and transcripts: owner-only.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if created:
            self._fsync_dir()
        self._write_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._written = 0  # lines written so far
        self._synced = 0   # lines known to be on disk
        #: The last write or sync error (a sentence), None while appends succeed.
        self.failure: str | None = None
        self._closed = False
        self._torn = False  # a failed write left a fragment that could not be cut off
        self._pending = 0   # appenders between their write and the verdict on its sync
        self._lost: list[tuple[int, int]] = []  # (after, through]: lines whose sync failed
        self._terminate_torn_line()
        self._size = os.fstat(self._fd).st_size

    def _fsync_dir(self) -> None:
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _terminate_torn_line(self) -> None:
        """A crash can leave a last line without its newline; end it so the
        next append starts a line of its own (the fragment stays corrupt)."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as fh:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":
                log.warning("%s: last line is torn (crash during a write); it will be skipped", self.path)
                self._write_all(b"\n")
                os.fsync(self._fd)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def append(self, record: dict[str, Any]) -> None:
        """Append one snapshot; returns once it is on disk, raises
        ``StoreFailed`` if it cannot be written or synced."""
        started = time.monotonic()
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        with self._write_lock:
            if self._closed:
                raise StoreFailed(f"the log is closed because voicecalld is stopping ({self.path})")
            if self._torn:
                line = b"\n" + line
            try:
                self._write_all(line)
            except OSError as exc:
                self._cut_partial_write()
                raise self._failed(exc) from None
            self._torn = False
            self._written += 1
            self._size += len(line)
            self._pending += 1
            mine = self._written
            compact = (self.compact_bytes is not None and self._size > self.compact_bytes
                       and not self._compacting)
            if compact:
                self._compacting = True
        try:
            self._sync(mine)
        except StoreFailed:
            if compact:
                self._compacting = False  # not now; a later append tries again
            raise
        finally:
            with self._write_lock:
                self._pending -= 1
                if self._pending == 0:
                    self._lost.clear()  # nobody is left to tell
        metrics.STORE_APPEND.observe(time.monotonic() - started)
        if self.failure is not None:
            self.failure = None
            log.warning("%s: the call log is writable again", self.path)
        if compact:
            threading.Thread(target=self._compact_in_background, name="store-compact", daemon=True).start()

    def _sync(self, mine: int) -> None:
        with self._sync_lock:
            if any(after < mine <= through for after, through in self._lost):
                raise StoreFailed(self.failure or "an earlier sync of the log failed")
            if self._synced >= mine:
                return  # another appender's fsync (or close) already covered our line
            with self._write_lock:
                covered = self._written
            try:
                # fdatasync covers the data and the new file size, which is
                # all an append changes; it skips the mtime-only inode flush.
                os.fdatasync(self._fd)
            except OSError as exc:
                # Linux reports a failed writeback once, then forgets it: a
                # later fsync may succeed without these lines being on disk.
                self._lost.append((self._synced, covered))
                raise self._failed(exc) from None
            self._synced = covered

    def _cut_partial_write(self) -> None:
        """Under the write lock: remove what a failed write left behind."""
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            self._torn = True
            try:  # the fragment stays: count it, so compaction cuts the file at a line's end
                self._size = os.fstat(self._fd).st_size
            except OSError:
                pass

    def _failed(self, exc: OSError) -> StoreFailed:
        reason = f"{exc.strerror or exc} ({self.path})"
        if self.failure is None:
            log.error("the call log cannot be written: %s; calls go on, new calls are refused until a "
                      "write succeeds", reason)
        self.failure = reason
        return StoreFailed(reason)

    # -- compaction --

    def _compact_in_background(self) -> None:
        try:
            self.compact()
        except Exception:
            log.exception("%s: compaction failed; the log is unchanged", self.path)
        finally:
            self._compacting = False

    def compact(self) -> None:
        """Rewrite the log keeping the last snapshot per call (see the module
        docstring). Safe to run while other threads append."""
        started = time.monotonic()
        with self._write_lock:
            cut = self._size
        latest: dict[str, bytes] = {}
        dropped_lines = 0
        with open(self.path, "rb") as fh:
            for raw in iter(lambda: fh.readline(), b""):
                if fh.tell() > cut:
                    break
                record = _parse(raw) if raw.endswith(b"\n") else None
                if record is None:
                    dropped_lines += raw.strip() != b""
                    continue
                latest.pop(record["callId"], None)  # re-insert: dict order = order of last logging
                latest[record["callId"]] = raw
        ended = [cid for cid, raw in latest.items() if _ended(jsonsafe.loads(raw))]
        for cid in ended[:max(0, len(ended) - self.keep_calls)]:
            del latest[cid]
        tmp = self.path + ".compact"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(os.dup(fd), "wb") as out:
                for raw in latest.values():
                    out.write(raw)
            with self._sync_lock, self._write_lock:
                if self._closed:
                    return  # the daemon is stopping: leave the log as it is
                # Catch up with what was appended since the snapshot, then swap.
                with open(self.path, "rb") as fh:
                    fh.seek(cut)
                    tail = fh.read()
                os.lseek(fd, 0, os.SEEK_END)
                view = memoryview(tail)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
                os.rename(tmp, self.path)
                self._fsync_dir()
                old, self._fd = self._fd, os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                os.close(old)
                self._size = os.fstat(self._fd).st_size
                self._synced = self._written
        finally:
            os.close(fd)
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.compactions += 1
        log.info("%s: compacted to %d calls (%d bytes, %d unreadable lines dropped) in %.2f s", self.path,
                 len(latest), self._size, dropped_lines, time.monotonic() - started)

    def load(self) -> LoadResult:
        result = LoadResult()
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return result
        with fh:
            for raw in fh:
                result.lines += 1
                record = _parse(raw) if raw.endswith(b"\n") else None
                if record is None:
                    if raw.strip():
                        result.corrupt += 1
                    continue
                result.records[record["callId"]] = record
        if result.corrupt:
            log.warning("%s: skipped %d torn or corrupt line(s)", self.path, result.corrupt)
        return result

    def _reverse_lines(self) -> Iterator[bytes]:
        """Lines from the end of the file backwards, read in blocks."""
        with open(self.path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            pos = fh.tell()
            rest = b""
            while pos > 0:
                step = min(_BLOCK, pos)
                pos -= step
                fh.seek(pos)
                chunk = fh.read(step) + rest
                lines = chunk.split(b"\n")
                rest = lines[0]
                for line in reversed(lines[1:]):
                    if line:
                        yield line
            if rest:
                yield rest

    def find(self, call_id: str) -> dict[str, Any] | None:
        """The last snapshot of ``call_id``, scanning from the end."""
        needle = json.dumps(call_id).encode("utf-8")
        for line in self._reverse_lines():
            if needle in line:
                record = _parse(line)
                if record is not None and record["callId"] == call_id:
                    return record
        return None

    def history(self, limit: int) -> list[dict[str, Any]]:
        """The last snapshots of the ``limit`` most recently logged calls, oldest first."""
        seen: dict[str, dict[str, Any]] = {}
        if limit <= 0:
            return []
        for line in self._reverse_lines():
            record = _parse(line)
            if record is not None and record["callId"] not in seen:
                seen[record["callId"]] = record
                if len(seen) >= limit:
                    break
        return list(reversed(seen.values()))

    def close(self) -> None:
        """Sync and close; later appends fail with ``StoreFailed``."""
        with self._sync_lock, self._write_lock:
            if self._closed:
                return
            self._closed = True
            try:
                os.fsync(self._fd)
                self._synced = self._written  # appenders still waiting for a sync are covered
            except OSError as exc:
                self._lost.append((self._synced, self._written))
                log.error("%s: the last lines could not be synced at close: %s", self.path, exc.strerror or exc)
            finally:
                os.close(self._fd)
                self._fd = -1
