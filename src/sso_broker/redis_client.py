"""The rate limiter's Redis client: RESP2 commands, pipelined on one multiplexed connection.

The limiter asks Redis one thing: for each counter a request reserves, ``INCRBY`` and
``EXPIRE``, all in one pipelined round trip (``ratelimit.RedisCounters``). redis-py, which did
it before, cost each worker 6.2 MB: importing any part of it imports all of it (its cluster
and sentinel clients, every command of every Redis module), where the service needs a few
dozen lines (README, *Performance*). This client writes commands as RESP arrays and reads
the four kinds of reply those commands can get (``+``, ``-``, ``:``, ``$``); anything else is
a protocol error that drops the connection.

Requests from every coroutine share one connection: Redis answers in order, so each waiter
is queued and handed its replies as they arrive, and a waiter that gave up is skipped. A
failure (refused, closed, silent past the timeout, an answer that is not RESP) fails every
waiter with :class:`RedisError` and the next call reconnects; the limiter then lets requests
through and logs it (``ratelimit.take``).

URLs as redis-py read them: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://``
(TLS, the system's certificate store, or ``SSL_CERT_FILE``), ``unix://[[user]:password@]/path
[?db=N]``. Anything else is refused when the settings load (``config.py``).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import urllib.parse
from collections import deque
from dataclasses import dataclass
from typing import cast

Reply = int | bytes | str | None

_MAX_BULK = 1024 * 1024  # the limiter's replies are integers; nothing it asks is this long
_MAX_BUFFERED = 4 * 1024 * 1024
_LENGTH = re.compile(rb"-1|[0-9]{1,10}")


class RedisError(Exception):
    """Redis could not be reached, refused a command, or answered what is not RESP."""


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str = ""
    port: int = 6379
    path: str = ""  # a Unix socket, instead of host and port
    tls: bool = False
    username: str | None = None
    password: str | None = None
    db: int = 0

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """The address a URL names; ``ValueError`` (without the URL, which may hold a
        password) when it is not one this client can use."""
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValueError("not a URL") from None
        username = urllib.parse.unquote(parts.username) if parts.username else None
        password = urllib.parse.unquote(parts.password) if parts.password else None
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        if set(query) - {"db"}:
            raise ValueError(f"unsupported URL parameters: {', '.join(sorted(set(query)))}")
        db_text = (query.get("db") or [""])[-1]
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError("unix:// names no socket path")
            return cls(path=parts.path, username=username, password=password, db=_db(db_text))
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"{parts.scheme or 'no'} scheme: redis://, rediss:// or unix://")
        if not parts.hostname:
            raise ValueError("the URL names no host")
        path_db = parts.path.strip("/")
        return cls(
            host=parts.hostname,
            port=port or 6379,
            tls=parts.scheme == "rediss",
            username=username,
            password=password,
            db=_db(db_text or path_db),
        )


def _db(text: str) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError("the database number is not a number")
    return int(text)


def encode(*args: str | bytes | int) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Waiter:
    __slots__ = ("future", "replies", "wanted")

    def __init__(self, future: asyncio.Future[list[Reply | RedisError]], wanted: int) -> None:
        self.future, self.wanted = future, wanted
        self.replies: list[Reply | RedisError] = []


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._waiters: deque[_Waiter] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            self._deliver()
        except RedisError as e:
            self.fail(e)
            return
        except Exception as e:  # never a crash of the loop's callback: the call fails instead
            self.fail(RedisError(f"an answer the client could not read ({type(e).__name__})"))
            return
        if len(self._buffer) > _MAX_BUFFERED:
            self.fail(RedisError("Redis answered more than any command asked for"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisError(f"the connection to Redis closed ({exc or 'by the server'})"))

    def send(self, payload: bytes, wanted: int) -> asyncio.Future[list[Reply | RedisError]]:
        assert self.transport is not None  # noqa: S101 - connected before any command
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(_Waiter(future, wanted))
        self.transport.write(payload)
        return future

    def fail(self, error: RedisError) -> None:
        """Drops the connection, failing every waiter with ``error``."""
        self.closed = True
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if not waiter.future.done():
                waiter.future.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    def _deliver(self) -> None:
        buffer, position = self._buffer, 0
        while self._waiters:
            waiter = self._waiters[0]
            while len(waiter.replies) < waiter.wanted:
                parsed = _parse(buffer, position)
                if parsed is None:
                    del buffer[:position]
                    return
                reply, position = parsed
                waiter.replies.append(reply)
            self._waiters.popleft()
            if not waiter.future.done():  # else its caller gave up: the replies are dropped
                waiter.future.set_result(waiter.replies)
        del buffer[:position]
        if buffer:
            raise RedisError("Redis answered a command nobody sent")


def _parse(buffer: bytearray, start: int) -> tuple[Reply | RedisError, int] | None:
    """One reply from ``start``, and where the next begins; None when it is not all in."""
    end = buffer.find(b"\r\n", start)
    if end < 0:
        if len(buffer) - start > _MAX_BULK:
            raise RedisError("a reply line longer than any Redis sends the limiter")
        return None
    kind, line = buffer[start : start + 1], bytes(buffer[start + 1 : end])
    if kind == b":":
        try:
            return int(line), end + 2
        except ValueError:
            raise RedisError("an integer reply that is not an integer") from None
    if kind == b"+":
        return line.decode("utf-8", "replace"), end + 2
    if kind == b"-":
        return RedisError(f"Redis refused a command: {line.decode('utf-8', 'replace')}"), end + 2
    if kind == b"$":
        if _LENGTH.fullmatch(line) is None:
            raise RedisError("a bulk reply without its length")
        length = int(line)
        if length == -1:
            return None, end + 2
        if not 0 <= length <= _MAX_BULK:
            raise RedisError("a bulk reply longer than any Redis sends the limiter")
        if len(buffer) < end + 2 + length + 2:
            return None
        if buffer[end + 2 + length : end + 4 + length] != b"\r\n":
            raise RedisError("a bulk reply not ended as RESP ends one")
        return bytes(buffer[end + 2 : end + 2 + length]), end + 4 + length
    raise RedisError("an answer that is not a RESP2 reply the limiter expects")


class RedisClient:
    """Commands to one Redis, each call bounded by ``timeout`` seconds (connecting, and
    authenticating, included)."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self.address = RedisAddress.parse(url)
        self.timeout = timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Lock | None = None
        self._closed = False

    async def execute(self, *commands: tuple[str | bytes | int, ...]) -> list[Reply]:
        """Sends the commands in one write and answers their replies, in order; the first
        error reply raises :class:`RedisError`, as do a lost or silent connection."""
        connection = None
        try:
            async with asyncio.timeout(self.timeout):
                connection = self._connection
                if connection is None or connection.closed:
                    connection = await self._connect()
                payload = b"".join(encode(*command) for command in commands)
                replies = await connection.send(payload, len(commands))
        except TimeoutError:
            silent = RedisError(f"Redis did not answer within {self.timeout:g} s")
            if connection is not None:  # half-dead, perhaps: the next call opens another
                connection.fail(silent)
            raise silent from None
        except OSError as e:  # refused, unreachable, TLS
            raise RedisError(f"Redis could not be reached: {type(e).__name__}: {e}") from None
        for reply in replies:
            if isinstance(reply, RedisError):
                raise reply
        return cast(list[Reply], replies)

    async def _connect(self) -> _Connection:
        if self._closed:
            raise RedisError("the Redis client is closed")
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # one connection for every caller that finds none
            if self._connection is not None and not self._connection.closed:
                return self._connection
            loop = asyncio.get_running_loop()
            address = self.address
            if address.path:
                _, connection = await loop.create_unix_connection(_Connection, address.path)
            else:
                context = ssl.create_default_context() if address.tls else None
                _, connection = await loop.create_connection(
                    _Connection, address.host, address.port, ssl=context
                )
            hello: list[tuple[str | bytes | int, ...]] = []
            if address.password is not None and address.username:
                hello.append(("AUTH", address.username, address.password))
            elif address.password is not None:
                hello.append(("AUTH", address.password))
            if address.db:
                hello.append(("SELECT", address.db))
            if hello:
                payload = b"".join(encode(*command) for command in hello)
                replies = await connection.send(payload, len(hello))
                refused = [reply for reply in replies if isinstance(reply, RedisError)]
                if refused:
                    connection.fail(refused[0])
                    raise refused[0]
            self._connection = connection
            return connection

    async def aclose(self) -> None:
        self._closed = True
        if self._connection is not None:
            self._connection.fail(RedisError("the Redis client is closed"))
            self._connection = None
