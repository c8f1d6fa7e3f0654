"""``/sso/{id}/callback``: the state, Entra's answer, the code exchange, who signs in.

README, *Signing in*: every failure is a ``302`` to ``SIGN_IN_ERROR_URL?error=<code>``; these
tests reach each code the callback can answer with, check that a failure leaves no session,
login code or identity link behind, and that the state cookie is cleared whatever happens.
User resolution follows the nOAuth lesson (README, *Security model*); so does ``last_error``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
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
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sso_broker.database import session_scope, utcnow
from sso_broker.deps import AppContext
from sso_broker.fastpath import FastPath
from sso_broker.fastpath_sqlite import SQLiteFastPath
from sso_broker.logs import JSONFormatter
from sso_broker.main import create_app
from sso_broker.models import (
    Company,
    ConsumedState,
    IdentityLink,
    LoginCode,
    SignInSession,
    SSOProvider,
    User,
)
from sso_broker.sso import service
from sso_broker.sso import state as state_module
from sso_broker.sso.state import LoginState, cookie_name
from sso_broker.users.models import Role
from tests.conftest import PUBLIC_URL, Factory
from tests.fixtures.entra import (
    CLIENT_ID,
    CLIENT_SECRET,
    TENANT_ID,
    EntraUser,
    FakeEntra,
    error_body,
)

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
    response = await client.get(f"/sso/{provider.id}/initiate", params=params)
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
    tokens = await client.post(
        "/api/v1/auth/token", json={"grant_type": "login_code", "code": login_code(response)}
    )
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
    assert morsel["path"] == f"/sso/{provider_id}/callback"
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


# --- the state ------------------------------------------------------------------------------


class TestCallback:
    async def test_an_oversized_state_is_invalid_state_not_provider_not_found(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        ready = await setup(factory)
        response = await client.get(
            f"/sso/{ready.provider.id}/callback", params={"state": "s" * 600, "code": "c"}
        )
        assert_error(response, "invalid_state")

    async def test_callback_signs_in_and_clears_the_state_cookie(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        response = await client.get(entra.authorize(started.location, user=s.person))

        code = login_code(response)
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert_cookie_cleared(response, started, s.provider.id)
        assert started.cookie_name not in client.cookies
        assert len(code) >= 32
        assert await count(sessionmaker, SignInSession, SignInSession.user_id == s.user.id) == 1
        assert await count(sessionmaker, LoginCode) == 1
        assert await count(sessionmaker, ConsumedState) == 1
        assert await signed_in_user(client, response) == str(s.user.id)

    async def test_the_session_records_entra_sid_and_login_hint(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """What front-channel logout and the end-session URL need later."""
        s = await setup(factory)
        login_code(await sign_in(client, entra, s.provider, s.person))
        async with session_scope(sessionmaker) as session:
            stored = await session.scalar(
                select(SignInSession).where(SignInSession.provider_id == s.provider.id)
            )
        assert stored is not None
        assert stored.user_id == s.user.id
        assert stored.idp_sid == s.person.sid
        assert stored.login_hint == s.person.login_hint

    async def test_callback_rejects_missing_state(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person, response_params={"state": None})
        assert_error(await client.get(back), "invalid_state")
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_callback_rejects_empty_state(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person, response_params={"state": ""})
        assert_error(await client.get(back), "invalid_state")
        assert entra.token_calls == 0

    async def test_callback_rejects_state_without_its_cookie(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """Another browser (or one refusing cookies) cannot finish this browser's sign-in."""
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person)
        async with fresh_client(app) as other:
            assert_error(await other.get(back), "invalid_state")
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)
        # The rightful browser can still finish: a refused callback spends nothing.
        login_code(await client.get(back))

    async def test_callback_rejects_an_unknown_state(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        await start(client, s.provider)
        response = await client.get(
            f"/sso/{s.provider.id}/callback", params={"state": "x" * 43, "code": "1.Acode"}
        )
        assert_error(response, "invalid_state")
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_callback_rejects_the_cookie_of_another_attempt(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """The cookie of attempt B does not vouch for attempt A's state, under any name."""
        s = await setup(factory)
        first = await start(client, s.provider)
        second = await start(client, s.provider)
        back = entra.authorize(first.location, user=s.person)
        async with fresh_client(app) as other:
            # Only the other attempt's cookie, as it was set.
            assert_error(await other.get(back, headers=second.cookie_header), "invalid_state")
            # The other attempt's sealed state under this attempt's cookie name.
            swapped = {"Cookie": f"{first.cookie_name}={second.cookie_value}"}
            assert_error(await other.get(back, headers=swapped), "invalid_state")
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)

    @pytest.mark.parametrize("where", ["start", "middle", "end", "truncated", "garbage"])
    async def test_callback_rejects_a_tampered_cookie(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
        where: str,
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        value = started.cookie_value

        def flip(index: int) -> str:
            return value[:index] + ("A" if value[index] != "A" else "B") + value[index + 1 :]

        tampered = {
            "start": flip(10),
            "middle": flip(len(value) // 2),
            "end": flip(len(value) - 5),
            "truncated": value[: len(value) // 2],
            "garbage": "not-a-sealed-state",
        }[where]
        assert tampered != value
        back = entra.authorize(started.location, user=s.person)
        async with fresh_client(app) as other:
            response = await other.get(
                back, headers={"Cookie": f"{started.cookie_name}={tampered}"}
            )
        assert_error(response, "invalid_state")
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_callback_rejects_an_expired_state(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Ten minutes after initiate the attempt is over, cookie or not."""
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person)
        later = utcnow() + timedelta(minutes=10, seconds=1)
        monkeypatch.setattr(state_module, "utcnow", lambda: later)

        response = await client.get(back)

        assert_error(response, "invalid_state")
        assert_cookie_cleared(response, started, s.provider.id)
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_callback_accepts_a_state_just_before_it_expires(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person)
        later = utcnow() + timedelta(minutes=9, seconds=50)
        monkeypatch.setattr(state_module, "utcnow", lambda: later)
        login_code(await client.get(back))

    async def test_callback_rejects_a_sealed_state_with_a_past_expiry(
        self,
        app: FastAPI,
        context: AppContext,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """A genuine cookie (sealed with our keys) whose expiry has passed."""
        s = await setup(factory)
        login = LoginState(
            state="s" * 43,
            nonce="n" * 43,
            code_verifier="v" * 86,
            provider_id=s.provider.id,
            return_to=None,
            expires_at=utcnow() - timedelta(seconds=1),
        )
        sealed = login.seal(context.box)
        async with fresh_client(app) as browser:
            response = await browser.get(
                f"/sso/{s.provider.id}/callback",
                params={"state": login.state, "code": "1.Acode"},
                headers={"Cookie": f"{cookie_name(login.state)}={sealed}"},
            )
        assert_error(response, "invalid_state")
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_callback_rejects_replayed_state(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """An authorization response works once, even with its cookie put back."""
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person)
        first = await client.get(back)
        login_code(first)
        assert started.cookie_name not in client.cookies

        client.cookies.set(
            started.cookie_name,
            started.cookie_value,
            domain="sso.example.com",
            path=f"/sso/{s.provider.id}/callback",
        )
        replayed = await client.get(back)

        assert_error(replayed, "invalid_state")
        assert_cookie_cleared(replayed, started, s.provider.id)
        assert entra.token_calls == 1, "the replay never reaches Entra"
        assert await count(sessionmaker, SignInSession, SignInSession.user_id == s.user.id) == 1
        assert await count(sessionmaker, LoginCode) == 1

    async def test_callback_rejects_a_state_spent_by_a_failed_callback(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """A failure after the state was checked still spends it."""
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person)
        entra.token_response_override = httpx.Response(503, text="busy")
        assert_error(await client.get(back), "token_exchange_failed")

        entra.token_response_override = None
        client.cookies.set(
            started.cookie_name,
            started.cookie_value,
            domain="sso.example.com",
            path=f"/sso/{s.provider.id}/callback",
        )
        assert_error(await client.get(back), "invalid_state")
        assert entra.token_calls == 1
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_callback_rejects_another_providers_state(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """Provider A's state and cookie, presented at provider B's callback."""
        s = await setup(factory)
        other_company = await factory.company("Fabrikam")
        other = await make_provider(factory, other_company)
        await factory.user(other_company, email=s.person.email, provider=other)
        started = await start(client, s.provider)
        back = httpx.URL(entra.authorize(started.location, user=s.person))
        moved = back.copy_with(path=f"/sso/{other.id}/callback")

        async with fresh_client(app) as browser:
            response = await browser.get(moved, headers=started.cookie_header)

        assert_error(response, "invalid_state")
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, other)
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_callback_rejects_an_oversized_state(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        s = await setup(factory)
        await start(client, s.provider)
        response = await client.get(
            f"/sso/{s.provider.id}/callback", params={"state": "s" * 300, "code": "1.Acode"}
        )
        assert_error(response, "invalid_state")

    async def test_callback_of_an_unknown_provider_is_provider_not_found(
        self, client: httpx.AsyncClient, entra: FakeEntra
    ) -> None:
        response = await client.get(
            f"/sso/{uuid.uuid4()}/callback", params={"state": "s" * 43, "code": "c"}
        )
        assert_error(response, "provider_not_found")
        assert_error(
            await client.get("/sso/not-a-uuid/callback", params={"state": "s"}),
            "provider_not_found",
        )

    async def test_callback_of_a_deleted_provider_is_provider_not_found(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person)
        async with session_scope(sessionmaker) as session:
            await session.execute(delete(SSOProvider).where(SSOProvider.id == s.provider.id))
        response = await client.get(back)
        assert_error(response, "provider_not_found")
        assert_cookie_cleared(response, started, s.provider.id)
        assert entra.token_calls == 0


class TestCookieCleared:
    async def test_the_cookie_is_cleared_on_failure(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        response = await client.get(entra.authorize_error(started.location))
        assert_error(response, "access_denied")
        assert_cookie_cleared(response, started, s.provider.id)
        assert started.cookie_name not in client.cookies

    async def test_the_cookie_is_cleared_on_an_unexpected_error(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        def broken(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError("boom")

        s = await setup(factory)
        started = await start(client, s.provider)
        monkeypatch.setattr(service, "choose_account", broken)
        response = await client.get(entra.authorize(started.location, user=s.person))
        assert_error(response, "server_error")
        assert_cookie_cleared(response, started, s.provider.id)


# --- Entra's answer ---------------------------------------------------------------------------


class TestIdpResponse:
    @pytest.mark.parametrize(
        ("error", "description"),
        [
            ("access_denied", "AADSTS65004: User declined to consent to access the app."),
            ("access_denied", "The user cancelled the sign-in."),
            ("access_denied", ""),
            (
                "invalid_request",
                "AADSTS50105: Your administrator has configured the application to block "
                "users unless they are specifically granted ('assigned') access.",
            ),
            (
                "unauthorized_client",
                "AADSTS50105: The signed in user 'adele@contoso.com' is not assigned to a role "
                "for the application.",
            ),
        ],
    )
    async def test_a_cancel_or_an_unassigned_user_is_access_denied(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
        caplog: pytest.LogCaptureFixture,
        error: str,
        description: str,
    ) -> None:
        caplog.set_level(logging.INFO)
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize_error(started.location, error=error, description=description)

        assert_error(await client.get(back), "access_denied")

        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)
        if description.startswith("AADSTS"):
            assert description.split(":")[0] in rendered_logs(caplog)

    @pytest.mark.parametrize(
        ("error", "description"),
        [
            ("invalid_request", "AADSTS900144: The request body must contain 'client_id'."),
            ("server_error", "AADSTS90033: A transient error has occurred. Please try again."),
            ("temporarily_unavailable", "AADSTS90006: The server is temporarily too busy."),
            ("login_required", "AADSTS50058: A silent sign-in request was sent but no user is."),
            ("consent_required", "AADSTS65001: The user or administrator has not consented."),
            ("invalid_client", ""),
            ("unexpected_thing", "no code at all"),
        ],
    )
    async def test_any_other_error_is_idp_error(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
        caplog: pytest.LogCaptureFixture,
        error: str,
        description: str,
    ) -> None:
        caplog.set_level(logging.INFO)
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize_error(started.location, error=error, description=description)

        response = await client.get(back)

        assert_error(response, "idp_error")
        assert_cookie_cleared(response, started, s.provider.id)
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)
        if description.startswith("AADSTS"):
            assert description.split(":")[0] in rendered_logs(caplog)

    async def test_an_error_response_without_state_is_invalid_state(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        """The state is checked first: an unsolicited error response is not ours to report."""
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize_error(started.location, response_params={"state": None})
        assert_error(await client.get(back), "invalid_state")

    async def test_a_response_without_code_is_idp_error(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person, response_params={"code": None})
        assert_error(await client.get(back), "idp_error")
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_a_wrong_iss_parameter_is_idp_error(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """RFC 9207: a response naming another issuer is a mix-up, whatever discovery says."""
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(
            started.location,
            user=s.person,
            response_params={"iss": f"https://login.entra.test/{OTHER_TENANT}/v2.0"},
        )
        assert_error(await client.get(back), "idp_error")
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_a_missing_iss_is_idp_error_when_discovery_promises_it(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        entra.discovery["authorization_response_iss_parameter_supported"] = True
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person, response_params={"iss": None})
        assert_error(await client.get(back), "idp_error")
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_the_right_iss_is_accepted_when_discovery_promises_it(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        entra.discovery["authorization_response_iss_parameter_supported"] = True
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person)
        assert parse_qs(urlsplit(back).query)["iss"] == [entra.issuer]
        assert await signed_in_user(client, await client.get(back)) == str(s.user.id)

    async def test_the_right_iss_is_accepted_when_discovery_is_silent(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person, response_params={"iss": None})
        assert "iss" not in parse_qs(urlsplit(back).query)
        login_code(await client.get(back))
        started = await start(client, s.provider)
        back = entra.authorize(
            started.location, user=s.person, response_params={"iss": entra.issuer}
        )
        login_code(await client.get(back))


# --- the code exchange ------------------------------------------------------------------------


class TestTokenExchange:
    async def test_a_wrong_client_secret_is_token_exchange_failed(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory, client_secret=WRONG_SECRET)
        started = await start(client, s.provider)
        response = await client.get(entra.authorize(started.location, user=s.person))
        assert_error(response, "token_exchange_failed")
        assert_cookie_cleared(response, started, s.provider.id)
        assert entra.token_calls == 1
        assert entra.token_requests[0]["client_secret"] == WRONG_SECRET
        await assert_nothing_created(sessionmaker, s.provider)

    @pytest.mark.parametrize(
        "answer",
        [
            httpx.Response(500, json={"error": "server_error"}),
            httpx.Response(
                500,
                text="<!DOCTYPE html><html><body>Sorry, something went wrong</body></html>",
                headers={"Content-Type": "text/html"},
            ),
            httpx.Response(
                200,
                text="<html><body>captive portal</body></html>",
                headers={"Content-Type": "text/html"},
            ),
            httpx.Response(200, json={"access_token": "x", "token_type": "Bearer"}),
            httpx.Response(200, json={"id_token": 42, "access_token": "x"}),
            httpx.Response(200, json=["not", "an", "object"]),
            httpx.Response(200, json={"id_token": "x", "pad": "a" * 70_000}),
            httpx.Response(502, text=""),
        ],
        ids=[
            "500-json",
            "500-html",
            "200-html",
            "no-id-token",
            "id-token-not-text",
            "json-array",
            "oversized",
            "502-empty",
        ],
    )
    async def test_a_broken_token_endpoint_is_token_exchange_failed(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
        answer: httpx.Response,
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        entra.token_response_override = answer
        response = await client.get(entra.authorize(started.location, user=s.person))
        assert_error(response, "token_exchange_failed")
        assert entra.token_calls == 1
        await assert_nothing_created(sessionmaker, s.provider)

    @pytest.mark.parametrize(
        "failure",
        [
            httpx.ReadTimeout("timed out"),
            httpx.ConnectError("refused"),
            httpx.RemoteProtocolError("x"),
        ],
        ids=["read-timeout", "connect-error", "protocol-error"],
    )
    async def test_an_unreachable_token_endpoint_is_token_exchange_failed(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
        failure: Exception,
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        entra.token_response_override = failure
        response = await client.get(entra.authorize(started.location, user=s.person))
        assert_error(response, "token_exchange_failed")
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_a_rejected_code_is_token_exchange_failed(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        back = httpx.URL(entra.authorize(started.location, user=s.person))
        forged = back.copy_set_param("code", "1.Aforged-code")
        assert_error(await client.get(forged), "token_exchange_failed")
        await assert_nothing_created(sessionmaker, s.provider)


class TestIdToken:
    """A couple of invalid ID tokens end-to-end; each rule has its own tests elsewhere."""

    @pytest.mark.parametrize(
        "overrides",
        [
            {"nonce": "a-nonce-of-another-sign-in"},
            {"nonce": ...},
            {"aud": "f1e2d3c4-b5a6-4978-8a6b-5c4d3e2f1a0b"},
            {"aud": [CLIENT_ID, "f1e2d3c4-b5a6-4978-8a6b-5c4d3e2f1a0b"]},
            {"tid": OTHER_TENANT},
            {"iss": f"https://login.entra.test/{OTHER_TENANT}/v2.0"},
            {"exp": int(time.time()) - 3600},
        ],
        ids=["wrong-nonce", "no-nonce", "wrong-aud", "extra-aud", "other-tid", "other-iss", "exp"],
    )
    async def test_an_invalid_id_token_is_invalid_id_token(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
        overrides: dict[str, Any],
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        response = await client.get(entra.authorize(started.location, user=s.person, **overrides))
        assert_error(response, "invalid_id_token")
        assert_cookie_cleared(response, started, s.provider.id)
        assert entra.token_calls == 1
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_a_token_signed_by_an_unpublished_key_is_invalid_id_token(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        stranger = unpublished_key()
        back = entra.authorize(started.location, user=s.person, key=stranger)
        assert_error(await client.get(back), "invalid_id_token")
        await assert_nothing_created(sessionmaker, s.provider)


class TestProvisioningAndProvider:
    async def test_an_unknown_user_is_user_not_provisioned(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        stranger = EntraUser.make()
        response = await sign_in(client, entra, s.provider, stranger)
        assert_error(response, "user_not_provisioned")
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_a_provider_disabled_after_initiate_is_provider_disabled(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person)
        await set_enabled(sessionmaker, s.provider, False)

        response = await client.get(back)

        assert_error(response, "provider_disabled")
        assert_cookie_cleared(response, started, s.provider.id)
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_a_provider_disabled_during_the_code_exchange_is_provider_disabled(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        s = await setup(factory)
        exchange = service._exchange_code

        async def exchange_then_disable(*args: Any, **kwargs: Any) -> dict[str, Any]:
            tokens = await exchange(*args, **kwargs)
            await set_enabled(sessionmaker, s.provider, False)
            return tokens

        monkeypatch.setattr(service, "_exchange_code", exchange_then_disable)
        response = await sign_in(client, entra, s.provider, s.person)
        assert_error(response, "provider_disabled")
        assert entra.token_calls == 1
        await assert_nothing_created(sessionmaker, s.provider)


class TestServerError:
    @pytest.mark.parametrize("target", ["choose_account", "write_sign_in"])
    async def test_an_unexpected_exception_is_server_error_without_a_trace(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
        target: str,
    ) -> None:
        async def broken(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError("boom: internal detail")

        def broken_sync(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError("boom: internal detail")

        if target == "choose_account":
            monkeypatch.setattr(service, "choose_account", broken_sync)
        else:  # whichever database's hot path serves this test
            monkeypatch.setattr(FastPath, "write_sign_in", broken)
            monkeypatch.setattr(SQLiteFastPath, "write_sign_in", broken)
        s = await setup(factory)

        response = await sign_in(client, entra, s.provider, s.person)

        assert_error(response, "server_error")
        assert "boom" not in response.headers["location"]
        assert "Traceback" not in response.text
        await assert_nothing_created(sessionmaker, s.provider)
        assert any(r.levelno >= logging.ERROR and r.exc_info is not None for r in caplog.records), (
            "the failure is logged with its trace, for the operator"
        )


# --- races, form_post, replicas -----------------------------------------------------------


class TestRace:
    async def test_two_callbacks_racing_for_one_state_sign_in_once(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person)

        responses = await asyncio.gather(
            client.get(back, headers=started.cookie_header),
            client.get(back, headers=started.cookie_header),
        )

        locations = sorted(r.headers["location"] for r in responses)
        assert all(r.status_code == 302 for r in responses)
        winners = [loc for loc in locations if loc.startswith(f"{COMPLETE_URL}?code=")]
        assert len(winners) == 1, locations
        assert f"{ERROR_URL}?error=invalid_state" in locations
        assert entra.token_calls == 1
        assert (
            await count(sessionmaker, SignInSession, SignInSession.provider_id == s.provider.id)
            == 1
        )
        assert await count(sessionmaker, ConsumedState) == 1

    async def test_two_callbacks_consuming_one_state_at_the_same_instant_sign_in_once(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Both callbacks have opened the cookie before either records the state as used:
        the database, not the order of events in this process, picks the winner."""
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person)
        consume = state_module.consume
        barrier = asyncio.Barrier(2)

        async def consume_together(*args: Any) -> None:
            await asyncio.wait_for(barrier.wait(), timeout=10)
            await consume(*args)

        monkeypatch.setattr(state_module, "consume", consume_together)

        responses = await asyncio.gather(
            client.get(back, headers=started.cookie_header),
            client.get(back, headers=started.cookie_header),
        )

        locations = sorted(r.headers["location"] for r in responses)
        assert [loc.split("?")[0] for loc in locations] == [COMPLETE_URL, ERROR_URL], locations
        assert locations[1] == f"{ERROR_URL}?error=invalid_state"
        assert entra.token_calls == 1
        assert (
            await count(sessionmaker, SignInSession, SignInSession.provider_id == s.provider.id)
            == 1
        )


class TestFormPost:
    async def test_a_form_post_callback_signs_in_with_the_cookie(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        back = urlsplit(entra.authorize(started.location, user=s.person))
        form = {name: values[0] for name, values in parse_qs(back.query).items()}

        response = await client.post(back.path, data=form)

        assert response.status_code == 302
        assert response.headers["referrer-policy"] == "no-referrer"
        assert_cookie_cleared(response, started, s.provider.id)
        assert await signed_in_user(client, response) == str(s.user.id)

    async def test_a_form_post_callback_is_checked_like_a_query_one(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        back = urlsplit(entra.authorize(started.location, user=s.person))
        form = {name: values[0] for name, values in parse_qs(back.query).items()}
        async with fresh_client(app) as other:
            assert_error(await other.post(back.path, data=form), "invalid_state")
        started = await start(client, s.provider)
        back = urlsplit(entra.authorize_error(started.location))
        form = {name: values[0] for name, values in parse_qs(back.query).items()}
        assert_error(await client.post(back.path, data=form), "access_denied")
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_a_form_post_with_the_state_only_in_the_query_is_refused(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        """The POST route reads the form body, not the query string."""
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person)
        assert_error(await client.post(back, data={}), "invalid_state")


class TestReplicas:
    async def test_a_sign_in_started_on_one_instance_finishes_on_another(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider, return_to="/reports")
        back = entra.authorize(started.location, user=s.person)
        context: AppContext = app.state.context

        second = create_app(context.settings)
        async with second.router.lifespan_context(second):
            assert second.state.context is not context
            async with fresh_client(second) as browser:
                finished = await browser.get(back, headers=started.cookie_header)
                replayed = await browser.get(back, headers=started.cookie_header)

        assert finished.status_code == 302, finished.text
        location = urlsplit(finished.headers["location"])
        assert f"{location.scheme}://{location.netloc}{location.path}" == COMPLETE_URL
        query = parse_qs(location.query)
        assert query["return_to"] == ["/reports"]
        assert_error(replayed, "invalid_state")
        # And a replay on the first instance finds the state spent too.
        assert_error(await client.get(back, headers=started.cookie_header), "invalid_state")
        # The login code minted by the second instance works on the first.
        tokens = await client.post(
            "/api/v1/auth/token", json={"grant_type": "login_code", "code": query["code"][0]}
        )
        assert tokens.status_code == 200, tokens.text
        me = await client.get(
            "/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens.json()['access_token']}"}
        )
        assert me.json()["user"]["id"] == str(s.user.id)
        assert entra.token_calls == 1


class TestKeyRotation:
    async def test_a_key_rotation_between_two_sign_ins_works(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        s = await setup(factory)

        assert await signed_in_user(client, await sign_in(client, entra, s.provider, s.person)) == (
            str(s.user.id)
        )
        assert entra.jwks_calls == 1
        old_kid = entra.signing_key.kid

        new_kid = entra.rotate_keys()
        assert new_kid != old_kid
        # The very next sign-in, moments later: its unknown kid refetches the set at once.

        response = await sign_in(client, entra, s.provider, s.person)
        assert await signed_in_user(client, response) == str(s.user.id)
        assert entra.jwks_calls == 2, "the unknown kid fetched the key set once more"

        # A third sign-in with the new key uses the cached set.
        login_code(await sign_in(client, entra, s.provider, s.person))
        assert entra.jwks_calls == 2

    async def test_a_new_key_published_alongside_the_old_one_is_picked_up(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        s = await setup(factory)
        login_code(await sign_in(client, entra, s.provider, s.person))
        entra.rotate_keys(keep_old=True)
        login_code(await sign_in(client, entra, s.provider, s.person))
        assert entra.jwks_calls == 2


# --- user resolution ---------------------------------------------------------------------------


class TestUserResolution:
    async def test_first_sign_in_links_the_associated_user_by_email_case_insensitively(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        company = await factory.company()
        provider = await make_provider(factory, company)
        person = EntraUser.make(email="adele.vance@contoso.com")
        user = await factory.user(company, email="Adele.Vance@Contoso.COM", provider=provider)

        response = await sign_in(client, entra, provider, person)

        assert await signed_in_user(client, response) == str(user.id)
        async with session_scope(sessionmaker) as session:
            links = (await session.scalars(select(IdentityLink))).all()
        assert [(lk.provider_id, lk.namespace, lk.subject, lk.user_id) for lk in links] == [
            (provider.id, TENANT_ID, person.oid, user.id)
        ]

    async def test_a_user_of_another_company_with_that_email_is_not_provisioned(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        company = await factory.company("Contoso")
        provider = await make_provider(factory, company)
        elsewhere = await factory.company("Fabrikam")
        # Even associated with a provider of its own company (same tenant, say).
        theirs = await make_provider(factory, elsewhere)
        person = EntraUser.make()
        await factory.user(elsewhere, email=person.email, provider=theirs)

        assert_error(await sign_in(client, entra, provider, person), "user_not_provisioned")
        await assert_nothing_created(sessionmaker, provider)

    async def test_a_user_of_the_company_not_associated_with_the_provider_is_not_provisioned(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        company = await factory.company()
        provider = await make_provider(factory, company)
        person = EntraUser.make()
        await factory.user(company, email=person.email, provider=None)

        assert_error(await sign_in(client, entra, provider, person), "user_not_provisioned")
        await assert_nothing_created(sessionmaker, provider)

    async def test_a_user_associated_with_another_provider_of_the_company_is_not_provisioned(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        company = await factory.company()
        provider = await make_provider(factory, company)
        sibling = await make_provider(factory, company)
        person = EntraUser.make()
        await factory.user(company, email=person.email, provider=sibling)

        assert_error(await sign_in(client, entra, provider, person), "user_not_provisioned")
        await assert_nothing_created(sessionmaker, provider)

    async def test_preferred_username_stands_in_for_a_missing_email(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
    ) -> None:
        company = await factory.company()
        provider = await make_provider(factory, company)
        person = EntraUser.make(
            email=None, preferred_username="Megan.Bowen@contoso.onmicrosoft.com"
        )
        user = await factory.user(
            company, email="megan.bowen@contoso.onmicrosoft.com", provider=provider
        )
        assert await signed_in_user(client, await sign_in(client, entra, provider, person)) == (
            str(user.id)
        )

    async def test_an_unverified_email_never_links_the_upn_does(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
    ) -> None:
        """Entra's ``email`` is the mail attribute anyone with user-admin rights (or a guest)
        can set: without ``xms_edov`` a first sign-in matches the UPN only (README, *Setting
        up Entra ID*)."""
        company = await factory.company()
        provider = await make_provider(factory, company)
        person = EntraUser.make(
            email="adele@contoso.com", preferred_username="megan@contoso.onmicrosoft.com"
        )
        adele = await factory.user(company, email="adele@contoso.com", provider=provider)
        megan = await factory.user(
            company, email="megan@contoso.onmicrosoft.com", provider=provider
        )
        response = await sign_in(client, entra, provider, person)
        assert await signed_in_user(client, response) == str(megan.id)
        assert adele.id != megan.id

    async def test_a_verified_email_wins_over_the_upn(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
    ) -> None:
        company = await factory.company()
        provider = await make_provider(factory, company)
        person = EntraUser.make(
            email="adele@contoso.com", preferred_username="megan@contoso.onmicrosoft.com"
        )
        adele = await factory.user(company, email="adele@contoso.com", provider=provider)
        await factory.user(company, email="megan@contoso.onmicrosoft.com", provider=provider)
        started = await start(client, provider)
        response = await client.get(entra.authorize(started.location, user=person, xms_edov=True))
        assert await signed_in_user(client, response) == str(adele.id)

    async def test_later_sign_ins_use_the_link_even_after_an_email_change(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
    ) -> None:
        s = await setup(factory)
        assert await signed_in_user(client, await sign_in(client, entra, s.provider, s.person)) == (
            str(s.user.id)
        )
        renamed = EntraUser.make(email="adele.married-name@contoso.com", oid=s.person.oid)

        response = await sign_in(client, entra, s.provider, renamed)

        assert await signed_in_user(client, response) == str(s.user.id)
        # Even with no email at all, the link alone counts.
        anonymous = EntraUser.make(
            email=None, preferred_username="x@contoso.onmicrosoft.com", oid=s.person.oid
        )
        assert await signed_in_user(
            client, await sign_in(client, entra, s.provider, anonymous)
        ) == (str(s.user.id))

    async def test_another_identity_presenting_a_linked_users_email_cannot_take_over(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        login_code(await sign_in(client, entra, s.provider, s.person))
        impostor = EntraUser.make(email=s.person.email)
        assert impostor.oid != s.person.oid

        assert_error(await sign_in(client, entra, s.provider, impostor), "user_not_provisioned")

        assert await count(sessionmaker, IdentityLink) == 1
        assert (
            await count(sessionmaker, SignInSession, SignInSession.provider_id == s.provider.id)
            == 1
        )
        # Nor with the email differently cased.
        shouting = EntraUser.make(email=(s.person.email or "").upper())
        assert_error(await sign_in(client, entra, s.provider, shouting), "user_not_provisioned")

    async def test_a_token_of_another_tenant_cannot_use_the_link(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
    ) -> None:
        """Identities are keyed by (provider, tid, oid): the same oid from another tenant is
        not the linked identity (it is refused before user resolution)."""
        s = await setup(factory)
        login_code(await sign_in(client, entra, s.provider, s.person))
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person, tid=OTHER_TENANT)
        assert_error(await client.get(back), "invalid_id_token")

    async def test_removing_the_association_locks_out_and_reassociating_links_anew(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        admin = await factory.user(s.company, Role.ADMINISTRATOR)
        headers = await factory.headers(admin)
        login_code(await sign_in(client, entra, s.provider, s.person))

        cleared = await client.patch(
            f"/api/v1/users/{s.user.id}", json={"sso_provider_id": None}, headers=headers
        )
        assert cleared.status_code == 200, cleared.text
        assert cleared.json()["sso_provider_id"] is None

        assert_error(await sign_in(client, entra, s.provider, s.person), "user_not_provisioned")
        assert await count(sessionmaker, IdentityLink) == 0

        restored = await client.patch(
            f"/api/v1/users/{s.user.id}",
            json={"sso_provider_id": str(s.provider.id)},
            headers=headers,
        )
        assert restored.status_code == 200, restored.text
        # The Entra account was recreated: a new oid, the same email, links afresh.
        recreated = EntraUser.make(email=s.person.email)
        response = await sign_in(client, entra, s.provider, recreated)
        assert await signed_in_user(client, response) == str(s.user.id)
        async with session_scope(sessionmaker) as session:
            subjects = (await session.scalars(select(IdentityLink.subject))).all()
        assert subjects == [recreated.oid]
        # And the old identity no longer gets in.
        assert_error(await sign_in(client, entra, s.provider, s.person), "user_not_provisioned")

    async def test_a_linked_user_moved_off_the_provider_is_locked_out_at_once(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """Even if the link row survived (a change made straight in the database)."""
        s = await setup(factory)
        login_code(await sign_in(client, entra, s.provider, s.person))
        async with session_scope(sessionmaker) as session:
            await session.execute(
                update(User).where(User.id == s.user.id).values(sso_provider_id=None)
            )
        assert await count(sessionmaker, IdentityLink) == 1
        assert_error(await sign_in(client, entra, s.provider, s.person), "user_not_provisioned")


# --- last_error -------------------------------------------------------------------------------


class TestLastError:
    async def test_a_wrong_secret_is_recorded_as_invalid_client_secret(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.DEBUG)
        s = await setup(factory, client_secret=WRONG_SECRET)

        assert_error(await sign_in(client, entra, s.provider, s.person), "token_exchange_failed")

        error = await last_error(client, factory, s)
        assert error is not None
        assert error["code"] == "invalid_client_secret"
        assert "AADSTS7000215" in error["message"]
        assert error["at"]
        logs = rendered_logs(caplog)
        assert "AADSTS7000215" in logs
        assert any(
            getattr(r, "provider_code", None) == "AADSTS7000215" and r.levelno >= logging.WARNING
            for r in caplog.records
        ), "a log line names the AADSTS code"
        assert WRONG_SECRET not in logs
        assert CLIENT_SECRET not in logs
        assert WRONG_SECRET not in json.dumps(error)

    @pytest.mark.parametrize(
        ("status", "error", "aadsts", "code"),
        [
            (401, "invalid_client", 7000215, "invalid_client_secret"),
            (401, "invalid_client", 7000222, "client_secret_expired"),
            (400, "unauthorized_client", 700016, "unknown_client_id"),
            (400, "invalid_request", 50011, "redirect_uri_mismatch"),
        ],
    )
    async def test_an_actionable_entra_error_is_recorded_as_last_error(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        caplog: pytest.LogCaptureFixture,
        status: int,
        error: str,
        aadsts: int,
        code: str,
    ) -> None:
        caplog.set_level(logging.DEBUG)
        s = await setup(factory)
        entra.token_error = (status, error_body(error, aadsts, "Something an admin must fix."))

        assert_error(await sign_in(client, entra, s.provider, s.person), "token_exchange_failed")

        recorded = await last_error(client, factory, s)
        assert recorded is not None
        assert recorded["code"] == code
        assert f"AADSTS{aadsts}" in recorded["message"]
        assert any(
            getattr(r, "provider_code", None) == f"AADSTS{aadsts}"
            and getattr(r, "last_error", None) == code
            for r in caplog.records
        )
        assert CLIENT_SECRET not in rendered_logs(caplog)

    async def test_a_plain_invalid_client_without_aadsts_is_recorded_too(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        """Another OpenID Provider (or a future Entra) may name no AADSTS code."""
        s = await setup(factory)
        entra.token_error = (
            401,
            {"error": "invalid_client", "error_description": "client authentication failed"},
        )
        assert_error(await sign_in(client, entra, s.provider, s.person), "token_exchange_failed")
        recorded = await last_error(client, factory, s)
        assert recorded is not None
        assert recorded["code"] == "invalid_client"
        assert "client secret" in recorded["message"]

    async def test_a_transient_failure_records_no_last_error(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        s = await setup(factory)
        entra.token_error = (400, error_body("invalid_grant", 70008, "The code has expired."))
        assert_error(await sign_in(client, entra, s.provider, s.person), "token_exchange_failed")
        assert await last_error(client, factory, s) is None

    async def test_a_successful_sign_in_clears_last_error(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        context: AppContext,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory, client_secret=WRONG_SECRET)
        assert_error(await sign_in(client, entra, s.provider, s.person), "token_exchange_failed")
        recorded = await last_error(client, factory, s)
        assert recorded is not None
        assert recorded["code"] == "invalid_client_secret"

        # The administrator pastes the secret's value.
        async with session_scope(sessionmaker) as session:
            await session.execute(
                update(SSOProvider)
                .where(SSOProvider.id == s.provider.id)
                .values(client_secret_encrypted=context.box.encrypt(CLIENT_SECRET))
            )
        login_code(await sign_in(client, entra, s.provider, s.person))

        assert await last_error(client, factory, s) is None
