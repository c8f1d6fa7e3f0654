"""The errors a client can meet: their stable codes, one status per code (:data:`STATUS_OF`),
and the exception classes that carry them.

How they are answered is ``problems.py`` (``application/problem+json``) and ``browser.py``
(the sign-in routes' redirect); how OpenAPI documents them, ``apidocs.py``.

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
    ├── ServiceUnavailable        503 database_unavailable, shutting_down
    └── (middleware)              413 request_too_large, 429 rate_limited

    SignInError                   a failed browser sign-in: never a body, always a 302 to
                                  SIGN_IN_ERROR_URL?error=<SignInErrorCode>

Browser routes (``browser.BrowserRoute``) turn every exception, ours or not, into that
redirect, so a browser never sees a stack trace or a bare JSON error.

Every error carries a stable machine ``code`` (an :class:`ErrorCode`) and a ``detail``
sentence telling the user what went wrong and what to do. No error text ever contains a
secret: details are written by us, never copied from input.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel

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
    # /readyz after SIGTERM: this process finishes what it serves and takes nothing new.
    SHUTTING_DOWN = "shutting_down"
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
    # The initiate carried a PKCE challenge we cannot use (malformed, or not S256).
    INVALID_REQUEST = "invalid_request"
    # The database cannot serve now (an outage, a restart): OAuth's own name for it (RFC
    # 6749, 4.1.2.1). Try again in a moment; ``server_error`` stays a bug's alone.
    TEMPORARILY_UNAVAILABLE = "temporarily_unavailable"


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
        # The provider's type once it is known, for the failure's log line (browser.py).
        self.provider_type: str | None = None


class Problem(BaseModel):
    """An RFC 9457 problem document with our stable ``code``."""

    type: str
    title: str
    status: int
    detail: str
    code: ErrorCode
    errors: list[dict[str, Any]] | None = None


class AppError(Exception):
    """An error the API answers as a problem; its status is its code's (:data:`STATUS_OF`)."""

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

    @property
    def status(self) -> int:
        return STATUS_OF[self.code]


class InvalidGrant(AppError):
    """A login code or refresh token that is unknown, used or expired (RFC 6749 §5.2)."""

    title = "Invalid grant"
    code = ErrorCode.INVALID_GRANT

    def __init__(self, detail: str) -> None:
        super().__init__(detail)


class NotAuthenticated(AppError):
    title = "Not authenticated"
    code = ErrorCode.NOT_AUTHENTICATED

    def __init__(self, detail: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(detail, code=code, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(AppError):
    title = "Forbidden"
    code = ErrorCode.FORBIDDEN


class NotFound(AppError):
    title = "Not found"
    code = ErrorCode.NOT_FOUND


class Conflict(AppError):
    title = "Conflict"
    code = ErrorCode.EMAIL_TAKEN


class InvalidInput(AppError):
    title = "Invalid request"
    code = ErrorCode.VALIDATION_ERROR


class RateLimited(AppError):
    title = "Too many requests"
    code = ErrorCode.RATE_LIMITED

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class ServiceUnavailable(AppError):
    title = "Service unavailable"
    code = ErrorCode.DATABASE_UNAVAILABLE


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
    ErrorCode.SHUTTING_DOWN: 503,
}
