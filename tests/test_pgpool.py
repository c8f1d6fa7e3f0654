"""The hot paths' lean asyncpg pool (``pgpool.py``), on real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from sso_broker.pgpool import LeanPool
from tests.conftest import POSTGRES_URL

pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="needs SSO_BROKER_TEST_POSTGRES_URL")

DSN = POSTGRES_URL.replace("+asyncpg", "")


class Opener:
    """``asyncpg.connect`` to the test server, counting the connections it opened."""

    def __init__(self) -> None:
        self.opened = 0

    def __call__(self) -> Awaitable[asyncpg.Connection]:
        self.opened += 1
        return asyncpg.connect(DSN, timeout=5)


@pytest.fixture
async def make_pool() -> AsyncIterator[Callable[..., LeanPool]]:
    pools: list[LeanPool] = []

    def make(max_size: int = 2, acquire_timeout: float = 5.0, **kwargs: float) -> LeanPool:
        pool = LeanPool(Opener(), max_size=max_size, acquire_timeout=acquire_timeout, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


def opened(pool: LeanPool) -> int:
    opener = pool._connect
    assert isinstance(opener, Opener)
    return opener.opened


async def test_statements_reuse_one_connection_when_one_at_a_time(
    make_pool: Callable[..., LeanPool],
) -> None:
    pool = make_pool()
    for n in range(20):
        assert await pool.fetchval("SELECT $1::int", n) == n
    assert (await pool.fetchrow("SELECT 1 AS one"))["one"] == 1  # type: ignore[index]
    assert await pool.execute("SELECT 1") == "SELECT 1"
    assert opened(pool) == 1
    assert (pool.size, pool.idle) == (1, 1)


async def test_never_more_than_max_size_and_waiters_are_served(
    make_pool: Callable[..., LeanPool],
) -> None:
    pool = make_pool(max_size=3)
    running = peak = 0

    async def one() -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, pool.size)
        value: int = await pool.fetchval("SELECT pg_sleep(0.01)::text IS NOT NULL AND true")
        running -= 1
        return value

    answers = await asyncio.gather(*(one() for _ in range(40)))
    assert all(answers)
    assert peak <= 3
    assert opened(pool) == 3
    assert (pool.size, pool.idle) == (3, 3)


async def test_a_waiter_gives_up_after_the_acquire_timeout(
    make_pool: Callable[..., LeanPool],
) -> None:
    pool = make_pool(max_size=1, acquire_timeout=0.2)
    slow = asyncio.create_task(pool.execute("SELECT pg_sleep(1)"))
    await asyncio.sleep(0.1)
    with pytest.raises(TimeoutError):
        await pool.fetchval("SELECT 1")
    await slow
    # The connection came back and serves again; nothing leaked.
    assert await pool.fetchval("SELECT 2") == 2
    assert (pool.size, pool.idle) == (1, 1)


async def test_a_server_error_keeps_the_connection(make_pool: Callable[..., LeanPool]) -> None:
    pool = make_pool(max_size=1)
    with pytest.raises(asyncpg.DivisionByZeroError):
        await pool.fetchval("SELECT 1 / 0")
    assert await pool.fetchval("SELECT 3") == 3
    assert opened(pool) == 1


async def test_a_cancelled_statement_closes_its_connection(
    make_pool: Callable[..., LeanPool],
) -> None:
    pool = make_pool(max_size=1)
    task = asyncio.create_task(pool.execute("SELECT pg_sleep(5)"))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (pool.size, pool.idle) == (0, 0)  # its state is unknown: never reused
    assert await pool.fetchval("SELECT 4") == 4
    assert opened(pool) == 2


async def test_a_connection_the_server_closed_is_not_handed_out(
    make_pool: Callable[..., LeanPool],
) -> None:
    pool = make_pool(max_size=1)
    pid = await pool.fetchval("SELECT pg_backend_pid()")
    killer = await asyncpg.connect(DSN)
    try:
        assert await killer.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await killer.close()
    for _ in range(50):  # the event loop notices the closed socket
        await asyncio.sleep(0.01)
    assert await pool.fetchval("SELECT pg_backend_pid()") != pid
    assert opened(pool) == 2


async def test_an_idle_connection_past_max_idle_is_replaced(
    make_pool: Callable[..., LeanPool],
) -> None:
    pool = make_pool(max_size=1, max_idle=0.05)
    first = await pool.fetchval("SELECT pg_backend_pid()")
    await asyncio.sleep(0.1)
    assert await pool.fetchval("SELECT pg_backend_pid()") != first
    assert (pool.size, opened(pool)) == (1, 2)


async def test_a_failed_connect_frees_its_place(make_pool: Callable[..., LeanPool]) -> None:
    pool = LeanPool(
        lambda: asyncpg.connect("postgresql://postgres@127.0.0.1:1/gone", timeout=1),
        max_size=1,
        acquire_timeout=1,
    )
    for _ in range(3):
        with pytest.raises(ConnectionRefusedError):
            await pool.fetchval("SELECT 1")
    assert pool.size == 0


async def test_closing_refuses_new_statements_and_closes_returning_ones(
    make_pool: Callable[..., LeanPool],
) -> None:
    pool = make_pool(max_size=2)
    busy = asyncio.create_task(pool.execute("SELECT pg_sleep(0.2)"))
    await asyncio.sleep(0.05)
    await pool.fetchval("SELECT 1")  # a second connection, now idle
    await pool.close()
    assert pool.idle == 0
    with pytest.raises(asyncpg.InterfaceError):
        await pool.fetchval("SELECT 1")
    await busy
    assert pool.size == 0


async def test_a_freed_place_goes_to_the_caller_who_waited_not_a_newcomer(
    make_pool: Callable[..., LeanPool],
) -> None:
    pool = make_pool(max_size=1)
    served: list[str] = []

    async def query(name: str) -> None:
        await pool.fetchval("SELECT $1::text", name)
        served.append(name)

    busy = asyncio.create_task(pool.execute("SELECT pg_sleep(5)"))
    await asyncio.sleep(0.1)
    waiter = asyncio.create_task(query("waiter"))
    await asyncio.sleep(0.1)
    busy.cancel()  # its connection is closed, and its place freed...
    newcomer = asyncio.create_task(query("newcomer"))  # ...as someone new arrives
    await asyncio.gather(waiter, newcomer)
    with pytest.raises(asyncio.CancelledError):
        await busy
    assert served == ["waiter", "newcomer"]
    assert pool.size <= 1
