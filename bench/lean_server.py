"""A lean HTTP/1.1 server for the bench's fake identity provider (loopback, plain HTTP).

The IdP must keep up with five times the service's sign-ins while sharing the machine's two
cores with it (README, *bench*), and served by uvicorn each request cost it about as much as
the bare hello does (0.09 ms of CPU), a third of an authorize-and-token pair besides the RSA
signature. Its clients are the service and the bench's browsers: small requests, one at a
time on kept-alive connections. This server parses them with httptools (uvicorn's parser),
hands each to the handler and writes its answer with a Content-Length; nothing else.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import cast

import httptools

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
# (method, path, query string, body) -> the answer, or an awaitable of it when it must wait
Handler = Callable[[str, str, str, bytes], Answer | Awaitable[Answer]]

_REASONS = {200: b"OK", 204: b"No Content", 302: b"Found", 400: b"Bad Request", 404: b"Not Found"}


class _Connection(asyncio.Protocol):
    """Answers requests in order: at once when the handler answers at once, else when its
    awaitable does (requests that came meanwhile wait their turn)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.waiting: deque[tuple[str, bytes, bytes, bool]] = deque()
        self.busy: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None  # noqa: S101
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy is not None:
            self.busy.cancel()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("latin-1")
        keep_alive = self.parser.should_keep_alive()
        self.waiting.append((method, self.url, b"".join(self.body), keep_alive))
        self.url, self.body = b"", []
        if self.busy is None:
            self._answer_waiting()

    def _answer_waiting(self) -> None:
        while self.waiting and self.busy is None:
            method, url, body, keep_alive = self.waiting.popleft()
            parsed = httptools.parse_url(url)
            path = parsed.path.decode("latin-1")
            query = (cast(bytes | None, parsed.query) or b"").decode("latin-1")
            answer = self.handler(method, path, query, body)
            if isinstance(answer, tuple):
                self._write(answer, keep_alive)
            else:
                self.busy = asyncio.get_running_loop().create_task(self._later(answer, keep_alive))

    async def _later(self, answer: Awaitable[Answer], keep_alive: bool) -> None:
        self._write(await answer, keep_alive)
        self.busy = None
        self._answer_waiting()

    def _write(self, answer: Answer, keep_alive: bool) -> None:
        status, headers, content = answer
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
        head += [b"%s: %s\r\n" % (name, value) for name, value in headers]
        head.append(b"content-length: %d\r\n\r\n" % len(content))
        assert self.transport is not None  # noqa: S101
        self.transport.write(b"".join(head) + content)
        if not keep_alive:
            self.transport.close()
            self.waiting.clear()


def serve(handler: Handler, sock: socket.socket) -> None:
    """Serves ``handler`` on the listening socket until the process is stopped."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Connection(handler), sock=sock)
        async with server:
            await server.serve_forever()

    uvloop.run(main())
