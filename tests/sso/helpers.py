"""What the callback tests share: a provider and its user, starting a sign-in at the fake
tenant, and assertions on the error redirect, the cookie, the rows and ``last_error``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import cache
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sso_broker.database import session_scope
from sso_broker.logs import JSONFormatter
from sso_broker.models import (
    Company,
    IdentityLink,
    LoginCode,
    SignInSession,
    SSOProvider,
    User,
)
from sso_broker.sso import service
from sso_broker.users.models import Role
from tests.conftest import PUBLIC_URL, Factory
from tests.fixtures.entra import (
    CLIENT_ID,
    CLIENT_SECRET,
    TENANT_ID,
    EntraUser,
    FakeEntra,
)
from tests.pkce import PKCE, code_grant

FRONTEND = "https://app.example.com"
ERROR_URL = f"{FRONTEND}/sso/error"
COMPLETE_URL = f"{FRONTEND}/sso/complete"
OTHER_TENANT = "0d2e1c3b-5a4f-4e6d-8c7b-1a2b3c4d5e6f"
WRONG_SECRET = "a1b2c3d4-0000-4000-8000-secret-id-not-value"


# --- helpers ------------------------------------------------------------------------------


@dataclass
class Setup:
    company: Company
    provider: SSOProvider
    person: EntraUser
    user: User


@dataclass
class Started:
    """An initiated sign-in: where the browser goes, and the cookie it was given."""

    location: str
    cookie_name: str
    cookie_value: str

    @property
    def cookie_header(self) -> dict[str, str]:
        return {"Cookie": f"{self.cookie_name}={self.cookie_value}"}


async def make_provider(factory: Factory, company: Company, **overrides: Any) -> SSOProvider:
    values: dict[str, Any] = {
        "base_url": TENANT_ID,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "enabled": True,
    }
    values.update(overrides)
    return await factory.provider(company, **values)


async def setup(factory: Factory, **provider_overrides: Any) -> Setup:
    """A company, an enabled provider, and an Entra user provisioned for it."""
    company = await factory.company()
    provider = await make_provider(factory, company, **provider_overrides)
    person = EntraUser.make()
    assert person.email is not None
    user = await factory.user(company, email=person.email, provider=provider)
    return Setup(company=company, provider=provider, person=person, user=user)


async def start(client: httpx.AsyncClient, provider: SSOProvider, **params: str) -> Started:
    response = await client.get(f"/sso/{provider.id}/initiate", params={**PKCE, **params})
    assert response.status_code == 302, response.text
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        jar.load(header)
    ((name, morsel),) = jar.items()
    return Started(response.headers["location"], name, morsel.value)


def fresh_client(app: FastAPI) -> httpx.AsyncClient:
    """Another browser: no cookies."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=PUBLIC_URL)


def login_code(response: httpx.Response) -> str:
    """The login code of a successful callback (asserting it is one)."""
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == COMPLETE_URL, (
        response.headers["location"]
    )
    query = parse_qs(location.query)
    assert set(query) == {"code"}, query
    return query["code"][0]


async def signed_in_user(client: httpx.AsyncClient, response: httpx.Response) -> str:
    """Trades the callback's login code for tokens; the id of the user it signed in."""
    tokens = await client.post("/api/v1/auth/token", json=code_grant(login_code(response)))
    assert tokens.status_code == 200, tokens.text
    me = await client.get(
        "/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens.json()['access_token']}"}
    )
    assert me.status_code == 200, me.text
    return str(me.json()["user"]["id"])


async def sign_in(
    client: httpx.AsyncClient, entra: FakeEntra, provider: SSOProvider, person: EntraUser
) -> httpx.Response:
    started = await start(client, provider)
    return await client.get(entra.authorize(started.location, user=person))


def assert_error(response: httpx.Response, code: str) -> None:
    assert response.status_code == 302, response.text
    assert response.headers["location"] == f"{ERROR_URL}?error={code}"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.content == b"", "the browser never sees a body"
    assert "json" not in response.headers.get("content-type", "")


def assert_cookie_cleared(response: httpx.Response, started: Started, provider_id: Any) -> None:
    """The response expires the attempt's cookie, on the path it was set on."""
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        jar.load(header)
    assert started.cookie_name in jar, response.headers.get_list("set-cookie")
    morsel = jar[started.cookie_name]
    assert morsel["max-age"] == "0"
    expires = parsedate_to_datetime(morsel["expires"])
    assert expires <= datetime.now(UTC) + timedelta(seconds=1), "expired already"
    assert morsel.value in ("", '""')
    assert morsel["path"] == "/"
    assert morsel["secure"] is True
    assert morsel["httponly"] is True


async def count(
    sessionmaker: async_sessionmaker[AsyncSession], model: Any, *conditions: Any
) -> int:
    async with session_scope(sessionmaker) as session:
        statement = select(func.count()).select_from(model)
        for condition in conditions:
            statement = statement.where(condition)
        return int(await session.scalar(statement) or 0)


async def assert_nothing_created(
    sessionmaker: async_sessionmaker[AsyncSession], provider: SSOProvider
) -> None:
    """A failed callback leaves no sign-in session, login code or identity link."""
    assert await count(sessionmaker, SignInSession, SignInSession.provider_id == provider.id) == 0
    assert await count(sessionmaker, LoginCode) == 0
    assert await count(sessionmaker, IdentityLink) == 0


async def set_enabled(
    sessionmaker: async_sessionmaker[AsyncSession], provider: SSOProvider, enabled: bool
) -> None:
    async with session_scope(sessionmaker) as session:
        await session.execute(
            update(SSOProvider).where(SSOProvider.id == provider.id).values(enabled=enabled)
        )


def disable_after_the_code_exchange(
    monkeypatch: pytest.MonkeyPatch,
    sessionmaker: async_sessionmaker[AsyncSession],
    provider: SSOProvider,
) -> None:
    """The provider is disabled the moment the identity provider has answered the code
    exchange: after every check the callback makes before it, before its writes."""
    exchange = service._exchange_code

    async def exchange_then_disable(*args: Any, **kwargs: Any) -> dict[str, Any]:
        tokens = await exchange(*args, **kwargs)
        await set_enabled(sessionmaker, provider, False)
        return tokens

    monkeypatch.setattr(service, "_exchange_code", exchange_then_disable)


async def last_error(
    client: httpx.AsyncClient, factory: Factory, setup_: Setup
) -> dict[str, Any] | None:
    """The provider's ``last_error`` as an administrator reads it through the API."""
    admin = await factory.user(setup_.company, Role.ADMINISTRATOR)
    read = await client.get(
        f"/api/v1/sso-providers/{setup_.provider.id}", headers=await factory.headers(admin)
    )
    assert read.status_code == 200, read.text
    value: dict[str, Any] | None = read.json()["last_error"]
    return value


def rendered_logs(caplog: pytest.LogCaptureFixture) -> str:
    formatter = JSONFormatter()
    return "\n".join(formatter.format(r) + repr(r.__dict__) for r in caplog.records)


@cache
def unpublished_key() -> rsa.RSAPrivateKey:
    """An RSA key Entra never published."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)
