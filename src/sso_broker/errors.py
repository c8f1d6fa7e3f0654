"""Errors a client can meet, and how they become ``application/problem+json``.

The tree::

    AppError                      status, code, title, detail, headers
    ├── NotAuthenticated          401 not_authenticated / invalid_token / token_expired
    │                                 (refresh) / session_expired (sign in again)
    ├── Forbidden                 403 forbidden
    ├── NotFound                  404 not_found
    ├── InvalidGrant              400 invalid_grant
    ├── Conflict                  409 email_taken
    ├── InvalidInput              422 validation_error, unsupported_tenant, invalid_base_url,
    │                             invalid_client_id, invalid_client_secret, provider_incomplete,
    │                             sso_provider_not_found
    ├── ServiceUnavailable        503 database_unavailable
    └── (middleware)              413 request_too_large, 429 rate_limited

    SignInError                   a failed browser sign-in: never a body, always a 302 to
                                  SIGN_IN_ERROR_URL?error=<SignInErrorCode>

Browser routes (``BrowserRoute``) turn every exception, ours or not, into that redirect,
so a browser never sees a stack trace or a bare JSON error.

Every error carries a stable machine ``code`` (an :class:`ErrorCode`) and a ``detail``
sentence telling the user what went wrong and what to do. No error text ever contains a
secret: details are written by us, never copied from input.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import uuid
from collections.abc import Callable, Coroutine, Mapping
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class ErrorCode(StrEnum):
    INVALID_GRANT = "invalid_grant"
    NOT_AUTHENTICATED = "not_authenticated"
    INVALID_TOKEN = "invalid_token"
    TOKEN_EXPIRED = "token_expired"
    SESSION_EXPIRED = "session_expired"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    EMAIL_TAKEN = "email_taken"
    VALIDATION_ERROR = "validation_error"
    UNSUPPORTED_TENANT = "unsupported_tenant"
    INVALID_BASE_URL = "invalid_base_url"
    INVALID_CLIENT_ID = "invalid_client_id"
    INVALID_CLIENT_SECRET = "invalid_client_secret"
    PROVIDER_INCOMPLETE = "provider_incomplete"
    SSO_PROVIDER_NOT_FOUND = "sso_provider_not_found"
    REQUEST_TOO_LARGE = "request_too_large"
    RATE_LIMITED = "rate_limited"
    DATABASE_UNAVAILABLE = "database_unavailable"
    SERVER_ERROR = "server_error"


class SignInErrorCode(StrEnum):
    """The ``error`` of a failed sign-in's redirect to the frontend (README, *Signing in*)."""

    PROVIDER_NOT_FOUND = "provider_not_found"
    PROVIDER_DISABLED = "provider_disabled"
    INVALID_STATE = "invalid_state"
    ACCESS_DENIED = "access_denied"
    IDP_ERROR = "idp_error"
    TOKEN_EXCHANGE_FAILED = "token_exchange_failed"
    INVALID_ID_TOKEN = "invalid_id_token"
    USER_NOT_PROVISIONED = "user_not_provisioned"
    SERVER_ERROR = "server_error"


class SignInError(Exception):
    """A browser sign-in failed; ``reason`` is for the log only and never reaches the browser."""

    def __init__(
        self, code: SignInErrorCode, reason: str, *, idp_subject: str | None = None
    ) -> None:
        super().__init__(f"{code.value}: {reason}")
        self.code = code
        self.reason = reason
        # The identity provider's user id, when the failure came after a valid ID token.
        self.idp_subject = idp_subject


class Problem(BaseModel):
    """An RFC 9457 problem document with our stable ``code``."""

    type: str
    title: str
    status: int
    detail: str
    code: ErrorCode
    errors: list[dict[str, Any]] | None = None


class AppError(Exception):
    status: int = 500
    title: str = "Internal server error"
    code: ErrorCode = ErrorCode.SERVER_ERROR

    def __init__(
        self,
        detail: str,
        *,
        code: ErrorCode | None = None,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.headers = headers or {}
        self.errors = errors


class InvalidGrant(AppError):
    """A login code or refresh token that is unknown, used or expired (RFC 6749 §5.2)."""

    status = 400
    title = "Invalid grant"
    code = ErrorCode.INVALID_GRANT

    def __init__(self, detail: str) -> None:
        super().__init__(detail)


class NotAuthenticated(AppError):
    status = 401
    title = "Not authenticated"
    code = ErrorCode.NOT_AUTHENTICATED

    def __init__(self, detail: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(detail, code=code, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(AppError):
    status = 403
    title = "Forbidden"
    code = ErrorCode.FORBIDDEN


class NotFound(AppError):
    status = 404
    title = "Not found"
    code = ErrorCode.NOT_FOUND


class Conflict(AppError):
    status = 409
    title = "Conflict"


class InvalidInput(AppError):
    status = 422
    title = "Invalid request"
    code = ErrorCode.VALIDATION_ERROR


class ServiceUnavailable(AppError):
    status = 503
    title = "Service unavailable"
    code = ErrorCode.DATABASE_UNAVAILABLE


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


def sign_in_error_redirect(request: Request, code: SignInErrorCode) -> RedirectResponse:
    target = request.app.state.context.settings.sign_in_error
    separator = "&" if "?" in target else "?"
    response = RedirectResponse(f"{target}{separator}{urlencode({'error': code.value})}", 302)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def sign_in_failure(request: Request, exc: Exception) -> RedirectResponse:
    """Logs a failed browser sign-in and answers the redirect to the sign-in error page."""
    path = request.url.path
    if isinstance(exc, SignInError):
        code = exc.code
        logger.warning(
            "sign-in failed", extra={"path": path, "error": code.value, "reason": exc.reason}
        )
    elif isinstance(exc, RequestValidationError):
        # The provider id is the only parameter FastAPI validates on these routes.
        code = SignInErrorCode.PROVIDER_NOT_FOUND
        logger.info(
            "sign-in failed",
            extra={"path": path, "error": code.value, "reason": "malformed provider id"},
        )
    elif isinstance(exc, StarletteHTTPException) and exc.status_code < 500:
        # The framework could not read the request (a form post that does not parse, a body
        # over the limit): there is no authorization response to check.
        code = SignInErrorCode.INVALID_STATE
        logger.info(
            "sign-in failed",
            extra={"path": path, "error": code.value, "reason": "unreadable request"},
        )
    else:
        code = SignInErrorCode.SERVER_ERROR
        logger.error(
            "sign-in failed unexpectedly", exc_info=exc, extra={"path": path, "error": code.value}
        )
    return sign_in_error_redirect(request, code)


BrowserEndpoint = Callable[[Request, uuid.UUID], Coroutine[Any, Any, Response]]


def direct(endpoint: BrowserEndpoint) -> BrowserEndpoint:
    """Marks a browser endpoint ``(request, provider_id) -> Response`` that BrowserRoute calls
    itself: FastAPI's parameter and dependency solving cost more than the sign-in redirect
    (README, *Performance*). Its signature still documents the route in OpenAPI."""
    endpoint.__sso_direct__ = True  # type: ignore[attr-defined]
    return endpoint


class BrowserRoute(APIRoute):
    """A route a browser lands on: any failure becomes a redirect to the sign-in error page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        if getattr(self.endpoint, "__sso_direct__", False):
            return self._direct_handler(self.endpoint)
        handler = super().get_route_handler()

        async def browser_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as e:
                return sign_in_failure(request, e)

        return browser_handler

    @staticmethod
    def _direct_handler(
        endpoint: BrowserEndpoint,
    ) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        async def direct_handler(request: Request) -> Response:
            try:
                provider_id = uuid.UUID(request.path_params["provider_id"])
            except ValueError:
                # What FastAPI's validation of the path parameter answered.
                return sign_in_failure(request, RequestValidationError([]))
            try:
                return await endpoint(request, provider_id)
            except Exception as e:
                return sign_in_failure(request, e)

        return direct_handler


def install_error_handlers(app: FastAPI, database_url: str) -> None:
    """Turns every error into problem+json, and documents errors as they are sent."""
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
    _document_errors(app)


_RATE_LIMITED: dict[str, Any] = {
    "description": "Error codes: `rate_limited` (with `Retry-After`)",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}
_RATE_LIMITED_PAGE: dict[str, Any] = {
    "description": "Too many sign-in attempts: a small page, with `Retry-After`",
    "content": {"text/html": {"schema": {"type": "string"}}},
}
_DATABASE_DOWN: dict[str, Any] = {
    "description": "Error codes: `database_unavailable` (with `Retry-After`)",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}
_NO_DATABASE = frozenset({"/healthz", "/.well-known/jwks.json"})

# Answered by the size limits in front of every route (sso_broker.middleware), whatever the route.
_BODY_TOO_LARGE: dict[str, Any] = {
    "description": "Error codes: `request_too_large` (the body is over the size limit)",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}
_QUERY_TOO_LONG: dict[str, Any] = {
    "description": "Error codes: `request_too_large` (the query string is over the size limit)",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


def _document_errors(app: FastAPI) -> None:
    """Makes ``app.openapi()`` describe the error answers the app really sends.

    * FastAPI files a ``responses=`` model under ``application/json``; problem documents are
      sent as ``application/problem+json``, so the schema belongs under that media type.
    * FastAPI adds a 422 to every route with parameters; browser routes never answer it (a
      malformed provider id redirects to the sign-in error page like any other failure).
    * The size limits answer 413 (body) and 414 (query string) in front of every route.
    * The rate limiter answers 429 on the sign-in routes and the token endpoint, and every
      route that reads the database may answer 503 while it is down.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            browser = {
                (route.path_format, method.lower())
                for route in app.routes
                if isinstance(route, BrowserRoute)
                for method in route.methods or ()
            }
            for path, path_item in spec.get("paths", {}).items():
                for method, operation in path_item.items():
                    responses = operation.setdefault("responses", {})
                    for response in responses.values():
                        content = response.get("content", {})
                        if PROBLEM_JSON in content and "application/json" in content:
                            content[PROBLEM_JSON] = content.pop("application/json")
                    if (path, method) in browser:
                        responses.pop("422", None)
                    if "requestBody" in operation:
                        responses.setdefault("413", copy.deepcopy(_BODY_TOO_LARGE))
                    responses.setdefault("414", copy.deepcopy(_QUERY_TOO_LONG))
                    if path.startswith("/sso/"):
                        responses.setdefault("429", copy.deepcopy(_RATE_LIMITED_PAGE))
                    elif path == "/api/v1/auth/token":
                        responses.setdefault("429", copy.deepcopy(_RATE_LIMITED))
                    # Browser routes answer a database outage with the error redirect.
                    if path not in _NO_DATABASE and not path.startswith("/sso/"):
                        responses.setdefault("503", copy.deepcopy(_DATABASE_DOWN))
            _drop_unreferenced_schemas(spec, ("HTTPValidationError", "ValidationError"))
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _drop_unreferenced_schemas(spec: dict[str, Any], names: tuple[str, ...]) -> None:
    schemas: dict[str, Any] = spec.get("components", {}).get("schemas", {})
    for name in names:
        if name not in schemas:
            continue
        definition = schemas.pop(name)
        if f'"#/components/schemas/{name}"' in json.dumps(spec):
            schemas[name] = definition


def error_responses(*codes: ErrorCode) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries listing the error codes a route can answer with."""
    by_status: dict[int, list[ErrorCode]] = {}
    for code in codes:
        by_status.setdefault(STATUS_OF[code], []).append(code)
    return {
        status: {
            "model": Problem,
            "description": "Error codes: " + ", ".join(f"`{c.value}`" for c in status_codes),
            "content": {PROBLEM_JSON: {}},
        }
        for status, status_codes in sorted(by_status.items())
    }


# What a route behind the bearer token can answer, and what a role-restricted one adds.
AUTHENTICATION_ERRORS = (
    ErrorCode.NOT_AUTHENTICATED,
    ErrorCode.INVALID_TOKEN,
    ErrorCode.TOKEN_EXPIRED,
    ErrorCode.SESSION_EXPIRED,
)
AUTHORIZATION_ERRORS = (*AUTHENTICATION_ERRORS, ErrorCode.FORBIDDEN)

STATUS_OF: dict[ErrorCode, int] = {
    ErrorCode.INVALID_GRANT: 400,
    ErrorCode.NOT_AUTHENTICATED: 401,
    ErrorCode.INVALID_TOKEN: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.SESSION_EXPIRED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.EMAIL_TAKEN: 409,
    ErrorCode.REQUEST_TOO_LARGE: 413,
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.UNSUPPORTED_TENANT: 422,
    ErrorCode.INVALID_BASE_URL: 422,
    ErrorCode.INVALID_CLIENT_ID: 422,
    ErrorCode.INVALID_CLIENT_SECRET: 422,
    ErrorCode.PROVIDER_INCOMPLETE: 422,
    ErrorCode.SSO_PROVIDER_NOT_FOUND: 422,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.SERVER_ERROR: 500,
    ErrorCode.DATABASE_UNAVAILABLE: 503,
}
