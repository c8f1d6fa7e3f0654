"""The database goes away: requests fail fast with a 503 problem, and service comes back
by itself when it returns."""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from sso_broker.database import create_autocommit, create_engine, create_sessionmaker
from sso_broker.deps import AppContext
from sso_broker.fastpath import FastPath
from sso_broker.fastpath_sqlite import SQLiteFastPath
from sso_broker.models import IdentityLink, LoginCode, SignInSession
from sso_broker.pgpool import LeanPool
from sso_broker.problems import is_database_unavailable
from sso_broker.sso import service as sso_service
from sso_broker.users.models import Role
from tests.conftest import PUBLIC_URL, Database, Factory, make_settings
from tests.fixtures.entra import CLIENT_ID, CLIENT_SECRET, TENANT_ID, EntraUser, FakeEntra
from tests.pkce import PKCE, code_grant

DEAD = "postgresql+asyncpg://postgres@127.0.0.1:1/gone"


async def test_requests_fail_fast_with_503_while_the_database_is_down(
    app: FastAPI, factory: Factory
) -> None:
    context: AppContext = app.state.context
    headers = await factory.headers(await factory.user(await factory.company(), Role.ADMINISTRATOR))
    working = context.engine, context.sessionmaker, context.autocommit, context.fast
    dead_engine = create_engine(make_settings(context.settings.database_url), url=DEAD)
    context.engine = dead_engine
    context.sessionmaker = create_sessionmaker(dead_engine)
    context.autocommit = create_autocommit(dead_engine)
    # The hot paths' statements go to the dead server too, whichever database the test runs.
    dead_fast = FastPath(
        LeanPool(
            lambda: asyncpg.connect(DEAD.replace("+asyncpg", ""), timeout=2),
            max_size=2,
            acquire_timeout=2,
        )
    )
    context.fast = dead_fast
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    try:
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as client:
            began = time.perf_counter()
            answers = [
                await client.get("/api/v1/users", headers=headers),
                await client.get("/api/v1/auth/me", headers=headers),
                await client.post("/api/v1/auth/token", json=code_grant("x")),
                await client.get("/readyz"),
            ]
            took = time.perf_counter() - began
            sign_in = await client.get("/sso/00000000-0000-4000-8000-000000000000/initiate")
    finally:
        context.engine, context.sessionmaker, context.autocommit, context.fast = working
        await dead_engine.dispose()
        await dead_fast.close()
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == "database_unavailable"
        assert "Traceback" not in answer.text
        assert answer.headers["retry-after"]
    assert took < 4 * context.settings.database_timeout
    # A browser is sent to the error page, never shown a problem document.
    assert sign_in.status_code == 302
    assert sign_in.headers["location"].endswith("error=server_error")


async def test_service_recovers_by_itself_after_connections_are_dropped(
    app: FastAPI, factory: Factory, database: Database, client: httpx.AsyncClient
) -> None:
    if database.backend != "postgres":
        pytest.skip("dropping server connections needs PostgreSQL")
    headers = await factory.headers(await factory.user(await factory.company(), Role.ADMINISTRATOR))
    assert (await client.get("/api/v1/users", headers=headers)).status_code == 200
    # Kill every connection to the test database, as a server restart would.
    admin = create_engine(make_settings(database.url))
    async with admin.connect() as connection:
        await connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        await connection.commit()
    await admin.dispose()
    # No ping before each checkout (README, *Performance*): a pooled connection whose end
    # the driver has not noticed yet fails its first statement, which answers 503 (never a
    # 500) and makes the pool drop every connection as old; the service then serves again.
    answers = [await client.get("/api/v1/users", headers=headers) for _ in range(3)]
    statuses = [answer.status_code for answer in answers]
    assert statuses in ([200, 200, 200], [503, 200, 200]), [a.text for a in answers]
    assert (await client.get("/readyz")).status_code == 200


async def test_a_database_failure_mid_sign_in_leaves_nothing_half_written(
    client: httpx.AsyncClient,
    factory: Factory,
    context: AppContext,
    entra: FakeEntra,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    company = await factory.company()
    provider = await factory.provider(
        company, base_url=TENANT_ID, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
        enabled=True,
    )  # fmt: skip
    person = EntraUser.make()
    assert person.email is not None
    await factory.user(company, email=person.email, provider=provider)

    # The login code's row is refused by the database (NOT NULL) after the identity link and
    # the session were written (SQLite, one by one), or in the same statement (PostgreSQL).
    monkeypatch.setattr(sso_service, "token_hash", lambda _code: None)
    started = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)
    finished = await client.get(entra.authorize(started.headers["location"], user=person))
    assert finished.status_code == 302
    assert finished.headers["location"].endswith("error=server_error")
    async with context.sessionmaker() as session:
        for model in (SignInSession, LoginCode, IdentityLink):
            assert await session.scalar(select(func.count()).select_from(model)) == 0


@pytest.mark.parametrize(
    "failure",
    [
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.InterfaceError("connection is closed"),
    ],
)
def test_asyncpg_outages_are_recognised(failure: Exception) -> None:
    """The sign-in's own asyncpg pool (fastpath.py) raises asyncpg's errors unwrapped; an
    outage there answers 503 like one behind SQLAlchemy, never a 500."""
    assert is_database_unavailable(failure)


async def test_the_embedded_database_unreadable_is_a_503_on_the_hot_paths(
    app: FastAPI, factory: Factory, tmp_path: Path
) -> None:
    """SQLite's own errors from the hot paths' thread (fastpath_sqlite.py) are an outage too:
    here the database file cannot be opened at all."""
    context: AppContext = app.state.context
    if context.engine.dialect.name != "sqlite":
        # A PostgreSQL process never runs SQLite's hot paths, so it neither loads sqlite3 nor
        # handles its errors (hotpath.py); asyncpg's are checked on both databases above.
        pytest.skip("SQLite's hot paths run in an SQLite process only")
    headers = await factory.headers(await factory.user(await factory.company(), Role.USER))
    working = context.fast
    missing = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'gone' / 'x.db'}")
    context.fast = SQLiteFastPath(missing, timeout=1)
    # Answered inside the app (with the front middleware's request id and headers), never
    # raised to the server as a crash.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    try:
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as client:
            answers = [
                await client.get(
                    "/api/v1/auth/me", headers={**headers, "X-Request-ID": "outage-1"}
                ),
                await client.post(
                    "/api/v1/auth/token",
                    json=code_grant("x"),
                    headers={"X-Request-ID": "outage-1"},
                ),
            ]
            sign_in = await client.get(f"/sso/{uuid.uuid4()}/initiate", params=PKCE)
    finally:
        await context.fast.close()
        context.fast = working
        await missing.dispose()
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == "database_unavailable"
        assert answer.headers["retry-after"]
        assert answer.headers["x-request-id"] == "outage-1"
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert sign_in.status_code == 302


def test_sqlite_outages_are_recognised_and_its_bugs_are_not(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    waiter = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as locked:
            waiter.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as typo:
            waiter.execute("SELEC 1")
        with pytest.raises(sqlite3.OperationalError) as unmigrated:
            waiter.execute("SELECT * FROM no_such_table")
    finally:
        holder.close()
        waiter.close()
    assert is_database_unavailable(locked.value)
    assert not is_database_unavailable(typo.value)
    assert not is_database_unavailable(unmigrated.value)


def test_a_statement_bug_is_not_an_outage() -> None:
    assert not is_database_unavailable(asyncpg.exceptions.UndefinedColumnError("no column"))
