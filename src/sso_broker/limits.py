"""Request size limits: a body larger than the limit is refused before it is read whole."""

from __future__ import annotations

from starlette.exceptions import HTTPException
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
