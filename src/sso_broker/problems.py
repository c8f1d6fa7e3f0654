"""How errors become answers: ``application/problem+json`` for the API, the handlers that
turn every exception into one, and what counts as a database outage (503, not 500).

The error codes and classes are ``errors.py``; the browser routes' redirect policy is
``browser.py``; how the OpenAPI document describes errors is ``apidocs.py``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
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
    """True when ``exc`` says the database cannot be reached (not a constraint or SQL bug)."""
    if isinstance(exc, PoolTimeoutError | InterfaceError | OperationalError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    # The hot paths' drivers' own errors, which SQLAlchemy does not wrap. Each driver is only
    # looked at when this process has loaded it: one that is not loaded raised nothing, and
    # importing it here would load into every process the driver its database does not use
    # (hotpath.py).
    if "asyncpg" in sys.modules:
        import asyncpg

        # asyncpg's own, from the sign-in's pool (fastpath.py): the connection is gone or the
        # server will not serve now (shutting down, starting up, out of connections), an
        # outage, never a bug in a statement.
        if isinstance(
            exc,
            asyncpg.InterfaceError
            | asyncpg.PostgresConnectionError
            | asyncpg.exceptions.OperatorInterventionError
            | asyncpg.exceptions.TooManyConnectionsError,
        ):
            return True
    if "sqlite3" in sys.modules:
        import sqlite3

        # The embedded database's own (fastpath_sqlite.py): a file that cannot be opened, read
        # or written, or a lock held past the busy timeout. Not a syntax error or a missing
        # table, which sqlite3 raises as OperationalError too: those are bugs, never an outage.
        if isinstance(exc, sqlite3.Error):
            return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_UNAVAILABLE
    return isinstance(exc, ConnectionError | TimeoutError | OSError)


# SQLite's primary result codes for a database that cannot serve now (sqlite.org/rescode):
# BUSY, LOCKED, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, NOTADB.
_SQLITE_UNAVAILABLE = frozenset({5, 6, 8, 10, 11, 13, 14, 26})


def driver_errors(database_url: str) -> tuple[type[Exception], ...]:
    """The base errors of the driver the hot paths use on this database (fastpath.py,
    fastpath_sqlite.py), importing that driver alone (hotpath.py)."""
    if make_url(database_url).get_backend_name() == "postgresql":
        import asyncpg

        return (asyncpg.PostgresError, asyncpg.InterfaceError)
    import sqlite3

    return (sqlite3.Error,)


async def unhandled_error_handler(request: Request, exc: Exception) -> JSONResponse:
    if is_database_unavailable(exc):
        logger.warning(
            "database unavailable",
            extra={"path": request.url.path, "error": type(exc).__name__},
        )
        return problem_response(
            503,
            ErrorCode.DATABASE_UNAVAILABLE,
            "Service unavailable",
            "The database cannot be reached right now; retry in a few seconds.",
            headers={"Retry-After": "5"},
        )
    logger.error(
        "unhandled error",
        exc_info=exc,
        extra={"path": request.url.path, "error": type(exc).__name__},
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
