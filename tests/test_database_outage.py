"""The database goes away: requests fail fast with a 503 problem, and service comes back
by itself when it returns."""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi
from sqlalchemy.exc import DBAPIError, IntegrityError, PendingRollbackError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import create_async_engine

from sso_broker import middleware
from sso_broker.database import create_autocommit, create_engine, create_sessionmaker
from sso_broker.deps import AppContext
from sso_broker.fastpath import FastPath
from sso_broker.fastpath_sqlite import SQLiteFastPath
from sso_broker.models import IdentityLink, LoginCode, SignInSession
from sso_broker.pgpool import LeanPool
from sso_broker.problems import OutageLog, is_database_unavailable, outage_cause, outage_log
from sso_broker.sso import service as sso_service
from sso_broker.users.models import Role
from tests.conftest import PUBLIC_URL, Database, Factory, make_settings
from tests.fixtures.entra import CLIENT_ID, CLIENT_SECRET, TENANT_ID, EntraUser, FakeEntra
from tests.pgproxy import Mode, PgProxy
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
    # A browser is sent to the error page, never shown a problem document, with the code
    # that says "try again in a moment" (server_error is a bug's).
    assert sign_in.status_code == 302
    assert sign_in.headers["location"].endswith("error=temporarily_unavailable")


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


# --- what counts as an outage, in every form it reaches the handlers -----------------------

CUT_SHORT = "cannot switch to state 12; another operation (2) is in progress"


def _wrapped(driver_error: Exception, *, invalidated: bool = False) -> DBAPIError:
    """``driver_error`` as SQLAlchemy's asyncpg dialect hands it on: its adapter's error
    raised from asyncpg's, inside a DBAPIError (or the subclass the adapter's class maps to)."""
    dbapi = AsyncAdapt_asyncpg_dbapi(asyncpg)  # type: ignore[no-untyped-call]
    translate = dbapi._asyncpg_error_translate
    adapted_class = next(
        (translate[cls] for cls in type(driver_error).__mro__ if cls in translate), dbapi.Error
    )
    try:
        raise adapted_class(str(driver_error), driver_error) from driver_error
    except Exception as adapted:
        wrapped = DBAPIError.instance(
            "SELECT 1", None, adapted, dbapi.Error, connection_invalidated=invalidated
        )
    assert isinstance(wrapped, DBAPIError)
    return wrapped


OUTAGES = {
    "57P01 on a live connection": asyncpg.exceptions.AdminShutdownError(
        "terminating connection due to administrator command"
    ),
    "57P02": asyncpg.exceptions.CrashShutdownError("terminating connection"),
    "57P03 to a new connection": asyncpg.exceptions.CannotConnectNowError(
        "the database system is shutting down"
    ),
    "08003": asyncpg.exceptions.ConnectionDoesNotExistError(
        "connection was closed in the middle of operation"
    ),
    "08006": asyncpg.exceptions.ConnectionFailureError("connection failure"),
    "53300": asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
    "25006 after a failover": asyncpg.exceptions.ReadOnlySQLTransactionError(
        "cannot execute INSERT in a read-only transaction"
    ),
    "closed connection": asyncpg.InterfaceError("connection is closed"),
    "FATAL seen before the socket closed": asyncpg.exceptions.InternalClientError(CUT_SHORT),
    "reset": ConnectionResetError(104, "Connection reset by peer"),
    "refused": ConnectionRefusedError(111, "Connection refused"),
    "lost": ConnectionError("unexpected connection_lost() call"),
    "timed out": TimeoutError(),
}
BUGS = {
    "unique": asyncpg.exceptions.UniqueViolationError("duplicate key value"),
    "not null": asyncpg.exceptions.NotNullViolationError("null value in column"),
    "syntax": asyncpg.exceptions.PostgresSyntaxError('syntax error at or near "SELEC"'),
    "missing table": asyncpg.exceptions.UndefinedTableError('relation "x" does not exist'),
    "missing column": asyncpg.exceptions.UndefinedColumnError("no column"),
    "bad argument": asyncpg.exceptions._base.DataError("invalid input for query argument $1"),
    "connection used twice": asyncpg.InterfaceError(
        "cannot perform operation: another operation is in progress"
    ),
    "asyncpg's own bug": asyncpg.exceptions.InternalClientError("unexpected message"),
}


@pytest.mark.parametrize("error", OUTAGES.values(), ids=OUTAGES.keys())
def test_every_way_the_database_goes_away_is_an_outage(error: Exception) -> None:
    # As the hot paths' pool raises it, and as SQLAlchemy hands it on (a plain DBAPIError
    # that it did not judge a disconnect, or one that it did).
    assert is_database_unavailable(error)
    if not isinstance(error, OSError):
        assert is_database_unavailable(_wrapped(error))
        assert is_database_unavailable(_wrapped(error, invalidated=True))
    # The class in the log line is the driver's, not the wrapper's.
    assert outage_cause(error) is error


@pytest.mark.parametrize("error", BUGS.values(), ids=BUGS.keys())
def test_a_statement_s_own_error_is_never_an_outage(error: Exception) -> None:
    assert not is_database_unavailable(error)
    wrapped = _wrapped(error)
    assert not is_database_unavailable(wrapped)
    if isinstance(error, asyncpg.exceptions.IntegrityConstraintViolationError):
        assert isinstance(wrapped, IntegrityError)
    if isinstance(error, asyncpg.exceptions.SyntaxOrAccessError):
        assert isinstance(wrapped, ProgrammingError)


def test_an_integrity_or_programming_error_is_a_bug_even_behind_a_lost_socket() -> None:
    lost = ConnectionResetError(104, "Connection reset by peer")
    for error_class in (IntegrityError, ProgrammingError):
        error = error_class("INSERT …", None, Exception("duplicate key"))
        error.__cause__ = lost
        assert not is_database_unavailable(error)


def test_a_connection_that_died_in_its_transaction_is_an_outage_a_reused_session_is_not() -> None:
    invalidated = PendingRollbackError(
        "Can't reconnect until invalid transaction is rolled back.", code="8s2b"
    )
    failed_flush = PendingRollbackError(
        "This Session's transaction has been rolled back due to a previous exception during flush.",
        code="7s2a",
    )
    assert is_database_unavailable(invalidated)
    assert not is_database_unavailable(failed_flush)


def test_a_bug_raised_while_an_outage_was_handled_stays_a_bug() -> None:
    bug = AttributeError("'NoneType' object has no attribute 'id'")
    bug.__context__ = asyncpg.exceptions.CannotConnectNowError("the system is shutting down")
    assert not is_database_unavailable(bug)


def test_the_pool_waiting_too_long_is_an_outage() -> None:
    assert is_database_unavailable(PoolTimeoutError("QueuePool limit reached"))


async def test_sqlalchemy_s_errors_from_a_real_connection(database: Database) -> None:
    """The forms SQLAlchemy really raises: a statement's errors are bugs, on both databases."""
    engine = create_engine(make_settings(database.url))
    try:
        async with engine.connect() as connection:
            with pytest.raises(DBAPIError) as typo:
                await connection.execute(text("SELEC 1"))
        async with engine.connect() as connection:
            with pytest.raises(DBAPIError) as missing:
                await connection.execute(text("SELECT * FROM no_such_table"))
        async with engine.connect() as connection:
            await connection.execute(text("CREATE TEMPORARY TABLE once (id INTEGER UNIQUE)"))
            await connection.execute(text("INSERT INTO once VALUES (1)"))
            with pytest.raises(IntegrityError) as twice:
                await connection.execute(text("INSERT INTO once VALUES (1)"))
    finally:
        await engine.dispose()
    for error in (typo.value, missing.value, twice.value):
        assert not is_database_unavailable(error), repr(error)


async def test_a_server_shutting_down_behind_sqlalchemy_is_an_outage() -> None:
    """The 57P03 a server shutting down answers a new connection reaches the handlers as
    SQLAlchemy's plain DBAPIError (not an OperationalError, not judged a disconnect), and
    as asyncpg's own from the hot paths' pool: an outage both ways."""
    proxy = PgProxy("127.0.0.1", 1).start()  # this mode never connects upstream
    proxy.set_mode(Mode.SHUTTING_DOWN)
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/gone"
    engine = create_engine(make_settings(url))
    try:
        with pytest.raises(DBAPIError) as wrapped:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        with pytest.raises(asyncpg.exceptions.CannotConnectNowError) as raw:
            await asyncpg.connect(url.replace("+asyncpg", ""), timeout=5)
    finally:
        await engine.dispose()
        proxy.stop()
    assert type(wrapped.value) is DBAPIError
    assert wrapped.value.orig is not None
    assert isinstance(wrapped.value.orig.__cause__, asyncpg.exceptions.CannotConnectNowError)
    assert isinstance(outage_cause(wrapped.value), asyncpg.exceptions.CannotConnectNowError)
    assert is_database_unavailable(raw.value)


def test_an_outage_logs_a_few_lines_a_second_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = OutageLog(per_second=3)
    error = asyncpg.exceptions.CannotConnectNowError("the database system is shutting down")
    with caplog.at_level(logging.WARNING, logger="sso_broker.errors"):
        second = int(time.monotonic())
        for _ in range(50):
            log.warning("database unavailable", error, path="/api/v1/auth/me")
        log.flush()
    if int(time.monotonic()) != second:
        pytest.skip("a second boundary fell inside the burst")
    lines = [r for r in caplog.records if r.name == "sso_broker.errors"]
    assert [r.getMessage() for r in lines[:3]] == ["database unavailable"] * 3
    assert all(r.error == "CannotConnectNowError" for r in lines[:3])  # type: ignore[attr-defined]
    (summary,) = lines[3:]
    assert summary.not_logged == 47  # type: ignore[attr-defined]
    assert summary.errors == {"CannotConnectNowError": 47}  # type: ignore[attr-defined]
    assert not any(r.exc_info for r in lines)


@pytest.mark.parametrize(
    ("raised", "api_status", "browser_error"),
    [
        (asyncpg.exceptions.InternalClientError(CUT_SHORT), 503, "temporarily_unavailable"),
        (RuntimeError("a bug in front of the routes"), 500, "server_error"),
    ],
    ids=["outage", "bug"],
)
async def test_nothing_escapes_to_the_server(
    app: FastAPI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    raised: Exception,
    api_status: int,
    browser_error: str,
) -> None:
    """An error raised in front of the routes (the limiter's store) or that no handler took
    is answered as the routes answer theirs; the server never sees it (uvicorn would log
    "Exception in ASGI application" with a traceback, and a browser would get JSON)."""

    async def failing(_scope: object) -> None:
        raise raised

    monkeypatch.setattr(middleware, "over_limit", failing)
    monkeypatch.setattr(outage_log, "per_second", 1_000)  # earlier tests' lines don't count
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    with caplog.at_level(logging.WARNING, logger="sso_broker.errors"):
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as client:
            api = await client.get("/api/v1/auth/me", headers={"X-Request-ID": "escaped-1"})
            browser = await client.get(f"/sso/{uuid.uuid4()}/initiate", params=PKCE)
    assert api.status_code == api_status
    assert api.headers["content-type"] == "application/problem+json"
    assert api.headers["x-request-id"] == "escaped-1"
    assert browser.status_code == 302
    assert browser.headers["location"].endswith(f"error={browser_error}")
    lines = [r for r in caplog.records if r.name == "sso_broker.errors"]
    assert len(lines) == 2
    if api_status == 503:
        assert all(r.levelno == logging.WARNING and not r.exc_info for r in lines)
        assert {r.error for r in lines} == {"InternalClientError"}  # type: ignore[attr-defined]
    else:
        assert all(r.levelno == logging.ERROR and r.exc_info for r in lines)
