"""Logging: one JSON object a line on standard error; request ids and the access log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import sys
import time
import weakref
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # the command line logs too, and has no use for the web stack
    from starlette.types import Scope

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else was passed through ``extra=``.
# uvicorn's ``color_message`` (its message again, with terminal colour codes) is for its own
# console formatter: inside JSON it is noise, escape codes included.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
_MAX_REQUEST_ID = 128


ACCESS_LOGGER = "sso_broker.access"

# ``json.dumps`` with any option builds a new encoder on every call, a quarter of its cost for
# an access-log line (README, *Performance*): the same output from one encoder built once.
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)


class JSONFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, then the record's extras."""

    def __init__(self) -> None:
        super().__init__()
        # The time of the second a line was last written in: lines of the same second (all
        # of them, under load) only format their milliseconds (README, *Performance*).
        self._second: tuple[int, str] = (-1, "")

    def _time(self, created: float) -> str:
        """``datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")``."""
        # Rounded to microseconds first, as datetime does, then truncated to milliseconds.
        second = int(created)
        micros = round((created - second) * 1e6)
        if micros >= 1_000_000:
            second += 1
            micros -= 1_000_000
        cached = self._second
        if cached[0] != second:
            text = datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")[:-6]
            cached = self._second = (second, text)
        return f"{cached[1]}.{micros // 1000:03d}+00:00"

    def access_line(
        self, created: float, method: str, path: str, status: int, duration_ms: float, rid: str
    ) -> str:
        """What :meth:`format` makes of the access log's record (``log_access``), built
        without one: the logging path cost more than the rest of a ``/me`` (README,
        *Performance*). ``tests/test_logs.py`` holds the two to the same bytes."""
        encode = _ENCODER.encode
        return (
            f'{{"time": "{self._time(created)}", "level": "info", '
            f'"logger": "{ACCESS_LOGGER}", "message": "request", '
            f'"method": {encode(method)}, "path": {encode(path)}, "status": {int(status)}, '
            f'"duration_ms": {float(duration_ms)!r}, "request_id": {encode(rid)}}}'
        )

    def format(self, record: logging.LogRecord) -> str:
        return _ENCODER.encode(self.entry(record))

    def entry(self, record: logging.LogRecord) -> dict[str, Any]:
        """The line's fields, in order: time, level, logger, message, then the extras."""
        entry: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        request_id = request_id_var.get()
        if request_id is not None:
            entry.setdefault("request_id", request_id)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return entry


class TextFormatter(JSONFormatter):
    """One readable line for a person at a terminal: time, level, logger, message, then the
    record's fields as ``key=value`` (the JSON lines' content, laid out for eyes)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = self.entry(record)
        head = (
            f"{entry.pop('time')} {entry.pop('level').upper():<8} {entry.pop('logger')}: "
            f"{entry.pop('message')}"
        )
        exception = entry.pop("exception", None)
        fields = " ".join(f"{key}={_ENCODER.encode(value)}" for key, value in entry.items())
        line = f"{head} {fields}" if fields else head
        return f"{line}\n{exception}" if exception else line


class LoopBatchingHandler(logging.StreamHandler[TextIO]):
    """Writes the lines requests log in one turn of the event loop together, early in the next.

    A plain ``StreamHandler`` made a system call for every line, the access log's included:
    one a request (README, *Performance*). Here a line logged while a request is handled (its
    request id is set) on a running event loop waits until ``loop.call_soon`` comes round,
    after that turn's other requests. Every other line, and warnings and worse, is written at
    once, after any still waiting: the server's own lines (starting, shutting down) are never
    held, so the lines before them are out when a process ends, even by a signal (uvicorn
    ends by raising the SIGTERM it caught again, with no exit handlers). ``flush()``, which
    logging calls at exit, and ``close()`` write what is waiting too.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._scheduled_on: asyncio.AbstractEventLoop | None = None
        _batching_handlers.add(self)

    def _forget_after_fork(self) -> None:
        """In a forked child: the lines waiting are the parent's, and the parent writes them."""
        self._lines = []
        self._scheduled_on = None

    def emit(self, record: logging.LogRecord) -> None:
        # Called under the handler's lock (Handler.handle).
        try:
            self._add(self.format(record), record.levelno)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _add(self, line: str, levelno: int) -> None:
        self._lines.append(line)
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or levelno >= logging.WARNING or request_id_var.get() is None:
            self._write()
        elif self._scheduled_on is not loop:
            # Another loop's write may never come (that loop may be gone): this one
            # writes whatever is waiting then.
            self._scheduled_on = loop
            loop.call_soon(self._write_soon)

    def add_formatted(self, line: str, levelno: int) -> None:
        """A line already formatted as ``format`` would (the access log's fast path)."""
        with self.lock:  # type: ignore[union-attr]
            try:
                self._add(line, levelno)
            except RecursionError:
                raise
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": line}))

    def _write(self) -> None:
        lines = self._lines
        if lines:
            self._lines = []
            self.stream.write(self.terminator.join(lines) + self.terminator)
            self.stream.flush()

    def _write_soon(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._scheduled_on = None
            try:
                self._write()
            except RecursionError:
                raise
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": "lines waiting to be written"}))

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()
            super().flush()

    def close(self) -> None:
        # As logging.shutdown() flushes: a stream already closed has nothing to write to.
        with contextlib.suppress(OSError, ValueError):
            self.flush()
        super().close()


_batching_handlers: weakref.WeakSet[LoopBatchingHandler] = weakref.WeakSet()


def _forget_after_fork() -> None:
    for handler in _batching_handlers:
        handler._forget_after_fork()


if sys.platform != "win32":
    os.register_at_fork(after_in_child=_forget_after_fork)


def configure_logging(level: int, log_format: str = "auto") -> None:
    """Sends every log line, ours and the libraries', to standard error: JSON, or readable
    text for a person at a terminal (``SSO_BROKER_LOG_FORMAT``; ``auto`` picks text exactly
    when standard error is a terminal).

    Lines go out one by one to a terminal, and a loop turn's lines together otherwise (a
    file or a pipe, as in production; see ``LoopBatchingHandler``).
    """
    stream = sys.stderr
    terminal = stream.isatty()
    handler = logging.StreamHandler(stream) if terminal else LoopBatchingHandler(stream)
    text = log_format == "text" or (log_format == "auto" and terminal)
    handler.setFormatter(TextFormatter() if text else JSONFormatter())
    root = logging.getLogger()
    for replaced in root.handlers:
        if isinstance(replaced, LoopBatchingHandler):
            replaced.close()  # writes the lines it still holds
    root.handlers[:] = [handler]
    root.setLevel(level)
    # No line shows the caller's file, thread or process, so logging need not look them up
    # on every record (the Python logging HOWTO, "Optimization"); the access log writes one
    # record a request, and finding the caller was a tenth of /me's time.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "alembic"):
        named = logging.getLogger(name)
        named.handlers[:] = []
        named.propagate = True
    # Uvicorn's own access log would repeat ours, with the query string.
    logging.getLogger("uvicorn.access").disabled = True


access_logger = logging.getLogger(ACCESS_LOGGER)


# Request ids only have to be unique, not secret. ``uuid4()`` asked the kernel for random
# bytes on every request, 5 % of /me's CPU (README, *Performance*); this generator is seeded
# from the kernel once, and again in a forked child so that processes never share ids. It is
# the module's own, so no one else's ``random.seed()`` can make ids repeat.
_request_ids = random.Random()  # noqa: S311 - unique, not secret
if sys.platform != "win32":
    os.register_at_fork(after_in_child=_request_ids.seed)


def new_request_id() -> str:
    """32 random hex digits, as many as a UUID's."""
    return f"{_request_ids.getrandbits(128):032x}"


def clean_request_id(value: str | None) -> str:
    """Keeps a caller's request id only when it is short and printable; otherwise makes one."""
    if value and len(value) <= _MAX_REQUEST_ID and value.isascii() and value.isprintable():
        return value
    return new_request_id()


def _direct_handler() -> LoopBatchingHandler | None:
    """The one handler an access line reaches, when logging is as ``configure_logging``
    leaves it (no other handler or filter would see the record); None otherwise, and the
    line then goes through logging."""
    logger = access_logger
    if logger.handlers or logger.filters or not logger.propagate or logger.disabled:
        return None
    root = logging.root
    if root.filters or len(root.handlers) != 1:
        return None
    handler = root.handlers[0]
    if (
        type(handler) is not LoopBatchingHandler
        or handler.filters
        or handler.level > logging.INFO
        or type(handler.formatter) is not JSONFormatter
    ):
        return None
    return handler


def log_access(scope: Scope, status: int, started: float, request_id: str) -> None:
    """The access-log line of one request (``started`` by ``time.perf_counter()``): method,
    path without its query (queries carry codes and states), status, duration, request id."""
    if access_logger.isEnabledFor(logging.INFO):
        duration = round((time.perf_counter() - started) * 1000, 2)
        handler = _direct_handler()
        if handler is not None:
            formatter: JSONFormatter = handler.formatter  # type: ignore[assignment]
            line = formatter.access_line(
                time.time(), scope["method"], scope["path"], status, duration, request_id
            )
            handler.add_formatted(line, logging.INFO)
            return
        access_logger.info(
            "request",
            extra={
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": duration,
                "request_id": request_id,
            },
        )
