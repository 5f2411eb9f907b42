"""Polling until a condition holds, for the fakes' and tests' wait helpers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T | None], timeout: float, what: str = "", *, interval: float = 0.005,
               context: Callable[[], str] | None = None) -> T:
    """Poll ``predicate`` until it returns something truthy, and return it.
    On timeout raise AssertionError naming ``what`` (or the predicate) and,
    if given, ``context()`` (e.g. a summary of a fake's state)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            name = what or getattr(predicate, "__name__", repr(predicate))
            extra = f"\n{context()}" if context is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {name}{extra}")
        time.sleep(interval)
