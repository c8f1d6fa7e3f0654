"""The embedded SQLite's hot paths (``fastpath_sqlite.py``): reads never wait behind writes,
and a write waits for another process's lock no longer than the configured timeout."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import timedelta

import pytest

from sso_broker.database import utcnow
from sso_broker.deps import AppContext
from sso_broker.fastpath_sqlite import SQLiteFastPath
from sso_broker.problems import is_database_unavailable
from tests.conftest import Database, Factory


@pytest.fixture
def sqlite_only(database: Database) -> None:
    if database.backend != "sqlite":
        pytest.skip("SQLite's own hot paths")


@contextmanager
def write_lock_held_elsewhere(context: AppContext) -> Iterator[None]:
    """Another connection (another process, as far as SQLite can tell) holds the write lock."""
    database = context.engine.url.database
    assert database is not None
    other = sqlite3.connect(database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


@pytest.mark.usefixtures("sqlite_only")
async def test_a_read_does_not_wait_behind_a_write_that_waits_for_a_lock(
    context: AppContext, factory: Factory
) -> None:
    provider = await factory.provider(await factory.company())
    fast = context.fast
    with write_lock_held_elsewhere(context):
        write = asyncio.create_task(
            fast.consume_state(uuid.uuid4().hex, utcnow() + timedelta(minutes=5))
        )
        await asyncio.sleep(0.2)  # the write is now waiting for the lock on its thread
        began = time.perf_counter()
        read = await fast.provider(provider.id)
        took = time.perf_counter() - began
        assert not write.done()
    assert read is not None
    assert read.id == provider.id
    assert took < 0.5, took
    assert await write is True


@pytest.mark.usefixtures("sqlite_only")
async def test_a_write_gives_up_after_the_configured_timeout_as_an_outage(
    context: AppContext,
) -> None:
    fast = SQLiteFastPath(context.engine, timeout=0.3)
    try:
        with write_lock_held_elsewhere(context):
            began = time.perf_counter()
            with pytest.raises(sqlite3.OperationalError) as busy:
                await fast.consume_state(uuid.uuid4().hex, utcnow() + timedelta(minutes=5))
            took = time.perf_counter() - began
    finally:
        await fast.close()
    assert 0.25 < took < 2.0, took
    assert is_database_unavailable(busy.value)


@pytest.mark.usefixtures("sqlite_only")
async def test_after_close_every_operation_is_an_outage(context: AppContext) -> None:
    fast = SQLiteFastPath(context.engine, timeout=1)
    await fast.close()
    with pytest.raises(ConnectionError) as closed:
        await fast.provider(uuid.uuid4())
    assert is_database_unavailable(closed.value)
    with pytest.raises(ConnectionError):
        await fast.consume_state("x", utcnow())


@pytest.mark.usefixtures("sqlite_only")
async def test_a_naive_time_is_refused_not_stored(context: AppContext) -> None:
    with pytest.raises(ValueError, match="naive"):
        await context.fast.consume_state("x", utcnow().replace(tzinfo=None))


@pytest.mark.usefixtures("sqlite_only")
async def test_writes_queue_on_the_writer_thread_not_on_the_event_loop(
    context: AppContext,
) -> None:
    """Concurrent hot-path writes are all handed to the writer lane at once, and it commits
    them one after another while the event loop is busy elsewhere: a write waits for the
    writes ahead of it, never for the loop to pass a turn on (README, *Performance*)."""
    database = context.engine.url.database
    assert database is not None
    expires = utcnow() + timedelta(minutes=5)
    states = [uuid.uuid4().hex for _ in range(20)]
    writes = [asyncio.create_task(context.fast.consume_state(s, expires)) for s in states]
    await asyncio.sleep(0)  # each task runs up to its hand-off to the lane
    time.sleep(0.5)  # the event loop busy with something else  # noqa: ASYNC251
    with closing(sqlite3.connect(database)) as other:
        placeholders = ", ".join("?" * len(states))
        (committed,) = other.execute(
            f"SELECT count(*) FROM consumed_login_states WHERE state_hash IN ({placeholders})",  # noqa: S608
            states,
        ).fetchone()
    assert committed == len(states)
    assert all(await asyncio.gather(*writes))
