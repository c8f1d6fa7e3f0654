"""The housekeeping purge of used login states, login codes and refresh tokens: a short write
transaction whatever the tables' size (``database.PURGE_BATCH``). Deleting every expired row
at once read whole tables under SQLite's one write lock, for seconds at a few million
refresh tokens, while sign-ins and token requests waited for it (README, *Performance*)."""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.dialects import sqlite

from sso_broker import database, housekeeping
from sso_broker.database import expired_rows, session_scope, utcnow
from sso_broker.deps import AppContext
from sso_broker.main import create_app
from sso_broker.sessions import service as sessions_service
from sso_broker.sessions.models import LoginCode, RefreshToken
from sso_broker.sso import state
from sso_broker.sso.models import ConsumedState
from tests.conftest import Database, Factory, make_settings

BATCH = 5
EXPIRED = BATCH + 3  # rows past their end in each table
LIVE = 2  # rows still in force in each table


async def _fill(context: AppContext, factory: Factory) -> None:
    user = await factory.user(await factory.company())
    now = utcnow()
    async with session_scope(context.sessionmaker) as session:
        sign_in = await sessions_service.start(
            session, user, provider_id=None, lifetime=timedelta(hours=1)
        )
        for n in range(EXPIRED + LIVE):
            expires = now + (timedelta(minutes=5) if n < LIVE else -timedelta(seconds=1 + n))
            ours = {"session_id": sign_in.id, "expires_at": expires}
            session.add(ConsumedState(state_hash=secrets.token_hex(32), expires_at=expires))
            session.add(LoginCode(code_hash=secrets.token_hex(32), **ours))
            session.add(RefreshToken(token_hash=secrets.token_hex(32), **ours))


async def _counts(context: AppContext) -> list[int]:
    async with context.autocommit() as session:
        return [
            int(await session.scalar(select(func.count()).select_from(model)) or 0)
            for model in (ConsumedState, LoginCode, RefreshToken)
        ]


async def _purge(context: AppContext) -> None:
    async with session_scope(context.sessionmaker) as session:
        await state.purge_expired(session)
        await sessions_service.purge_expired(session)


async def test_a_purge_deletes_at_most_a_batch_of_each_table_and_nothing_live(
    context: AppContext, factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "PURGE_BATCH", BATCH)
    await _fill(context, factory)
    assert await _counts(context) == [EXPIRED + LIVE] * 3
    await _purge(context)
    assert await _counts(context) == [EXPIRED - BATCH + LIVE] * 3  # one batch, no more
    await _purge(context)
    assert await _counts(context) == [LIVE] * 3  # the rest of the backlog
    await _purge(context)
    assert await _counts(context) == [LIVE] * 3


async def test_on_sqlite_a_purge_reads_only_the_expired_rows_by_index(
    context: AppContext, database: Database
) -> None:
    if database.backend != "sqlite":
        pytest.skip("SQLite's query plans")
    dialect = sqlite.dialect()
    async with context.engine.connect() as connection:
        for key, expires_at in (
            (ConsumedState.state_hash, ConsumedState.expires_at),
            (LoginCode.code_hash, LoginCode.expires_at),
            (RefreshToken.token_hash, RefreshToken.expires_at),
        ):
            compiled = expired_rows(key, expires_at, utcnow()).compile(dialect=dialect)
            plan = (
                await connection.exec_driver_sql(
                    f"EXPLAIN QUERY PLAN {compiled}",
                    tuple(compiled.params[name] for name in compiled.positiontup or ()),
                )
            ).all()
            details = [row[-1] for row in plan]
            table = key.class_.__tablename__
            assert any(f"INDEX ix_{table}_expires_at (expires_at<?)" in d for d in details), details
            assert not any(d.startswith(f"SCAN {table}") for d in details), details


async def test_a_round_clears_a_backlog_of_several_batches(
    context: AppContext, factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "PURGE_BATCH", BATCH)
    await _fill(context, factory)
    rounds = await housekeeping.purge_expired(context)
    assert rounds == 2  # a full batch, then the rest
    assert await _counts(context) == [LIVE] * 3


async def test_each_process_purges_in_the_background(
    database: Database, factory: Factory, context: AppContext
) -> None:
    """Off the request path: a served app's own task, every interval (here about a second)."""
    await _fill(context, factory)
    app = create_app(make_settings(database.url, housekeeping_interval=1))
    async with app.router.lifespan_context(app):
        for _ in range(50):
            if await _counts(context) == [LIVE] * 3:
                break
            await asyncio.sleep(0.1)
    assert await _counts(context) == [LIVE] * 3


async def test_no_purge_when_the_interval_is_zero(
    database: Database, factory: Factory, context: AppContext
) -> None:
    await _fill(context, factory)
    app = create_app(make_settings(database.url, housekeeping_interval=0))
    async with app.router.lifespan_context(app):
        await asyncio.sleep(0.3)
    assert await _counts(context) == [EXPIRED + LIVE] * 3
