"""Database plumbing: declarative base, engine factory, the request's session."""

from __future__ import annotations

import asyncio
import fcntl
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from weakref import WeakKeyDictionary

from sqlalchemy import DateTime, Delete, MetaData, Table, delete, event, select, text
from sqlalchemy.engine import Dialect, Engine, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from sso_broker.config import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# One key for every sso-broker process: migrations and first-start bootstrap run under it.
ADVISORY_LOCK_KEY = 0x550B_0E4E


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; attach a timezone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


def table_of(model: type[Base]) -> Table:
    """A mapped class's table, for prebuilt Core statements on the hot paths."""
    return cast(Table, model.__table__)


class IdMixin:
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# SQLite's page cache of each connection, in KiB (negative: a size, not a page count).
SQLITE_CACHE_SIZE = -256

# The most SQLite's write-ahead log keeps on disk once it has started over, in bytes.
SQLITE_LOG_LIMIT = 64 * 1024 * 1024


def sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    # With WAL, NORMAL syncs at checkpoints rather than at every commit: a crash of the
    # process loses nothing, a power cut at most the last commits (README, *Performance*).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    # Each connection (the pool's, up to 15, and the hot paths' lanes, each on a thread of
    # its own) caches pages: 2 MB by default, which the connections filled and the process
    # kept. In WAL mode a commit by another connection resets a cache anyway, and a page read
    # again comes from the OS's cache in microseconds: at 256 KB the benchmark's CPU per
    # request did not change, and a worker's peak fell 2.5 MB (README, *Performance*).
    cursor.execute(f"PRAGMA cache_size={SQLITE_CACHE_SIZE}")
    # The log file keeps its size when it starts over; one that a long run of writes grew
    # past this is cut back to it then (README, *SQLite under load*).
    cursor.execute(f"PRAGMA journal_size_limit={SQLITE_LOG_LIMIT}")
    cursor.close()


_gate_held: ContextVar[bool] = ContextVar("sso_broker_write_gate_held", default=False)


class WriteGate:
    """Queues this process's ORM units of work on SQLite, first come first served.

    SQLite lets one writer in at a time and makes the others sleep and retry (its busy
    handler naps up to 100 ms, in no order): at ten concurrent sign-ins that put the slowest
    at 1.5 s (README, *Performance*). Queued here, each waits only for the writes ahead of
    it. The hot paths' writes do not pass here: they queue on their own writer thread
    (``fastpath_sqlite.py``), where a turn costs no trip through the event loop, and meet
    the ORM's rarer writes at SQLite's lock. PostgreSQL needs no gate. A task already inside
    the gate passes straight through, so nested units of work cannot deadlock.

    The ORM's transactions need no BEGIN IMMEDIATE: the driver begins one only before the
    first INSERT, UPDATE or DELETE, whose lock SQLite then waits for with its busy handler
    (the reads before it run on their own), so no transaction ever holds a read snapshot it
    has to upgrade to a write, the case a busy timeout cannot resolve.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._lock = asyncio.Lock() if engine.dialect.name == "sqlite" else None

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        if self._lock is None or _gate_held.get():
            yield
            return
        async with self._lock:
            token = _gate_held.set(True)
            try:
                yield
            finally:
                _gate_held.reset(token)


_gates: WeakKeyDictionary[Engine, WriteGate] = WeakKeyDictionary()


def write_gate(engine: AsyncEngine) -> WriteGate:
    gate = _gates.get(engine.sync_engine)
    if gate is None:
        gate = _gates[engine.sync_engine] = WriteGate(engine)
    return gate


# The most rows a housekeeping purge deletes from one table in one transaction
# (``housekeeping.py``). On SQLite that transaction holds the one write lock every sign-in
# and token request needs: deleting every expired row at once read whole tables under it,
# 1.1 s at 2 million refresh tokens and up to 4.6 s at 7 million, until token requests waited
# out the busy timeout and answered 503 (README, *Performance*). Found by an index on the
# expiry, 500 rows cost 15-20 ms at most, and a backlog goes batch after batch.
PURGE_BATCH = 500


def expired_rows(
    key: InstrumentedAttribute[Any], expires_at: InstrumentedAttribute[datetime], now: datetime
) -> Delete:
    """DELETE of at most ``PURGE_BATCH`` rows whose ``expires_at`` is before ``now``, by the
    table's key ``key``; the ORM's session is not searched for the deleted objects."""
    expired = select(key).where(expires_at < now).limit(PURGE_BATCH)
    table = key.class_
    return (
        delete(table)
        .where(key.in_(expired.scalar_subquery()))
        .execution_options(synchronize_session=False)
    )


def create_engine(settings: Settings, *, url: str | None = None) -> AsyncEngine:
    """Builds the engine with timeouts, so a dead database fails fast instead of hanging."""
    database_url = url or settings.database_url
    parsed = make_url(database_url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            database_url,
            connect_args={"timeout": settings.database_timeout},
            hide_parameters=True,
        )
        event.listen(engine.sync_engine, "connect", sqlite_on_connect)
        return engine
    engine = create_async_engine(
        database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_size,
        pool_timeout=settings.database_timeout,
        # No ping before each checkout: it was one round trip in three on /me (README,
        # *Performance*). A connection that died is found by its first statement instead;
        # SQLAlchemy then invalidates every pooled connection that is older than the failure.
        pool_recycle=1800,
        # Errors must never carry bound values (encrypted secrets, token hashes) into logs.
        hide_parameters=True,
        connect_args={
            "timeout": settings.database_timeout,
            "command_timeout": settings.database_timeout * 6,
            "server_settings": {"application_name": "sso-broker"},
        },
    )
    event.listen(engine.sync_engine, "checkout", _skip_closed_connection)
    return engine


def _skip_closed_connection(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Hands out no connection the server has already closed (a restart, a terminated
    backend), without the round trip a pre-ping costs: asyncpg notices the server's goodbye
    by itself, and the pool replaces a connection refused here (SQLAlchemy's "custom
    pessimistic ping"). A connection that died silently fails its first statement instead."""
    driver = getattr(dbapi_connection, "driver_connection", None)
    if driver is not None and driver.is_closed():
        raise DisconnectionError("the database server closed this connection")


def create_sessionmaker(
    engine: AsyncEngine, *, info: dict[str, Any] | None = None
) -> async_sessionmaker[AsyncSession]:
    """Sessions for units of work; ``info`` (the process's caches) is copied into each."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False, info=info)


def create_autocommit(
    engine: AsyncEngine, *, info: dict[str, Any] | None = None
) -> async_sessionmaker[AsyncSession]:
    """Sessions whose every statement commits on its own: for a single read or a single
    write, which then costs no BEGIN and COMMIT (or ROLLBACK) round trips of its own."""
    return async_sessionmaker(
        engine.execution_options(isolation_level="AUTOCOMMIT"),
        expire_on_commit=False,
        autoflush=False,
        info=info,
    )


@asynccontextmanager
async def session_scope(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One unit of work: commits when the block succeeds, rolls back when it raises."""
    bind = sessionmaker.kw.get("bind")
    gate = write_gate(bind).hold() if isinstance(bind, AsyncEngine) else nullcontext()
    async with gate, sessionmaker() as session, session.begin():
        yield session


@asynccontextmanager
async def autocommit_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection whose every statement commits on its own: the hot paths' statements are
    each atomic, so BEGIN and COMMIT would only add round trips (README, *Performance*).
    On SQLite it waits its turn at the write gate."""
    async with write_gate(engine).hold(), engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        yield connection


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A Core transaction for statements that must land together (SQLite, gated)."""
    async with write_gate(engine).hold(), engine.begin() as connection:
        yield connection


def _sqlite_lock_path(engine: AsyncEngine) -> Path | None:
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    return Path(database).with_name(Path(database).name + ".lock")


def _flock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@asynccontextmanager
async def bootstrap_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection that holds the cross-process bootstrap lock; commits when the block ends.

    Migrations and first-start bootstrap run inside it, so two processes starting at once
    never run the same migration twice or create two signing keys. On PostgreSQL that is a
    transaction-level advisory lock; on SQLite (one host) an exclusive lock on a file beside
    the database.
    """
    lock_fd: int | None = None
    if engine.dialect.name == "sqlite":
        lock_path = _sqlite_lock_path(engine)
        if lock_path is not None:
            lock_fd = await asyncio.to_thread(_flock, lock_path)
    try:
        async with engine.connect() as connection, connection.begin():
            # One explicit transaction: sessions bound to this connection join it rather
            # than commit or roll back on their own.
            if connection.dialect.name == "postgresql":
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
                )
            yield connection
    finally:
        if lock_fd is not None:
            os.close(lock_fd)  # closing the descriptor releases the lock


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
