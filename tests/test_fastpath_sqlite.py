"""The embedded SQLite's hot paths (``fastpath_sqlite.py``): reads never wait behind writes,
and a write waits for another process's lock no longer than the configured timeout."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from sso_broker import database, fastpath_sqlite
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
    """Concurrent hot-path writes are each committed in their task's first step (inline,
    the lock being free) or handed to the writer lane, which commits them while the event
    loop is busy elsewhere: a write waits for the writes ahead of it, never for the loop to
    pass a turn on (README, *Performance*)."""
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


@contextmanager
def statement_threads(fast: SQLiteFastPath) -> Iterator[list[tuple[str, bool]]]:
    """Each statement the hot path sends from now on, and whether it ran on this thread
    (the event loop's)."""
    loop_thread = threading.get_ident()
    seen: list[tuple[str, bool]] = []
    fast.trace(lambda statement: seen.append((statement, threading.get_ident() == loop_thread)))
    try:
        yield seen
    finally:
        fast.trace(None)


@pytest.mark.usefixtures("sqlite_only")
async def test_uncontended_reads_and_writes_run_on_the_event_loop_without_waiting(
    context: AppContext, factory: Factory
) -> None:
    """Nothing waits for a lock: each operation runs on the loop's own connection, which is
    told never to wait (busy timeout 0) and never to checkpoint (README, *Performance*)."""
    provider = await factory.provider(await factory.company())
    fast = context.fast
    assert isinstance(fast, SQLiteFastPath)
    with statement_threads(fast) as seen:
        assert await fast.provider(provider.id) is not None
        assert await fast.consume_state(uuid.uuid4().hex, utcnow() + timedelta(minutes=5))
    assert seen
    assert all(on_loop for _, on_loop in seen), seen
    assert fast._inline is not None
    assert fast._inline.execute("PRAGMA busy_timeout").fetchone() == (0,)
    assert fast._inline.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)


@pytest.mark.usefixtures("sqlite_only")
async def test_a_write_that_would_wait_goes_to_the_writer_lane_and_the_loop_runs_on(
    context: AppContext,
) -> None:
    fast = context.fast
    assert isinstance(fast, SQLiteFastPath)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    try:
        with statement_threads(fast) as seen, write_lock_held_elsewhere(context):
            write = asyncio.create_task(
                fast.consume_state(uuid.uuid4().hex, utcnow() + timedelta(minutes=5))
            )
            await asyncio.sleep(0.3)
            assert not write.done()
            assert ticks >= 10, "the loop went on while the write waited for the lock"
            # A second one while the lock is held elsewhere: tried inline, then on the lane.
            second = asyncio.create_task(
                fast.consume_state(uuid.uuid4().hex, utcnow() + timedelta(minutes=5))
            )
            await asyncio.sleep(0.05)
            assert not second.done()
        assert await write is True
        assert await second is True
    finally:
        ticking.cancel()
    on_lane = [statement for statement, on_loop in seen if not on_loop]
    assert on_lane.count("BEGIN IMMEDIATE") == 2, seen
    tried = [statement for statement, on_loop in seen if on_loop]
    assert tried == ["BEGIN IMMEDIATE", "BEGIN IMMEDIATE"], seen


@pytest.mark.usefixtures("sqlite_only")
async def test_a_lane_checkpoints_what_inline_writes_log(
    context: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inline connection never checkpoints (a checkpoint syncs the disk); every
    CHECKPOINT_EVERY inline writes the reader lane does, so the log does not grow without
    end."""
    monkeypatch.setattr(fastpath_sqlite, "CHECKPOINT_EVERY", 5)
    fast = context.fast
    assert isinstance(fast, SQLiteFastPath)
    expires = utcnow() + timedelta(minutes=5)
    with statement_threads(fast) as seen:
        for _ in range(10):
            assert await fast.consume_state(uuid.uuid4().hex, expires)
        assert fast._checkpoint is not None
        await fast._checkpoint
    checkpoints = [on_loop for statement, on_loop in seen if "wal_checkpoint" in statement]
    assert checkpoints, seen
    assert not any(checkpoints), "never on the event loop"


@pytest.mark.usefixtures("sqlite_only")
async def test_every_connection_limits_the_log_it_starts_over(context: AppContext) -> None:
    """Under writes that never pause the log grows (README, *SQLite under load*); once it
    starts over, whichever connection starts it cuts the file back to SQLITE_LOG_LIMIT."""
    fast = context.fast
    assert isinstance(fast, SQLiteFastPath)
    assert await fast.consume_state(uuid.uuid4().hex, utcnow() + timedelta(minutes=5))
    assert fast._inline is not None
    limits = [fast._inline.execute("PRAGMA journal_size_limit").fetchone()[0]]
    async with context.engine.connect() as connection:
        limits.append(await connection.scalar(text("PRAGMA journal_size_limit")))
    assert limits == [database.SQLITE_LOG_LIMIT] * 2


def test_a_log_grown_past_the_limit_is_cut_back_when_it_starts_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "SQLITE_LOG_LIMIT", 64 * 1024)
    path = tmp_path / "log.db"
    log = tmp_path / "log.db-wal"
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        database.sqlite_on_connect(connection, None)
        connection.execute("PRAGMA wal_autocheckpoint=0")
        connection.execute("CREATE TABLE pages (data BLOB)")
        for _ in range(100):
            connection.execute("INSERT INTO pages VALUES (randomblob(4000))")
        assert log.stat().st_size > 400 * 1024
        connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        connection.execute("INSERT INTO pages VALUES (randomblob(10))")  # starts it over
        assert log.stat().st_size <= 64 * 1024
