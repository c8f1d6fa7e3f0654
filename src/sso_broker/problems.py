"""How errors become answers: ``application/problem+json`` for the API, the handlers that
turn every exception into one, and what counts as a database outage (503, not 500).

The error codes and classes are ``errors.py``; the browser routes' redirect policy is
``browser.py``; how the OpenAPI document describes errors is ``apidocs.py``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    NotSupportedError,
    OperationalError,
    PendingRollbackError,
    ProgrammingError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from sso_broker.errors import PROBLEM_JSON, AppError, ErrorCode, Problem

logger = logging.getLogger("sso_broker.errors")


def problem_response(
    status: int,
    code: ErrorCode,
    title: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    body = Problem(
        type=f"https://sso-broker.dev/problems/{code.value}",
        title=title,
        status=status,
        detail=detail,
        code=code,
        errors=errors,
    )
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=status,
        headers={"Cache-Control": "no-store", **(headers or {})},
        media_type=PROBLEM_JSON,
    )


def _describe_validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """The location and message of each error, never the offending input (it may be a secret)."""
    described = []
    for error in exc.errors():
        described.append(
            {
                "loc": [str(part) for part in error.get("loc", ())],
                "type": str(error.get("type", "value_error")),
                "msg": str(error.get("msg", "invalid value")),
            }
        )
    return described


async def app_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)  # noqa: S101 - registered for AppError only
    return problem_response(
        exc.status, exc.code, exc.title, exc.detail, headers=exc.headers, errors=exc.errors
    )


async def validation_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101
    errors = _describe_validation_errors(exc)
    fields = ", ".join(".".join(e["loc"][1:]) or e["loc"][0] for e in errors if e["loc"])
    return problem_response(
        422,
        ErrorCode.VALIDATION_ERROR,
        "Invalid request",
        f"The request is invalid ({fields}): see `errors` for what each field needs."
        if fields
        else "The request is invalid: see `errors`.",
        errors=errors,
    )


_HTTP_CODES = {
    401: (ErrorCode.NOT_AUTHENTICATED, "Not authenticated"),
    403: (ErrorCode.FORBIDDEN, "Forbidden"),
    404: (ErrorCode.NOT_FOUND, "Not found"),
    405: (ErrorCode.METHOD_NOT_ALLOWED, "Method not allowed"),
    413: (ErrorCode.REQUEST_TOO_LARGE, "Request too large"),
}


async def http_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101
    if exc.status_code == 400:
        # FastAPI answers 400 "There was an error parsing the body" when a body cannot even be
        # decoded (not UTF-8), but a 422 when it decodes to broken JSON. To a client both are
        # the same mistake: one status and code for both.
        return problem_response(
            422,
            ErrorCode.VALIDATION_ERROR,
            "Invalid request",
            "The request body cannot be read: send JSON encoded as UTF-8.",
            errors=[{"loc": ["body"], "type": "json_invalid", "msg": "body is not UTF-8 JSON"}],
        )
    code, title = _HTTP_CODES.get(exc.status_code, (ErrorCode.SERVER_ERROR, "Error"))
    if exc.status_code == 404:
        detail = "There is nothing at this address; check the path against /docs."
    elif exc.status_code == 405:
        detail = "This method is not allowed here; see /docs for the methods each route accepts."
    else:
        detail = str(exc.detail)
    return problem_response(exc.status_code, code, title, detail, headers=exc.headers)


def is_database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` says the database cannot serve now (it is down, restarting, shutting
    down, unreachable, out of connections, or ended this connection), never when a statement
    was wrong (a syntax error, a constraint violated, a missing table): those are bugs."""
    return outage_cause(exc) is not None


def outage_cause(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s chain that says the database cannot serve now, or None.

    SQLAlchemy wraps a driver's error twice (``DBAPIError.orig`` is its adapter's error, whose
    ``__cause__`` is asyncpg's own), and a driver chains a lost socket behind its own error:
    the chain is followed through database errors until one decides. A statement's error
    decides "no" even inside an outage's chain; an error that is no database error (a bug of
    ours raised while one was handled) is never followed to the outage behind it.
    """
    default: BaseException | None = None
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen and len(seen) < 16:
        seen.add(id(link))
        verdict = _verdict(link)
        if verdict is not None:
            return link if verdict else None
        if default is None and isinstance(link, OperationalError | InterfaceError):
            # SQLAlchemy's own "the driver says the database is in trouble", unless what it
            # wraps says otherwise (SQLite's "no such table" is an OperationalError too).
            default = link
        if not _is_database_error(link):
            break
        if isinstance(link, DBAPIError) and isinstance(link.orig, BaseException):
            link = link.orig
        elif link.__cause__ is not None:
            link = link.__cause__
        elif not link.__suppress_context__:
            link = link.__context__
        else:
            link = None
    return default


def _is_database_error(exc: BaseException) -> bool:
    """An error of SQLAlchemy, its driver adapters, or a driver: one whose chain says why."""
    module = type(exc).__module__
    return module.startswith(("sqlalchemy", "asyncpg", "sqlite3", "aiosqlite"))


def _verdict(exc: BaseException) -> bool | None:
    """True: the database cannot serve now. False: a statement's own error (a bug). None:
    this error alone does not say; what it wraps may."""
    if isinstance(exc, PoolTimeoutError | DisconnectionError):
        return True
    if isinstance(exc, PendingRollbackError):
        # "Can't reconnect until invalid transaction is rolled back": the connection died in
        # a transaction. The Session's own (a flush failed earlier) is a bug of ours.
        return exc.code == "8s2b"
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc, IntegrityError | ProgrammingError | DataError | NotSupportedError):
            return False
        return None
    if isinstance(exc, SQLAlchemyError):
        return False
    # The drivers' own errors: the hot paths' (fastpath.py, fastpath_sqlite.py), which
    # SQLAlchemy does not wrap, and what SQLAlchemy's wrap. Each driver is only looked at
    # when this process has loaded it: one that is not loaded raised nothing, and importing
    # it here would load into every process the driver its database does not use
    # (hotpath.py).
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is not None:
        verdict = _asyncpg_verdict(asyncpg, exc)
        if verdict is not None:
            return verdict
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is not None and isinstance(exc, sqlite3.Error):
        # The embedded database's own: a file that cannot be opened, read or written, or a
        # lock held past the busy timeout. Not a syntax error or a missing table, which
        # sqlite3 raises as OperationalError too: those are bugs, never an outage.
        return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_UNAVAILABLE
    if isinstance(exc, ConnectionError | TimeoutError | OSError):
        return True  # a socket that was refused, reset, timed out or cannot be resolved
    return None


def _asyncpg_verdict(asyncpg: Any, exc: BaseException) -> bool | None:
    exceptions = asyncpg.exceptions
    if isinstance(
        exc,
        # 08: the connection failed or is gone (ConnectionDoesNotExistError too); 57: the
        # server is shutting down (57P01 on a live connection, 57P03 to a new one), crashed,
        # or an operator cancelled the statement; 53: out of connections, memory or disk;
        # 58: the server's own I/O failed; 25006: a failover left a standby in its place.
        exceptions.PostgresConnectionError
        | exceptions.OperatorInterventionError
        | exceptions.InsufficientResourcesError
        | exceptions.PostgresSystemError
        | exceptions.ReadOnlySQLTransactionError
        | exceptions.TargetServerAttributeNotMatched,
    ):
        return True
    if isinstance(exc, exceptions.PostgresError):
        return False  # the server refused the statement: a bug, a constraint, a conflict
    if isinstance(exc, asyncpg.InterfaceError):
        # "connection is closed", "the pool is closed"; not a bad argument or a connection
        # used twice at once, which are bugs.
        return "closed" in str(exc)
    if isinstance(exc, exceptions.InternalClientError):
        # "cannot switch to state …; another operation (2) is in progress": the server ended
        # the connection while it was idle (its FATAL error arrived unasked), and the next
        # statement found the protocol still waiting for the end of that error.
        return str(exc).startswith("cannot switch to state")
    return None


# SQLite's primary result codes for a database that cannot serve now (sqlite.org/rescode):
# BUSY, LOCKED, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, NOTADB.
_SQLITE_UNAVAILABLE = frozenset({5, 6, 8, 10, 11, 13, 14, 26})


def driver_errors(database_url: str) -> tuple[type[Exception], ...]:
    """The base errors of the driver the hot paths use on this database (fastpath.py,
    fastpath_sqlite.py), importing that driver alone (hotpath.py)."""
    if make_url(database_url).get_backend_name() == "postgresql":
        import asyncpg

        return (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.exceptions.InternalClientError,
        )
    import sqlite3

    return (sqlite3.Error,)


class OutageLog:
    """The log lines of an outage: one WARNING a failed request, without a traceback, at most
    ``per_second`` of them a second; the rest are counted and told in one line a second.

    Every failure of a 5-second outage under ten browsers wrote an ERROR with a 150-line
    traceback: a megabyte of log that said one thing (README, *Database outages*). A bug keeps
    its ERROR and traceback (``unhandled_error_handler``, ``browser.sign_in_failure``).
    """

    def __init__(self, per_second: int = 5) -> None:
        self.per_second = per_second
        self._second = -1
        self._logged = 0
        self._untold: Counter[str] = Counter()
        self._flushing = False

    def warning(self, message: str, cause: BaseException, **fields: Any) -> None:
        """Logs ``message`` with the error's class and ``fields``, or counts it."""
        now = time.monotonic()
        second = int(now)
        if second != self._second:
            self.flush()
            self._second, self._logged = second, 0
        if self._logged < self.per_second:
            self._logged += 1
            logger.warning(message, extra={**fields, "error": type(cause).__name__})
            return
        self._untold[type(cause).__name__] += 1
        if not self._flushing:
            self._flushing = True
            try:
                # At the second's end, so a summary tells of one second at most.
                asyncio.get_running_loop().call_later(second + 1 - now, self.flush)
            except RuntimeError:  # no event loop: told with the next line instead
                self._flushing = False

    def flush(self) -> None:
        """Tells how many failures were counted and not logged, if any."""
        self._flushing = False
        if self._untold:
            untold, self._untold = self._untold, Counter()
            logger.warning(
                "database unavailable: more failures not logged one by one",
                extra={"not_logged": sum(untold.values()), "errors": dict(untold)},
            )


# One a process: every route's outage lines share its budget.
outage_log = OutageLog()


def database_unavailable_response() -> JSONResponse:
    return problem_response(
        503,
        ErrorCode.DATABASE_UNAVAILABLE,
        "Service unavailable",
        "The database cannot be reached right now; retry in a few seconds.",
        headers={"Retry-After": "5"},
    )


async def unhandled_error_handler(request: Request, exc: Exception) -> JSONResponse:
    return answer_unhandled(request.url.path, exc)


def answer_unhandled(path: str, exc: Exception) -> JSONResponse:
    """503 for an outage (a line without traceback); 500 for anything else (a bug: its
    traceback is logged)."""
    cause = outage_cause(exc)
    if cause is not None:
        outage_log.warning("database unavailable", cause, path=path)
        return database_unavailable_response()
    logger.error(
        "unhandled error",
        exc_info=exc,
        extra={"path": path, "error": type(exc).__name__},
    )
    return problem_response(
        500,
        ErrorCode.SERVER_ERROR,
        "Internal server error",
        "Something went wrong on our side; it has been logged. Retry, and report the "
        "request id if it keeps happening.",
    )


def install_error_handlers(app: FastAPI, database_url: str) -> None:
    """Turns every error into problem+json (``apidocs.document_errors`` documents them)."""
    app.add_exception_handler(AppError, app_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    # Database and network failures are answered in the app (503, or a logged 500) rather
    # than by the outermost catch-all, which would re-raise them to the server as crashes.
    app.add_exception_handler(SQLAlchemyError, unhandled_error_handler)
    # The hot paths' own driver (fastpath.py, fastpath_sqlite.py), which SQLAlchemy does not
    # wrap: answered inside the front middleware too, with its request id and headers.
    for error in driver_errors(database_url):
        app.add_exception_handler(error, unhandled_error_handler)
    app.add_exception_handler(OSError, unhandled_error_handler)
    app.add_exception_handler(Exception, unhandled_error_handler)
