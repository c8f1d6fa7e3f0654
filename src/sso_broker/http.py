"""The HTTP client for identity providers: httpx's interface on aiohttp's HTTP/1.1 client.

httpx's own transport (httpcore, h11, anyio) cost 1.1 ms of CPU a sign-in, a third of the
whole (README, *Performance*); the ``httpx-aiohttp`` transport, by httpx's maintainer, does
the same work in aiohttp's C-accelerated client. The rest of the service (timeouts, size
limits, error handling) and its tests (respx) keep talking httpx.

Every aiohttp failure reaches the service as an ``httpx.TransportError``: the transport maps
the common ones, and anything it leaves (a malformed status line, say) is mapped here, so an
identity provider answering garbage is a failed sign-in, never a crash.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport, HttpxAiohttpClient


class _MappedStream(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except aiohttp.ClientError as e:
            raise httpx.ReadError(f"reading the answer failed: {type(e).__name__}") from e

    async def aclose(self) -> None:
        await self._stream.aclose()


class _Transport(AiohttpTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except aiohttp.ClientError as e:
            raise httpx.TransportError(f"the request failed: {type(e).__name__}") from e
        assert isinstance(response.stream, httpx.AsyncByteStream)  # noqa: S101 - always
        response.stream = _MappedStream(response.stream)
        return response


class IdentityProviderClient(HttpxAiohttpClient):
    def _init_transport(self, *args: Any, **kwargs: Any) -> httpx.AsyncBaseTransport:
        if kwargs.get("transport") is not None:
            return super()._init_transport(*args, **kwargs)
        return _Transport(**_transport_options(kwargs))

    def _init_proxy_transport(
        self, proxy: httpx.Proxy, *args: Any, **kwargs: Any
    ) -> httpx.AsyncBaseTransport:
        return _Transport(proxy=proxy, **_transport_options(kwargs))


def _transport_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    names = ("verify", "cert", "trust_env", "http1", "http2", "limits")
    return {name: kwargs[name] for name in names if name in kwargs}


class ResponseTooLarge(Exception):
    """The identity provider's answer is longer than the caller's limit."""


async def fetch(
    client: httpx.AsyncClient, method: str, url: str, *, limit: int, **kwargs: Any
) -> tuple[int, bytes]:
    """Sends a request and answers its status and body, reading at most ``limit`` bytes.

    The body is streamed and the read stops at the limit (or at once when Content-Length
    already says more): an identity provider, or an issuer an administrator pasted, that
    answers gigabytes cannot fill the service's memory before a size check after the read.
    """
    async with client.stream(method, url, **kwargs) as response:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ResponseTooLarge(f"{declared} bytes declared")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise ResponseTooLarge(f"more than {limit} bytes")
        return response.status_code, bytes(body)
