"""HTTP middleware: body size limit, CORS for the API, security headers on every answer."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sso_broker.errors import ErrorCode, problem_response

MAX_BODY_BYTES = 64 * 1024
# Entra's authorization responses (code, state, session_state, iss) fit well within this.
MAX_QUERY_BYTES = 16 * 1024


class BodySizeLimitMiddleware:
    """Answers 413 ``request_too_large`` to bodies over ``max_bytes``.

    Checks the declared ``Content-Length`` first and also counts the bytes actually
    streamed, so a chunked body cannot slip past the declared size.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    @property
    def _detail(self) -> str:
        return f"The request body is larger than {self.max_bytes} bytes; send less."

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope.get("query_string", b"")) > MAX_QUERY_BYTES:
            response = problem_response(
                414,
                ErrorCode.REQUEST_TOO_LARGE,
                "URI too long",
                f"The query string is longer than {MAX_QUERY_BYTES} bytes; send less.",
            )
            await response(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_bytes + 1
                if declared > self.max_bytes:
                    response = problem_response(
                        413, ErrorCode.REQUEST_TOO_LARGE, "Request too large", self._detail
                    )
                    await response(scope, receive, send)
                    return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the app's body read; the HTTP error handler answers it.
                    raise HTTPException(413, detail=self._detail)
            return message

        await self.app(scope, counting_receive, send)


class ApiCORSMiddleware:
    """CORS for the dashboard's origin on ``/api/`` only.

    Browser routes and the JWKS need none; no credentials are allowed, because the API takes
    bearer tokens, never cookies.
    """

    def __init__(self, app: ASGIApp, *, frontend_origin: str) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=[frontend_origin],
            allow_credentials=False,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Only a browser's cross-origin request carries Origin; without it CORS has nothing
        # to answer (and API answers are never cached, so no Vary is needed).
        if (
            scope["type"] == "http"
            and scope["path"].startswith("/api/")
            and any(name == b"origin" for name, _ in scope["headers"])
        ):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class SecurityHeadersMiddleware:
    """Headers every answer carries, and ``no-store`` on every API answer.

    ``nosniff`` everywhere; API answers (tokens, personal data) are never cached; browser
    routes already set ``no-store`` and ``no-referrer`` themselves. No frame restriction is
    set globally: Entra loads the front-channel logout URL in a hidden frame.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_api = scope["path"].startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                if is_api:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)
