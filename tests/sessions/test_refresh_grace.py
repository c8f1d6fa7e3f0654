"""The refresh grace (README, *Sessions*): a refresh token presented again within
``SSO_BROKER_REFRESH_REUSE_GRACE`` seconds of its rotation answers the same successor while
that successor is unused (two tabs, a retried request); otherwise reuse ends the session."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import update

from sso_broker.crypto import token_hash
from sso_broker.database import session_scope, utcnow
from sso_broker.deps import AppContext
from sso_broker.main import create_app
from sso_broker.models import RefreshToken
from tests.conftest import PUBLIC_URL, Factory, make_settings
from tests.fixtures.entra import FakeEntra
from tests.sessions.test_token_flow import exchange, me_status, refresh, sign_in


async def test_the_same_token_again_within_the_grace_answers_the_same_successor(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
) -> None:
    signed_in = await sign_in(client, entra, factory)
    first = await exchange(client, signed_in.code)
    once = await refresh(client, first["refresh_token"])
    twice = await refresh(client, first["refresh_token"])
    assert (once.status_code, twice.status_code) == (200, 200), twice.text
    assert once.json()["refresh_token"] == twice.json()["refresh_token"]
    assert await me_status(client, twice.json()["access_token"]) == 200
    # The successor works, once; afterwards the first token is a copy and ends the session.
    third = await refresh(client, once.json()["refresh_token"])
    assert third.status_code == 200, third.text
    assert (await refresh(client, first["refresh_token"])).status_code == 400
    assert await me_status(client, third.json()["access_token"]) == 401


async def test_two_concurrent_refreshes_with_one_token_both_succeed(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
) -> None:
    signed_in = await sign_in(client, entra, factory)
    first = await exchange(client, signed_in.code)
    answers = await asyncio.gather(*(refresh(client, first["refresh_token"]) for _ in range(2)))
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert answers[0].json()["refresh_token"] == answers[1].json()["refresh_token"]


async def test_after_the_grace_reuse_ends_the_session(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, context: AppContext
) -> None:
    signed_in = await sign_in(client, entra, factory)
    first = await exchange(client, signed_in.code)
    second = (await refresh(client, first["refresh_token"])).json()
    grace = context.settings.refresh_reuse_grace
    async with session_scope(context.sessionmaker) as session:
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.token_hash == token_hash(first["refresh_token"]))
            .values(used_at=utcnow() - timedelta(seconds=grace + 1))
        )
    assert (await refresh(client, first["refresh_token"])).status_code == 400
    assert await me_status(client, second["access_token"]) == 401


async def test_a_grace_of_zero_turns_it_off(
    factory: Factory, entra: FakeEntra, context: AppContext
) -> None:
    settings = make_settings(context.settings.database_url, refresh_reuse_grace=0)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as client:
            signed_in = await sign_in(client, entra, factory)
            first: dict[str, Any] = await exchange(client, signed_in.code)
            second = (await refresh(client, first["refresh_token"])).json()
            assert (await refresh(client, first["refresh_token"])).status_code == 400
            assert await me_status(client, second["access_token"]) == 401
