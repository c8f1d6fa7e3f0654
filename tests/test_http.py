"""The identity-provider HTTP client (sso_broker/http.py) against real sockets: the unit
tests mock above its transport, so what aiohttp does underneath is checked here."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from sso_broker.http import IdentityProviderClient, ResponseTooLarge, fetch

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length) if length else b""


@pytest.fixture
async def json_server() -> AsyncIterator[tuple[str, list[tuple[bytes, bytes]]]]:
    """Answers every request on a kept-alive connection with a JSON echo of its body."""
    seen: list[tuple[bytes, bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head, body = await _read_request(reader)
                seen.append((head, body))
                payload = json.dumps({"received": body.decode()}).encode()
                writer.write(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server, url = await _serve(handle)
    async with server:
        yield url, seen


async def test_a_form_post_and_its_json_answer_round_trip(
    json_server: tuple[str, list[tuple[bytes, bytes]]],
) -> None:
    url, seen = json_server
    async with IdentityProviderClient(timeout=5) as client:
        for attempt in range(2):
            answer = await client.post(
                f"{url}/token",
                content=f"grant_type=authorization_code&code={attempt}".encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert answer.status_code == 400
            assert answer.json() == {"received": f"grant_type=authorization_code&code={attempt}"}
    assert [body for _, body in seen] == [
        b"grant_type=authorization_code&code=0",
        b"grant_type=authorization_code&code=1",
    ]
    assert seen[0][0].startswith(b"POST /token HTTP/1.1\r\n")


async def test_a_refused_connection_is_an_httpx_error() -> None:
    server, url = await _serve(lambda _r, w: asyncio.sleep(0))
    server.close()
    await server.wait_closed()
    async with IdentityProviderClient(timeout=2) as client:
        with pytest.raises(httpx.TransportError):
            await client.get(f"{url}/.well-known/openid-configuration")


async def test_an_answer_that_is_not_http_is_an_httpx_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        writer.close()

    server, url = await _serve(garbage)
    async with server, IdentityProviderClient(timeout=2) as client:
        with pytest.raises(httpx.TransportError):
            await client.get(f"{url}/keys")


async def test_a_body_cut_short_is_an_httpx_error() -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial":')
        await writer.drain()
        writer.close()

    server, url = await _serve(short)
    async with server, IdentityProviderClient(timeout=2) as client:
        with pytest.raises(httpx.TransportError):
            await client.get(f"{url}/keys")


async def test_a_silent_server_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(5)

    server, url = await _serve(silent)
    async with server, IdentityProviderClient(timeout=httpx.Timeout(0.3)) as client:
        began = asyncio.get_running_loop().time()
        with pytest.raises((httpx.TimeoutException, TimeoutError)):
            await client.get(f"{url}/keys")
        assert asyncio.get_running_loop().time() - began < 2


async def test_an_endless_answer_is_cut_at_the_limit() -> None:
    """A provider that streams without end is stopped once the limit is passed, not read."""
    sent = 0

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 16384
        try:
            while sent < 50_000_000:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                sent += len(chunk)
        except ConnectionError:
            pass

    server, url = await _serve(endless)
    async with server, IdentityProviderClient(timeout=5) as client:
        with pytest.raises(ResponseTooLarge):
            await fetch(client, "GET", f"{url}/keys", limit=64 * 1024)
    assert sent < 10_000_000


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    async def declared(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 900000000\r\n\r\n{")
        await writer.drain()
        await asyncio.sleep(1)

    server, url = await _serve(declared)
    async with server, IdentityProviderClient(timeout=5) as client:
        with pytest.raises(ResponseTooLarge):
            await fetch(client, "GET", f"{url}/keys", limit=64 * 1024)


async def test_an_answer_within_the_limit_is_read_whole(
    json_server: tuple[str, list[tuple[bytes, bytes]]],
) -> None:
    url, _ = json_server
    async with IdentityProviderClient(timeout=5) as client:
        status, body = await fetch(client, "POST", f"{url}/token", limit=1024, content=b"a=1")
    assert (status, json.loads(body)) == (400, {"received": "a=1"})
