"""HTTP middleware: the one layer in front of every route.

In this order, as each request meets them: its id and its access-log line (``logs.py``), the
query and body size limits, the rate limits (``ratelimit.py``), CORS for the API, and on the
way out the headers every answer carries. They were five middlewares, each a coroutine and
most a wrapper of ``send`` per request, and two rebuilt the answer's headers: 6 % of
``/me``'s CPU (README, *Performance*). The steps, their order and their answers are the same.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sso_broker.browser import sign_in_failure
from sso_broker.direct_routes import DirectRoutes
from sso_broker.errors import ErrorCode
from sso_broker.logs import clean_request_id, log_access, request_id_var
from sso_broker.metrics import observe_request
from sso_broker.problems import answer_unhandled, problem_response
from sso_broker.ratelimit import over_limit

MAX_BODY_BYTES = 64 * 1024
# Entra's authorization responses (code, state, session_state, iss) fit well within this.
MAX_QUERY_BYTES = 16 * 1024

Header = tuple[bytes, bytes]

_NOSNIFF: Header = (b"x-content-type-options", b"nosniff")
_NO_STORE: Header = (b"cache-control", b"no-store")
_REQUEST_ID = b"x-request-id"
_API_NAMES = frozenset((_NOSNIFF[0], _NO_STORE[0], _REQUEST_ID))
_OTHER_NAMES = frozenset((_NOSNIFF[0], _REQUEST_ID))


def _set_headers(
    headers: Iterable[Header], added: list[Header], names: frozenset[bytes]
) -> list[Header]:
    """A copy of ``headers`` with each of ``added`` (whose names are ``names``) set in turn as
    Starlette's ``MutableHeaders`` sets one: in place of the first header of its name, the
    others of that name dropped, or else at the end."""
    # A copy: Starlette sends a response's own list, and a response may be sent again.
    result = list(headers)
    for name, _ in result:
        if name in names:
            break
    else:
        result += added
        return result
    for name, value in added:
        found = [index for index, (key, _) in enumerate(result) if key == name]
        if not found:
            result.append((name, value))
            continue
        result[found[0]] = (name, value)
        for index in reversed(found[1:]):
            del result[index]
    return result


def _answer_escaped(scope: Scope, exc: Exception) -> Response:
    """What the routes would have answered: a browser route the redirect to the sign-in error
    page, the API a problem (503 for an outage, 500 for a bug, logged as such)."""
    if scope["path"].startswith("/sso/"):
        return sign_in_failure(Request(scope), exc)
    return answer_unhandled(scope["path"], exc)


class FrontMiddleware:
    """Every request's way in and every answer's way out, before and after the routes.

    * **Request id.** A caller's ``X-Request-ID`` is kept when it is short and printable,
      otherwise one is made; it is on every answer and every log line of the request.
    * **Access log** (``access_log``): one line a request with the method, the path without
      its query (queries carry codes and states), the status, the duration and the id.
    * **Metrics** (``metrics``): the request's duration under its route template, method and
      status (``metrics.py``).
    * **Size limits.** A query string over ``MAX_QUERY_BYTES`` gets 414, a body over
      ``max_bytes`` 413, both ``request_too_large``. The declared ``Content-Length`` is
      checked first and the bytes actually streamed are counted too, so a chunked body
      cannot slip past the declared size.
    * **Rate limits**, answering 429 (``ratelimit.py``).
    * **CORS** for the dashboard's origin on ``/api/`` only. Browser routes and the JWKS need
      none; no credentials are allowed, because the API takes bearer tokens, never cookies.
    * **Headers on every answer**: ``nosniff``, and ``no-store`` on every API answer (tokens,
      personal data); browser routes set ``no-store`` and ``no-referrer`` themselves. No
      frame restriction is set globally: Entra loads the front-channel logout URL in a
      hidden frame.
    * **Hot routes straight to their handler**: a request that fully matches a route with a
      direct handler (the sign-in, the token endpoint, ``/me``) is served here, past the
      router and the framework's inner middleware (``direct_routes.py``); a cross-origin API
      request still takes CORS, and everything above applies to both.
    * **Nothing escapes to the server**: an error raised in front of the routes (the
      limiter) or that no handler took is answered as the routes answer theirs, a redirect
      on a browser route and a problem on the API (503 when the database is out, without a
      traceback), never a crash the server logs with one (README, *Database outages*).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        frontend_origin: str,
        access_log: bool,
        metrics: bool = True,
        max_bytes: int = MAX_BODY_BYTES,
        direct: DirectRoutes | None = None,
    ) -> None:
        self.app = app
        self.direct = direct
        self.cors = CORSMiddleware(
            app,
            allow_origins=[frontend_origin],
            allow_credentials=False,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )
        self.access_log = access_log
        self.metrics = metrics
        self.max_bytes = max_bytes

    @property
    def _detail(self) -> str:
        return f"The request body is larger than {self.max_bytes} bytes; send less."

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        too_large = False
        has_origin = False
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                if incoming is None:
                    incoming = value.decode("latin-1")
            elif name == b"content-length":
                try:
                    too_large = too_large or int(value) > self.max_bytes
                except ValueError:
                    too_large = True
            elif name == b"origin":
                has_origin = True
        request_id = clean_request_id(incoming)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        is_api: bool = scope["path"].startswith("/api/")
        if is_api:
            added = [_NOSNIFF, _NO_STORE, (_REQUEST_ID, request_id.encode("latin-1"))]
            names = _API_NAMES
        else:
            added = [_NOSNIFF, (_REQUEST_ID, request_id.encode("latin-1"))]
            names = _OTHER_NAMES
        status = 500
        answered = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = message["status"]
                answered = True
                message["headers"] = _set_headers(message.get("headers", ()), added, names)
            await send(message)

        try:
            if len(scope.get("query_string", b"")) > MAX_QUERY_BYTES:
                await problem_response(
                    414,
                    ErrorCode.REQUEST_TOO_LARGE,
                    "URI too long",
                    f"The query string is longer than {MAX_QUERY_BYTES} bytes; send less.",
                )(scope, receive, send_with_headers)
                return
            if too_large:
                await problem_response(
                    413, ErrorCode.REQUEST_TOO_LARGE, "Request too large", self._detail
                )(scope, receive, send_with_headers)
                return
            refusal = await over_limit(scope)
            if refusal is not None:
                await refusal(scope, receive, send_with_headers)
                return
            received = 0

            async def counting_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_bytes:
                        # Raised inside the app's body read; the HTTP error handler answers.
                        raise HTTPException(413, detail=self._detail)
                return message

            # Only a browser's cross-origin request carries Origin; without it CORS has
            # nothing to answer (and API answers are never cached, so no Vary is needed).
            if is_api and has_origin:
                await self.cors(scope, counting_receive, send_with_headers)
            elif self.direct is not None and (found := self.direct.find(scope)) is not None:
                # A hot route: its handler at once, past the router (direct_routes.py).
                await self.direct.serve(*found, scope, counting_receive, send_with_headers)
            else:
                await self.app(scope, counting_receive, send_with_headers)
        except Exception as e:
            if answered:  # the answer is on its way: the server can only cut it short
                raise
            # Nothing reaches the server as a crash (it would log a traceback for an outage,
            # and the browser would see JSON): the limiter in front of the routes, or an
            # error no handler took, is answered here as the routes answer theirs.
            await _answer_escaped(scope, e)(scope, receive, send_with_headers)
        finally:
            if self.metrics:
                observe_request(scope, status, time.perf_counter() - started)
            if self.access_log:
                log_access(scope, status, started, request_id)
            request_id_var.reset(token)
