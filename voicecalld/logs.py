"""Logging set-up: one line per event on stderr.

Under journald each line starts with a ``<N>`` syslog priority, and a
record's newlines (tracebacks, hostile text) are escaped so that a record
stays one journal entry. The formatter scrubs configured secrets from every
line as a last line of defence; code should never log them anyway.
Exceptions nobody caught, in any thread, go through it too.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any

# syslog priorities (sd-daemon.h)
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def _priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return _PRIORITY[logging.DEBUG]


def one_line(text: str) -> str:
    """Escape line breaks and other control characters so a log record is
    one line whatever it contains."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif not ch.isprintable():
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


class LineFormatter(logging.Formatter):
    """Formats a record (with its traceback) as exactly one line, with any
    configured secret replaced."""

    def __init__(self, journald: bool, secrets: Iterable[str] = ()) -> None:
        fmt = "%(name)s: %(message)s" if journald else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        super().__init__(fmt)
        self.journald = journald
        self.secrets: tuple[str, ...] = ()
        self.set_secrets(secrets)

    def set_secrets(self, secrets: Iterable[str]) -> None:
        # Very short values would blank out ordinary words; real secrets are long.
        self.secrets = tuple(s for s in secrets if len(s) >= 6)

    def format(self, record: logging.LogRecord) -> str:
        line = one_line(super().format(record))
        for secret in self.secrets:
            if secret in line:
                line = line.replace(secret, "<redacted>")
        if self.journald:
            return f"<{_priority(record.levelno)}>{line}"
        return line


def setup(verbose: int = 0, journald: bool = False, secrets: Iterable[str] = ()) -> LineFormatter:
    formatter = LineFormatter(journald, secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # werkzeug logs every request at info; that is debug detail for a daemon.
    logging.getLogger("werkzeug").setLevel(logging.INFO if verbose > 1 else logging.WARNING)
    _route_uncaught_exceptions()
    return formatter


_crash_log = logging.getLogger("voicecalld.crash")


def _route_uncaught_exceptions() -> None:
    """Send exceptions nobody caught through the log (and so through the
    formatter, which scrubs secrets and keeps a traceback on one line)
    instead of Python's default of printing them raw to stderr."""

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return  # a thread that exits on purpose, as the default hook treats it
        name = args.thread.name if args.thread is not None else "?"
        _crash_log.critical("uncaught exception in thread %s", name,
                            exc_info=(args.exc_type, args.exc_value, args.exc_traceback))  # type: ignore[arg-type]

    def main_hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            sys.__excepthook__(exc_type, exc, tb)
            return
        _crash_log.critical("uncaught exception in the main thread", exc_info=(exc_type, exc, tb))

    def unraisable_hook(unraisable: Any) -> None:
        # Errors in __del__ methods, finalizers and the like.
        exc = unraisable.exc_value
        what = unraisable.err_msg or "exception ignored"
        info = (unraisable.exc_type, exc, unraisable.exc_traceback) if exc is not None else None
        _crash_log.error("%s: %r", what, unraisable.object, exc_info=info)

    threading.excepthook = thread_hook
    sys.excepthook = main_hook
    sys.unraisablehook = unraisable_hook
