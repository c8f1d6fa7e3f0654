"""The login code is bound to the browser that started the sign-in (README, *Security model*):
the frontend's PKCE challenge at initiate, its verifier at the token endpoint.

Without it, a login code in ``SIGN_IN_COMPLETE_URL?code=…`` is a bearer credential: an
attacker signs in as themselves, stops before the last redirect and sends the victim the link
(login CSRF, RFC 6749 §10.12), or anyone who sees the URL within 60 s takes the session.
"""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sso_broker.config import Settings
from sso_broker.database import session_scope
from sso_broker.models import LoginCode, SignInSession
from tests.conftest import Database, Factory, make_settings
from tests.fixtures.entra import FakeEntra
from tests.pkce import CHALLENGE, VERIFIER, code_grant
from tests.problems import assert_problem
from tests.sso.helpers import (
    FRONTEND,
    assert_error,
    fresh_client,
    login_code,
    setup,
    start,
)

TOKEN = "/api/v1/auth/token"
ME = "/api/v1/auth/me"
START_URL = f"{FRONTEND}/sso/start"


def challenge_of(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def start_page(response: httpx.Response) -> tuple[str, dict[str, list[str]]]:
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["location"])
    return f"{location.scheme}://{location.netloc}{location.path}", parse_qs(location.query)


async def live_sessions(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    async with session_scope(sessionmaker) as session:
        rows = await session.scalars(
            select(SignInSession).where(SignInSession.revoked_at.is_(None))
        )
        return len(rows.all())


class TestInitiateWithoutAChallenge:
    """The Entra My Apps tile and bookmarks open ``/initiate`` bare: the browser goes to the
    frontend's start page, which makes a verifier and comes back with its challenge."""

    async def test_bounces_to_the_start_page_with_what_was_given(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        s = await setup(factory)
        response = await client.get(
            f"/sso/{s.provider.id}/initiate",
            params={"return_to": "/reports?x=1", "login_hint": "adele@contoso.com"},
        )
        target, query = start_page(response)
        assert target == START_URL
        assert query == {
            "provider_id": [str(s.provider.id)],
            "return_to": ["/reports?x=1"],
            "login_hint": ["adele@contoso.com"],
        }
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert not response.headers.get_list("set-cookie"), "no login state yet"
        assert entra.discovery_calls == 0, "the provider is asked nothing"

    async def test_bare_initiate_carries_only_the_provider(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        s = await setup(factory)
        response = await client.get(f"/sso/{s.provider.id}/initiate")
        assert start_page(response) == (START_URL, {"provider_id": [str(s.provider.id)]})

    @pytest.mark.parametrize("hostile", ["https://evil.example/", "//evil.example", "/\\evil"])
    async def test_an_unsafe_return_to_is_dropped(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, hostile: str
    ) -> None:
        s = await setup(factory)
        response = await client.get(f"/sso/{s.provider.id}/initiate", params={"return_to": hostile})
        assert start_page(response) == (START_URL, {"provider_id": [str(s.provider.id)]})
        assert "evil" not in response.headers["location"]

    async def test_an_unusable_login_hint_is_dropped(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        s = await setup(factory)
        for hint in ("a\r\nX-Injected: 1", "x" * 257):
            response = await client.get(
                f"/sso/{s.provider.id}/initiate", params={"login_hint": hint}
            )
            assert start_page(response) == (START_URL, {"provider_id": [str(s.provider.id)]})

    async def test_unknown_and_disabled_providers_still_fail(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        s = await setup(factory, enabled=False)
        assert_error(await client.get(f"/sso/{s.provider.id}/initiate"), "provider_disabled")
        unknown = "00000000-0000-4000-8000-000000000000"
        assert_error(await client.get(f"/sso/{unknown}/initiate"), "provider_not_found")

    async def test_the_start_page_comes_back_and_signs_in(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        """The tile's whole path: bounce, the frontend's challenge, provider, callback, token."""
        s = await setup(factory)
        bounced = await client.get(f"/sso/{s.provider.id}/initiate", params={"return_to": "/r"})
        _, query = start_page(bounced)
        # What examples/frontend's /sso/start does: a verifier kept, its challenge sent.
        verifier = "tile-verifier-" + "k" * 40
        started = await client.get(
            f"/sso/{query['provider_id'][0]}/initiate",
            params={
                "return_to": query["return_to"][0],
                "code_challenge": challenge_of(verifier),
                "code_challenge_method": "S256",
            },
        )
        assert started.status_code == 302, started.text
        finished = await client.get(entra.authorize(started.headers["location"], user=s.person))
        assert finished.status_code == 302, finished.text
        code = parse_qs(urlsplit(finished.headers["location"]).query)["code"][0]
        tokens = await client.post(
            TOKEN, json={"grant_type": "login_code", "code": code, "code_verifier": verifier}
        )
        assert tokens.status_code == 200, tokens.text


class TestAConfiguredStartPage:
    @pytest.fixture
    def settings(self, database: Database) -> Settings:
        return make_settings(
            database.url, sign_in_start_url="https://dash.example.com/login?via=sso"
        )

    async def test_sign_in_start_url_is_used_as_given(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        s = await setup(factory)
        response = await client.get(f"/sso/{s.provider.id}/initiate")
        assert response.headers["location"] == (
            f"https://dash.example.com/login?via=sso&provider_id={s.provider.id}"
        )


class TestAMalformedChallenge:
    @pytest.mark.parametrize(
        "params",
        [
            {"code_challenge": CHALLENGE},  # no method
            {"code_challenge": CHALLENGE, "code_challenge_method": "plain"},
            {"code_challenge": CHALLENGE, "code_challenge_method": "s256"},
            {"code_challenge": CHALLENGE[:-1], "code_challenge_method": "S256"},
            {"code_challenge": CHALLENGE + "A", "code_challenge_method": "S256"},
            {"code_challenge": CHALLENGE[:-1] + "=", "code_challenge_method": "S256"},
            {"code_challenge": CHALLENGE[:-1] + "+", "code_challenge_method": "S256"},
            {"code_challenge": "x" * 5000, "code_challenge_method": "S256"},
            {"code_challenge": "", "code_challenge_method": "S256"},
            {"code_challenge_method": "S256"},  # a method without a challenge
            {"code_challenge_method": "plain"},
        ],
    )
    async def test_is_an_invalid_request(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        params: dict[str, str],
    ) -> None:
        s = await setup(factory)
        response = await client.get(f"/sso/{s.provider.id}/initiate", params=params)
        assert_error(response, "invalid_request")
        assert not response.headers.get_list("set-cookie")
        assert entra.discovery_calls == 0

    async def test_the_authorization_request_carries_our_own_challenge(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        """The frontend's challenge stays between it and us: the provider sees another."""
        s = await setup(factory)
        started = await start(client, s.provider)
        sent = parse_qs(urlsplit(started.location).query)
        assert sent["code_challenge_method"] == ["S256"]
        assert sent["code_challenge"] != [CHALLENGE]
        assert CHALLENGE not in started.location


class TestTheTokenExchange:
    async def _code(self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra) -> str:
        s = await setup(factory)
        started = await start(client, s.provider)
        return login_code(await client.get(entra.authorize(started.location, user=s.person)))

    @pytest.mark.parametrize(
        "verifier",
        [
            None,  # missing
            "",
            "frontend-verifier-of-another-browser-0123456789abcdefghij",  # wrong
            VERIFIER[:-1],
            VERIFIER + "x",
            VERIFIER[:42],  # too short for RFC 7636
            "é" * 50,  # outside its alphabet
            CHALLENGE,  # the challenge itself is not the verifier
            "v" * 2000,  # too long for RFC 7636
            5,  # not even a string: still invalid_grant, and the code spent
            ["a"],
            {"a": 1},
        ],
    )
    async def test_a_missing_or_wrong_verifier_spends_the_code(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
        verifier: object,
    ) -> None:
        code = await self._code(client, factory, entra)
        body: dict[str, object] = {"grant_type": "login_code", "code": code}
        if verifier is not None:
            body["code_verifier"] = verifier
        refused = await client.post(TOKEN, json=body)
        assert_problem(refused, 400, "invalid_grant")
        assert "code_verifier" in refused.json()["detail"]
        assert VERIFIER not in refused.text
        # Spent: the right verifier comes too late, and the session it opened is ended.
        late = await client.post(TOKEN, json=code_grant(code))
        assert_problem(late, 400, "invalid_grant")
        assert await live_sessions(sessionmaker) == 0

    async def test_login_csrf_an_attackers_code_does_not_sign_the_victim_in(
        self, app: FastAPI, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        """The attacker signs in as themselves and stops at the last redirect; the victim's
        browser follows the link. Its frontend holds its own verifier, not the attacker's."""
        attacker = await setup(factory)
        started = await start(client, attacker.provider)
        link = (await client.get(entra.authorize(started.location, user=attacker.person))).headers[
            "location"
        ]
        stolen = parse_qs(urlsplit(link).query)["code"][0]
        async with fresh_client(app) as victim:
            victims_verifier = "victim-verifier-" + "v" * 43
            answer = await victim.post(
                TOKEN,
                json={
                    "grant_type": "login_code",
                    "code": stolen,
                    "code_verifier": victims_verifier,
                },
            )
        assert_problem(answer, 400, "invalid_grant")

    async def test_a_code_without_a_challenge_is_never_traded(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """A code made before codes were bound (the upgrade's minute) has no challenge."""
        code = await self._code(client, factory, entra)
        async with session_scope(sessionmaker) as session:
            await session.execute(update(LoginCode).values(code_challenge=None))
        answer = await client.post(TOKEN, json=code_grant(code))
        assert_problem(answer, 400, "invalid_grant")

    async def test_the_right_verifier_signs_in(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        code = await self._code(client, factory, entra)
        tokens = await client.post(TOKEN, json=code_grant(code))
        assert tokens.status_code == 200, tokens.text
        me = await client.get(
            ME, headers={"Authorization": f"Bearer {tokens.json()['access_token']}"}
        )
        assert me.status_code == 200, me.text
