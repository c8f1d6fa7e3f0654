"""Shared fixtures: a migrated database per backend, the app, and factories.

Every test that touches the database runs on SQLite and, when
``SSO_BROKER_TEST_POSTGRES_URL`` is set, again on real PostgreSQL (a throwaway database
created for the run). Set but unreachable fails the run: it never skips.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from sqlalchemy import delete, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from sso_broker.config import Settings
from sso_broker.database import create_engine, session_scope
from sso_broker.deps import AppContext
from sso_broker.logs import JSONFormatter
from sso_broker.main import create_app
from sso_broker.migrate import migrate
from sso_broker.models import Base, Company, SSOProvider, User
from sso_broker.ratelimit import WINDOW_SECONDS
from sso_broker.sessions import service as sessions_service
from sso_broker.users.models import Role
from sso_broker.users.repository import normalize_email

# The fake Entra tenant (`entra` fixture) for every test that signs someone in; the bench's
# identity provider as a process (`identity_provider`) for tests of served processes.
pytest_plugins = ["tests.fixtures.entra", "tests.served"]

POSTGRES_URL = os.environ.get("SSO_BROKER_TEST_POSTGRES_URL", "").strip()
BACKENDS = ["sqlite", "postgres"] if POSTGRES_URL else ["sqlite"]
TEST_KEY = Fernet.generate_key().decode()
PUBLIC_URL = "https://sso.example.com"


async def _create_postgres_database() -> str:
    name = f"sso_broker_test_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()
    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)


async def _drop_postgres_database(url: str) -> None:
    name = make_url(url).database
    admin = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


@dataclass(frozen=True)
class Database:
    backend: str
    url: str


async def clear_of_a_window_edge(margin: float = 5.0) -> None:
    """Rate limits count per fixed window (``ratelimit.WINDOW_SECONDS``): a test that started
    just before a window's end would see its counters start afresh half-way, and a limit it
    expects to meet would not be met. Waits out the window when fewer than ``margin``
    seconds are left of it."""
    left = WINDOW_SECONDS - time.time() % WINDOW_SECONDS
    if left < margin:
        await asyncio.sleep(left + 0.1)


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "encryption_keys": TEST_KEY,
        "public_url": PUBLIC_URL,
        "frontend_url": "https://app.example.com",
        "rate_limit_enabled": False,
        "entra_authority": "https://login.entra.test",  # tests.fixtures.entra.AUTHORITY
        "access_log": True,
        # No background purge deleting rows under a test (tests/test_housekeeping.py runs it).
        "housekeeping_interval": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture(scope="session", params=BACKENDS)
async def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Database]:
    """A database migrated by Alembic (never ``create_all``), one per backend per run."""
    backend: str = request.param
    if backend == "sqlite":
        path: Path = tmp_path_factory.mktemp("db") / "test.db"
        url = f"sqlite+aiosqlite:///{path}"
    else:
        url = await _create_postgres_database()
    engine = create_engine(make_settings(url))
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
    yield Database(backend=backend, url=url)
    if backend == "postgres":
        await _drop_postgres_database(url)


@pytest.fixture
def settings(database: Database) -> Settings:
    return make_settings(database.url)


async def _empty_tables(url: str) -> None:
    engine = create_engine(make_settings(url))
    try:
        async with engine.begin() as connection:
            for table in reversed(Base.metadata.sorted_tables):
                if table.name != "signing_keys":
                    await connection.execute(delete(table))
    finally:
        await engine.dispose()


# Each in-process app the session built (the `app` fixture): the leak check then expects lines.
_in_process_apps: list[str] = []


@pytest.fixture
async def app(settings: Settings, database: Database) -> AsyncIterator[FastAPI]:
    """The app with its lifespan running; every row a test wrote is gone afterwards."""
    _in_process_apps.append(settings.database_url)
    application = create_app(settings)
    try:
        async with application.router.lifespan_context(application):
            yield application
    finally:
        await _empty_tables(database.url)


@pytest.fixture
def context(app: FastAPI) -> AppContext:
    ctx: AppContext = app.state.context
    return ctx


@pytest.fixture
def sessionmaker(context: AppContext) -> async_sessionmaker[AsyncSession]:
    return context.sessionmaker


@asynccontextmanager
async def asgi_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client that calls ``app`` in process, at the service's public URL."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as http:
        yield http


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as http:
        yield http


class Factory:
    """Makes companies, users and providers straight in the database, and tokens for users."""

    def __init__(self, context: AppContext) -> None:
        self.context = context

    async def company(self, name: str = "Contoso") -> Company:
        async with session_scope(self.context.sessionmaker) as session:
            company = Company(id=uuid.uuid4(), name=name)
            session.add(company)
        return company

    async def user(
        self,
        company: Company,
        role: Role = Role.USER,
        *,
        email: str | None = None,
        name: str = "Test User",
        provider: SSOProvider | None = None,
    ) -> User:
        address = email or f"{role.value}-{uuid.uuid4().hex[:8]}@example.com"
        async with session_scope(self.context.sessionmaker) as session:
            user = User(
                id=uuid.uuid4(),
                company_id=company.id,
                email=address,
                email_normalized=normalize_email(address),
                name=name,
                role=role,
                sso_provider_id=provider.id if provider else None,
            )
            session.add(user)
        return user

    async def provider(
        self,
        company: Company,
        *,
        base_url: str = "contoso.onmicrosoft.com",
        client_id: str | None = None,
        client_secret: str | None = None,
        enabled: bool = False,
        type: str = "entra",
        client_secret_expires_at: datetime | None = None,
    ) -> SSOProvider:
        async with session_scope(self.context.sessionmaker) as session:
            provider = SSOProvider(
                id=uuid.uuid4(),
                company_id=company.id,
                type=type,
                name=self.context.adapters[type].default_display_name,
                base_url=base_url,
                client_id=client_id,
                client_secret_encrypted=self.context.box.encrypt(client_secret)
                if client_secret
                else None,
                enabled=enabled,
                client_secret_expires_at=client_secret_expires_at,
            )
            session.add(provider)
        return provider

    async def token(self, user: User, *, ttl: int = 900) -> str:
        async with session_scope(self.context.sessionmaker) as session:
            sign_in = await sessions_service.start(
                session, user, provider_id=None, lifetime=timedelta(seconds=ttl)
            )
        issued = sessions_service.issue_access_token(
            self.context.settings,
            self.context.keyring,
            user,
            sign_in,
            ttl=timedelta(seconds=ttl),
        )
        return issued.token

    async def headers(self, user: User) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.token(user)}"}


@pytest.fixture
def factory(context: AppContext) -> Factory:
    return Factory(context)


@dataclass
class Tenant:
    """A company with one user of each role, and their auth headers."""

    company: Company
    users: dict[Role, User]
    headers: dict[Role, dict[str, str]]


@pytest.fixture
def make_tenant(factory: Factory) -> Callable[[str], Awaitable[Tenant]]:
    async def make(name: str = "Contoso") -> Tenant:
        company = await factory.company(name)
        users = {role: await factory.user(company, role) for role in Role}
        headers = {role: await factory.headers(user) for role, user in users.items()}
        return Tenant(company=company, users=users, headers=headers)

    return make


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hides any SSO_BROKER_* variables of the machine from settings under test."""
    for key in list(os.environ):
        if key.startswith("SSO_BROKER_") and key != "SSO_BROKER_TEST_POSTGRES_URL":
            monkeypatch.delenv(key)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Runs the end-to-end tier last: it is the slowest, and it starts processes."""
    items.sort(key=lambda item: "/tests/e2e/" in str(item.path))


# --- no secret in any log line of the whole suite ------------------------------------------

_JWT = re.compile(r"eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{8,}")
_ENTRA_CODE = re.compile(r"1\.A[\w-]{60,}")


class _LogCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.formatter_ = JSONFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("httpx") and PUBLIC_URL in record.getMessage():
            return  # the tests' own client calling the app, with a callback URL's code in it
        try:
            self.lines.append(self.formatter_.format(record))
        except Exception:  # a record that cannot be formatted is not ours to judge
            self.lines.append(record.getMessage())


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log() -> Iterator[None]:
    """Captures every log line the suite's sign-ins and admin calls write, at DEBUG, and
    fails the run if one holds a client secret, an encryption key, a JWT, an Entra
    authorization code, or any login code or refresh token the broker issued."""
    from tests.fixtures.entra import CLIENT_SECRET

    issued: list[str] = []
    original = sessions_service.new_secret_token

    def recording() -> str:
        value = original()
        issued.append(value)
        return value

    patch = pytest.MonkeyPatch()
    patch.setattr(sessions_service, "new_secret_token", recording)
    collector = _LogCollector()
    ours = logging.getLogger("sso_broker")
    previous_level = ours.level
    ours.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(collector)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(collector)
        ours.setLevel(previous_level)
        patch.undo()
    text = "\n".join(collector.lines)
    # A run of served-process tests alone (their logs are the processes' own) has nothing
    # to check here; a run with the app in process must have captured its lines.
    if _in_process_apps:
        assert collector.lines, "no log line was captured: the leak check checked nothing"
    leaks = [name for name, secret in (("client secret", CLIENT_SECRET), ("key", TEST_KEY))
             if secret in text]  # fmt: skip
    leaks += ["a JWT"] if _JWT.search(text) else []
    leaks += ["an Entra authorization code"] if _ENTRA_CODE.search(text) else []
    leaks += [f"issued token #{n}" for n, token in enumerate(issued) if token in text]
    assert not leaks, f"secrets in the suite's logs: {', '.join(leaks[:10])}"
