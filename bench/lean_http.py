"""A lean keep-alive HTTP/1.1 client for the bench's browsers (loopback, plain HTTP).

The browsers shared the 2-core machine with the service and the IdP, and through aiohttp each
sign-in cost them 2.0-2.2 ms of CPU, more than half the service's own: the generator was
taking the core the service was measured on, and its load made every other process's CPU per
request dearer (a run with the service pinned to a core of its own measured 3.0 ms a sign-in
where the shared run measured 3.75). A browser here needs one connection per server, one
request at a time, ``Set-Cookie`` for the login state, ``Location`` and a JSON body; this
client does that much, parsing answers with httptools (uvicorn's own parser), and nothing
else: no redirects, no TLS, no proxies, no compression.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import httptools


class LeanHTTPError(ConnectionError):
    """The connection closed, or the answer was not HTTP, before a whole answer came."""


@dataclass(slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    cookies: list[str] = field(default_factory=list)  # each Set-Cookie value

    def json(self) -> Any:
        return json.loads(self.body)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; ``exchange`` sends a request and waits for its answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Reply] | None = None
        self.closed = False
        self._headers: dict[str, str] = {}
        self._cookies: list[str] = []
        self._body: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(LeanHTTPError(f"not an HTTP answer: {e}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(LeanHTTPError("the server closed the connection"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        if key == "set-cookie":
            self._cookies.append(text)
        self._headers[key] = text

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        reply = Reply(
            self.parser.get_status_code(), self._headers, b"".join(self._body), self._cookies
        )
        if not self.parser.should_keep_alive():
            self.close()
        self._headers, self._cookies, self._body = {}, [], []
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(reply)

    def _fail(self, error: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def exchange(self, request: bytes) -> Reply:
        assert self.transport is not None  # noqa: S101
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


class LeanClient:
    """Requests to one origin (``http://host:port``), one at a time, on a kept connection."""

    def __init__(self, origin: str, *, timeout: float = 30.0) -> None:
        parts = urlsplit(origin)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"an http://host:port origin, not {origin!r}")
        self.origin = origin.rstrip("/")
        self.host, self.port = parts.hostname, parts.port
        self.timeout = timeout
        self._host_header = f"Host: {parts.netloc}\r\n".encode("latin-1")
        self._connection: _Connection | None = None

    async def _connected(self) -> _Connection:
        connection = self._connection
        if connection is None or connection.closed:
            loop = asyncio.get_running_loop()
            _, connection = await loop.create_connection(_Connection, self.host, self.port)
            self._connection = connection
        return connection

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> Reply:
        """``target``: a path with its query, or a URL of this origin."""
        if target.startswith(self.origin):
            target = target[len(self.origin) :] or "/"
        lines = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"), self._host_header]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}\r\n".encode("latin-1"))
        lines.append(b"\r\n")
        lines.append(body)
        async with asyncio.timeout(self.timeout):
            connection = await self._connected()
            try:
                return await connection.exchange(b"".join(lines))
            except BaseException:
                connection.close()  # half an answer may still come: never reuse it
                raise

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class CookieJar:
    """A browser's cookies for one origin, as the service sets them (``Path=/``, no
    ``Domain``): a ``Max-Age=0`` or a past ``expires`` removes one."""

    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}

    def update(self, set_cookies: list[str]) -> None:
        for line in set_cookies:
            pair, _, attributes = line.partition(";")
            name, _, value = pair.strip().partition("=")
            lowered = attributes.lower().replace(" ", "")
            if "max-age=0" in lowered.split(";") or "expires=thu,01jan1970" in lowered:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value

    def header(self) -> dict[str, str]:
        if not self.cookies:
            return {}
        return {"Cookie": "; ".join(f"{name}={value}" for name, value in self.cookies.items())}
