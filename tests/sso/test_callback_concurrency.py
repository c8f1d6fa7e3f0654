"""The callback under races, as a ``form_post``, across replicas and key rotations (README,
*Signing in*)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sso_broker.deps import AppContext
from sso_broker.main import create_app
from sso_broker.models import (
    ConsumedState,
    SignInSession,
)
from sso_broker.sso import state as state_module
from tests.conftest import Factory
from tests.fixtures.entra import (
    FakeEntra,
)
from tests.pkce import code_grant
from tests.sso.helpers import (
    COMPLETE_URL,
    ERROR_URL,
    assert_cookie_cleared,
    assert_error,
    assert_nothing_created,
    count,
    fresh_client,
    login_code,
    setup,
    sign_in,
    signed_in_user,
    start,
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
        tokens = await client.post("/api/v1/auth/token", json=code_grant(query["code"][0]))
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
