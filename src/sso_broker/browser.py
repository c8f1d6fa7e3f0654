"""Routes a browser lands on (``/sso/…``): whatever fails there, the browser is sent to the
sign-in error page with a code (README, *Signing in*), never shown a stack trace or JSON."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from sso_broker.errors import SignInError, SignInErrorCode
from sso_broker.metrics import count_sign_in
from sso_broker.problems import outage_cause, outage_log

# The failures' log lines keep the logger name operators search for.
logger = logging.getLogger("sso_broker.errors")


def sign_in_error_redirect(request: Request, code: SignInErrorCode) -> RedirectResponse:
    target = request.app.state.context.settings.sign_in_error
    separator = "&" if "?" in target else "?"
    response = RedirectResponse(f"{target}{separator}{urlencode({'error': code.value})}", 302)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


# The routes whose failures are failed sign-ins (sso_broker_sign_ins_total); a failed
# sign-out is not one.
_SIGN_IN_STEPS = ("/initiate", "/callback")


def _provider_id(request: Request) -> str | None:
    """The route's provider id when it is one (the segment is the client's to choose)."""
    try:
        return str(uuid.UUID(str(request.path_params.get("provider_id"))))
    except ValueError:
        return None


def sign_in_failure(request: Request, exc: Exception) -> RedirectResponse:
    """Logs a failed browser sign-in and answers the redirect to the sign-in error page.

    One line per failure an operator can search by provider, type and code (the request id
    comes with every line); no secret and no email, which the audit log's who covers (README,
    *Logs*). A database outage is ``temporarily_unavailable`` and the outage's warning without
    traceback (``problems.OutageLog``); only an error nobody expected is ``server_error``,
    logged with its traceback."""
    fields: dict[str, Any] = {
        "path": request.url.path,
        "provider_id": _provider_id(request),
        "provider_type": getattr(exc, "provider_type", None) or "unknown",
    }
    if isinstance(exc, SignInError):
        code = exc.code
        logger.warning(
            "sign-in failed", extra={**fields, "error": code.value, "reason": exc.reason}
        )
    elif isinstance(exc, RequestValidationError):
        # The provider id is the only parameter FastAPI validates on these routes.
        code = SignInErrorCode.PROVIDER_NOT_FOUND
        logger.info(
            "sign-in failed",
            extra={**fields, "error": code.value, "reason": "malformed provider id"},
        )
    elif isinstance(exc, StarletteHTTPException) and exc.status_code < 500:
        # The framework could not read the request (a form post that does not parse, a body
        # over the limit): there is no authorization response to check.
        code = SignInErrorCode.INVALID_STATE
        logger.info(
            "sign-in failed", extra={**fields, "error": code.value, "reason": "unreadable request"}
        )
    elif (cause := outage_cause(exc)) is not None:
        # The database cannot serve now: a line without traceback, as the API's 503 logs
        # (problems.OutageLog), and the browser told to try again in a moment.
        code = SignInErrorCode.TEMPORARILY_UNAVAILABLE
        outage_log.warning(
            "database unavailable", cause, path=fields["path"], provider_id=fields["provider_id"]
        )
    else:
        code = SignInErrorCode.SERVER_ERROR
        logger.error(
            "sign-in failed unexpectedly", exc_info=exc, extra={**fields, "error": code.value}
        )
    if request.url.path.endswith(_SIGN_IN_STEPS):
        count_sign_in(fields["provider_type"], code.value)
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

    def direct_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]] | None:
        """A direct endpoint's handler, for the front middleware to call at once
        (``direct_routes.py``); None for the others, which FastAPI solves."""
        if getattr(self.endpoint, "__sso_direct__", False):
            return self._direct_handler(self.endpoint)
        return None

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
