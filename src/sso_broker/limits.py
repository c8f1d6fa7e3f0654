"""Middleware that bounds what reaches the app: body size, and which origin may call the API."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sso_broker.errors import ErrorCode, problem_response

MAX_BODY_BYTES = 64 * 1024


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
        if scope["type"] == "http" and scope["path"].startswith("/api/"):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
