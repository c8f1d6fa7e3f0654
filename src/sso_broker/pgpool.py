"""A lean pool of asyncpg connections for the hot paths' single statements (``fastpath.py``).

asyncpg's own pool costs about 40 µs of CPU per statement on top of the statement itself
(measured: 90 µs against 48 µs for ``SELECT $1`` on loopback): every release runs under
``asyncio.shield`` in a task of its own, with a timeout, and re-arms an idle timer. A
sign-in sends six statements, so that was a quarter of a millisecond (README,
*Performance*). Here a statement borrows an idle connection from a list and gives it back;
nothing else happens on the way.

What it keeps of asyncpg's pool, because a service needs it:

* at most ``max_size`` connections; a caller beyond that waits its turn (first come, first
  served) for at most ``acquire_timeout`` seconds, then gets ``TimeoutError``;
* a connection the server or the network closed is never handed out again, and one idle for
  longer than ``max_idle`` seconds is closed instead of reused (a proxy or firewall may have
  dropped it silently);
* a statement interrupted for any reason other than an error the server answered (a
  cancellation, a timeout, a lost connection) leaves its connection in an unknown state, so
  that connection is closed, never reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg


class LeanPool:
    """``execute``, ``fetch``, ``fetchrow`` and ``fetchval`` on a borrowed connection."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        *,
        max_size: int,
        acquire_timeout: float,
        max_idle: float = 300.0,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._connect = connect
        self._max_size = max_size
        self._acquire_timeout = acquire_timeout
        self._max_idle = max_idle
        self._idle: list[tuple[asyncpg.Connection, float]] = []  # the last one is the warmest
        self._size = 0  # connections open or being opened
        # Each waiter is handed a connection, or None: "a place is free, open one yourself".
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._closed = False

    @property
    def size(self) -> int:
        """Connections open or being opened."""
        return self._size

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def execute(self, query: str, *args: Any) -> str:
        connection = await self._acquire()
        try:
            result: str = await connection.execute(query, *args)
        except BaseException as e:
            self._release(connection, broken=not isinstance(e, asyncpg.PostgresError))
            raise
        self._release(connection, broken=False)
        return result

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        connection = await self._acquire()
        try:
            row: asyncpg.Record | None = await connection.fetchrow(query, *args)
        except BaseException as e:
            self._release(connection, broken=not isinstance(e, asyncpg.PostgresError))
            raise
        self._release(connection, broken=False)
        return row

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        connection = await self._acquire()
        try:
            rows: list[asyncpg.Record] = await connection.fetch(query, *args)
        except BaseException as e:
            self._release(connection, broken=not isinstance(e, asyncpg.PostgresError))
            raise
        self._release(connection, broken=False)
        return rows

    async def fetchval(self, query: str, *args: Any) -> Any:
        connection = await self._acquire()
        try:
            value = await connection.fetchval(query, *args)
        except BaseException as e:
            self._release(connection, broken=not isinstance(e, asyncpg.PostgresError))
            raise
        self._release(connection, broken=False)
        return value

    async def open(self) -> None:
        """Opens one connection now, so that a wrong database URL fails at start-up."""
        self._release(await self._acquire(), broken=False)

    async def close(self) -> None:
        """Closes the idle connections; one in use is closed when it comes back."""
        self._closed = True
        idle, self._idle = self._idle, []
        self._size -= len(idle)
        for connection, _ in idle:
            try:
                await connection.close(timeout=self._acquire_timeout)
            except Exception:
                connection.terminate()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(asyncpg.InterfaceError("the pool is closed"))

    async def _acquire(self) -> asyncpg.Connection:
        if self._closed:
            raise asyncpg.InterfaceError("the pool is closed")
        connection = self._take_idle()
        if connection is not None:
            return connection
        # A newcomer never jumps the queue: with callers waiting, it waits behind them.
        if self._size < self._max_size and not self._waiters:
            self._size += 1
            return await self._open_reserved()
        handed = await self._wait()
        if handed is not None:
            return handed
        # A place came free and was kept for this caller (counted in _size already).
        if self._closed:
            self._free_place()
            raise asyncpg.InterfaceError("the pool is closed")
        return await self._open_reserved()

    def _take_idle(self) -> asyncpg.Connection | None:
        now = time.monotonic()
        while self._idle:
            connection, since = self._idle.pop()
            if not connection.is_closed() and now - since <= self._max_idle:
                return connection
            self._size -= 1
            connection.terminate()
        return None

    async def _open_reserved(self) -> asyncpg.Connection:
        """Opens a connection in a place already counted in ``_size``."""
        try:
            return await self._connect()
        except BaseException:
            self._free_place()
            raise

    async def _wait(self) -> asyncpg.Connection | None:
        """Waits in line, at most ``acquire_timeout`` in all, for a connection or for a free
        place (None) that is then this caller's."""
        waiter: asyncio.Future[asyncpg.Connection | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._acquire_timeout):
                return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed over just as the wait ended: pass it on rather than lose it.
                handed = waiter.result()
                if handed is not None:
                    self._release(handed, broken=False)
                else:
                    self._free_place()
            else:
                with contextlib.suppress(ValueError):  # already taken off by close()
                    self._waiters.remove(waiter)
            raise

    def _free_place(self) -> None:
        """A counted place is given up: to the longest waiter, or back to the pool."""
        if not self._hand_over(None):
            self._size -= 1

    def _release(self, connection: asyncpg.Connection, *, broken: bool) -> None:
        if self._closed or broken or connection.is_closed() or connection.is_in_transaction():
            connection.terminate()
            self._free_place()
            return
        if not self._hand_over(connection):
            self._idle.append((connection, time.monotonic()))

    def _hand_over(self, handed: asyncpg.Connection | None) -> bool:
        """Hands ``handed`` (or a free place) to the longest waiter; False when none waits."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(handed)
                return True
        return False
