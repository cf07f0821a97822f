"""Credentials never leave the process: every log record and everything written to standard output and error has
the passwords of ``scheme://user:password@host`` URIs (and secret query parameters) replaced by ``***``.

MLflow prints "View run ... at: <tracking URI>" straight to ``sys.stdout`` for every run and puts the URI in its
errors; Prefect keeps log lines and the final error on its server. :func:`install` (called by the ``rrhf`` command
and by the flows' module, so a worker's flow runs have it too) covers both at the source: a log-record factory, so
every logger and every handler (Prefect's API handler included) sees only redacted messages and tracebacks, and a
wrapper around the two standard streams. :func:`redacted_error` gives an exception whose message is safe to store.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any, TextIO

from rrhf_core.config import redact_credentials

_installed = False


def _might_hold_secret(text: str) -> bool:
    return "@" in text or "=" in text


class _RedactingStream:
    """A text stream that redacts what is written through it; everything else is the wrapped stream's."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        self._inner.write(redact_credentials(text) if _might_hold_secret(text) else text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _redact_record(record: logging.LogRecord) -> logging.LogRecord:
    try:
        message = record.getMessage()
    except Exception:  # a bad format string is the logging module's to report
        return record
    if _might_hold_secret(message):
        clean = redact_credentials(message)
        if clean != message:
            record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        clean = redact_credentials(text)
        if clean != text:
            record.exc_text = clean  # what every Formatter prints instead of formatting exc_info again
    return record


def install() -> None:
    """Redact credentials in every log record and on both standard streams of this process (idempotent; streams
    that are not the process's own, such as a test's capture, are left as they are)."""
    global _installed
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        # the process's own streams only: one a caller swapped in (a test's capture) is the caller's to keep
        if stream is not None and stream is getattr(sys, f"__{name}__"):
            setattr(sys, name, _RedactingStream(stream))
    if _installed:
        return
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return _redact_record(make(*args, **kwargs))

    logging.setLogRecordFactory(factory)
    _installed = True


class RedactedError(RuntimeError):
    """An error whose message held credentials: the same message with them replaced (its type named in it)."""


def redacted_error(err: BaseException) -> BaseException:
    """``err`` itself when its message holds no credentials, else a :class:`RedactedError` (or, for the project's
    own errors, the same type) with the redacted message and ``err``'s traceback."""
    message = str(err)
    clean = redact_credentials(message)
    if clean == message:
        return err
    from rrhf_core.errors import RRHFError

    if isinstance(err, RRHFError):
        safe: BaseException = type(err)(clean)
    else:
        safe = RedactedError(f"{type(err).__name__}: {clean}")
    return safe.with_traceback(err.__traceback__)
