"""The rate limiter's Redis client (sso_broker/redis_client.py): against the machine's Redis
(127.0.0.1:6379, database 15), a TLS terminator in front of it, and fake servers that
misbehave."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from sso_broker.redis_client import RedisAddress, RedisClient, RedisError, encode
from tests.conftest import make_settings
from tests.tls import server_context

REDIS = ("127.0.0.1", 6379)
URL = "redis://127.0.0.1:6379/15"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def redis() -> AsyncIterator[RedisClient]:
    client = RedisClient(URL, timeout=2)
    try:
        await client.execute(("PING",))
    except RedisError:
        await client.aclose()
        pytest.skip("no Redis at 127.0.0.1:6379")
    yield client
    await client.aclose()


async def _serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_counters_are_incremented_and_expire(redis: RedisClient) -> None:
    key = f"test:{uuid.uuid4()}"
    assert await redis.execute(("INCRBY", key, 3), ("EXPIRE", key, 60)) == [3, 1]
    assert await redis.execute(("INCRBY", key, 2), ("TTL", key)) == [5, 60]
    assert await redis.execute(("GET", key), ("GET", f"{key}:none")) == [b"5", None]


async def test_concurrent_callers_share_one_connection_and_each_gets_its_replies(
    redis: RedisClient,
) -> None:
    keys = [f"test:{uuid.uuid4()}" for _ in range(20)]
    replies = await asyncio.gather(
        *(redis.execute(("INCRBY", key, n), ("EXPIRE", key, 60)) for n, key in enumerate(keys))
    )
    assert replies == [[n, 1] for n in range(20)]
    connection = redis._connection
    await asyncio.gather(*(redis.execute(("INCRBY", key, 1)) for key in keys))
    assert redis._connection is connection


async def test_the_database_in_the_url_is_selected(redis: RedisClient) -> None:
    key = f"test:{uuid.uuid4()}"
    await redis.execute(("SET", key, "15"), ("EXPIRE", key, 60))
    other = RedisClient("redis://127.0.0.1:6379/14", timeout=2)
    try:
        assert await other.execute(("GET", key)) == [None]
    finally:
        await other.aclose()
    assert await redis.execute(("GET", key)) == [b"15"]


async def test_an_error_reply_is_a_redis_error_and_the_connection_stays(
    redis: RedisClient,
) -> None:
    key = f"test:{uuid.uuid4()}"
    await redis.execute(("SET", key, "not a number"), ("EXPIRE", key, 60))
    with pytest.raises(RedisError, match="not an integer"):
        await redis.execute(("INCRBY", key, 1))
    assert await redis.execute(("PING",)) == ["PONG"]


async def test_a_refused_password_fails_the_call_without_naming_it(redis: RedisClient) -> None:
    """The machine's Redis has no password: AUTH is refused, and the call with it."""
    client = RedisClient("redis://:hunter2@127.0.0.1:6379/15", timeout=2)
    try:
        with pytest.raises(RedisError, match="Redis refused a command") as refused:
            await client.execute(("PING",))
        assert "hunter2" not in str(refused.value)
        assert client._connection is None
    finally:
        await client.aclose()


async def test_rediss_checks_the_certificate_and_talks_through_tls(
    redis: RedisClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rediss://``: TLS with the system's store or ``SSL_CERT_FILE``; a certificate it does
    not trust is refused. (A TLS terminator in front of the machine's Redis.)"""
    context, cert_file = server_context(tmp_path)

    async def terminate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*REDIS)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_server(terminate, "127.0.0.1", 0, ssl=context)
    url = f"rediss://127.0.0.1:{server.sockets[0].getsockname()[1]}/15"
    async with server:
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        untrusting = RedisClient(url, timeout=2)
        with pytest.raises(RedisError, match="could not be reached"):
            await untrusting.execute(("PING",))
        await untrusting.aclose()
        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
        trusting = RedisClient(url, timeout=2)
        try:
            assert await trusting.execute(("PING",)) == ["PONG"]
        finally:
            await trusting.aclose()


async def test_a_silent_server_times_out_and_the_next_call_reconnects() -> None:
    connections: list[int] = []

    async def silent_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        if len(connections) == 1:
            await asyncio.sleep(5)
            return
        while await reader.read(65536):
            writer.write(b"+PONG\r\n")
            await writer.drain()

    server, url = await _serve(silent_once)
    async with server:
        client = RedisClient(url, timeout=0.3)
        try:
            began = asyncio.get_running_loop().time()
            with pytest.raises(RedisError, match=r"did not answer within 0\.3 s"):
                await client.execute(("PING",))
            assert asyncio.get_running_loop().time() - began < 2
            assert await client.execute(("PING",)) == ["PONG"]
        finally:
            await client.aclose()
    assert len(connections) == 2


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not a RESP2 reply"),
        (b":12x\r\n", "not an integer"),
        (b"$5\r\nabcdefg\r\n", "not ended as RESP"),
        (b"$99999999\r\n", "longer than"),
        (b"$--1\r\n", "without its length"),
        (b"", "closed"),
    ],
    ids=["http", "bad integer", "bad bulk", "huge bulk", "bad length", "closed"],
)
async def test_an_answer_that_is_not_resp_fails_the_call(answer: bytes, problem: str) -> None:
    async def answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(answer)
        await writer.drain()
        writer.close()

    server, url = await _serve(answering)
    async with server:
        client = RedisClient(url, timeout=2)
        try:
            with pytest.raises(RedisError, match=problem):
                await client.execute(("PING",))
        finally:
            await client.aclose()


async def test_a_reply_nobody_asked_for_retires_the_connection() -> None:
    connections: list[int] = []

    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while await reader.read(65536):
            writer.write(b"+PONG\r\n+EXTRA\r\n")
            await writer.drain()

    server, url = await _serve(chatty)
    async with server:
        client = RedisClient(url, timeout=2)
        try:
            assert await client.execute(("PING",)) == ["PONG"]
            assert await client.execute(("PING",)) == ["PONG"]
        finally:
            await client.aclose()
    assert len(connections) == 2


async def test_a_refused_connection_is_a_redis_error() -> None:
    server, url = await _serve(lambda _r, w: asyncio.sleep(0))
    server.close()
    await server.wait_closed()
    client = RedisClient(url, timeout=2)
    with pytest.raises(RedisError, match="could not be reached"):
        await client.execute(("PING",))
    await client.aclose()
    with pytest.raises(RedisError, match="closed"):
        await client.execute(("PING",))


def test_commands_are_resp_arrays_of_bulk_strings() -> None:
    assert encode("INCRBY", "k\r\n", 3) == b"*3\r\n$6\r\nINCRBY\r\n$3\r\nk\r\n\r\n$1\r\n3\r\n"


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://localhost", RedisAddress(host="localhost")),
        ("redis://r.example:6380/3", RedisAddress(host="r.example", port=6380, db=3)),
        (
            "rediss://app:p%40ss@r.example/2",
            RedisAddress(host="r.example", tls=True, username="app", password="p@ss", db=2),
        ),
        ("redis://:secret@r.example?db=4", RedisAddress(host="r.example", password="secret", db=4)),
        ("unix:///run/redis.sock?db=1", RedisAddress(path="/run/redis.sock", db=1)),
    ],
)
def test_urls_read_as_redis_py_read_them(url: str, address: RedisAddress) -> None:
    assert RedisAddress.parse(url) == address


@pytest.mark.parametrize(
    "url",
    [
        "http://:secret@r.example",
        "redis://:secret@r.example/zero",
        "redis://:secret@r.example:99999",
        "redis://:secret@r.example?ssl_cert_reqs=none",
        "redis://:secret@/0",
        "unix://:secret@",
    ],
)
def test_a_url_the_client_cannot_use_is_refused_at_start_up_without_its_password(
    url: str,
) -> None:
    """What start-up prints is each error's message (``cli.main``), never the input."""
    with pytest.raises(ValidationError) as refused:
        make_settings("sqlite+aiosqlite:///unused.db", redis_url=url)
    printed = "; ".join(str(error["msg"]) for error in refused.value.errors())
    assert "SSO_BROKER_REDIS_URL is not a Redis URL" in printed
    assert "secret" not in printed
