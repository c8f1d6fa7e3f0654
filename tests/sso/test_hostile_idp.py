"""A slow or hanging identity provider: the sign-in fails within the configured time, nothing
is half-written, and the worker keeps answering everyone else meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from sso_broker.main import create_app
from sso_broker.models import IdentityLink, LoginCode, SignInSession
from tests.conftest import PUBLIC_URL, Database, Factory, _empty_tables, make_settings
from tests.fixtures.entra import CLIENT_ID, CLIENT_SECRET, TENANT_ID, EntraUser, FakeEntra
from tests.pkce import PKCE

TIMEOUT = 0.5


@pytest.fixture
async def impatient_app(database: Database) -> AsyncIterator[FastAPI]:
    app = create_app(make_settings(database.url, http_timeout=TIMEOUT))
    try:
        async with app.router.lifespan_context(app):
            yield app
    finally:
        await _empty_tables(database.url)


async def _hang(request: httpx.Request) -> httpx.Response:
    await asyncio.sleep(30)
    return httpx.Response(500)


async def test_a_hanging_token_endpoint_fails_in_time_and_the_worker_stays_responsive(
    impatient_app: FastAPI, entra: FakeEntra
) -> None:
    factory = Factory(impatient_app.state.context)
    company = await factory.company()
    provider = await factory.provider(
        company, base_url=TENANT_ID, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
        enabled=True,
    )  # fmt: skip
    person = EntraUser.make()
    assert person.email is not None
    await factory.user(company, email=person.email, provider=provider)
    entra.router.routes[f"entra {entra.authority}/{entra.tenant_id} token"].side_effect = _hang

    transport = httpx.ASGITransport(app=impatient_app)
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as client:
        started = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)
        callback = entra.authorize(started.headers["location"], user=person)
        began = time.perf_counter()
        sign_in = asyncio.create_task(client.get(callback))
        # Meanwhile the same worker answers others at once.
        await asyncio.sleep(0.05)
        health_began = time.perf_counter()
        health = await client.get("/healthz")
        health_took = time.perf_counter() - health_began
        finished = await sign_in
        took = time.perf_counter() - began

    assert health.status_code == 200
    assert health_took < TIMEOUT
    assert finished.status_code == 302
    assert finished.headers["location"].endswith("error=token_exchange_failed")
    assert took < TIMEOUT + 2.0, f"the callback took {took:.2f} s"
    async with impatient_app.state.context.sessionmaker() as session:
        for model in (SignInSession, LoginCode, IdentityLink):
            assert await session.scalar(select(func.count()).select_from(model)) == 0


async def test_a_hanging_discovery_fails_initiate_in_time(
    impatient_app: FastAPI, entra: FakeEntra
) -> None:
    factory = Factory(impatient_app.state.context)
    provider = await factory.provider(
        await factory.company(), base_url=TENANT_ID, client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET, enabled=True,
    )  # fmt: skip
    entra.router.routes[f"entra {entra.authority}/{entra.tenant_id} discovery"].side_effect = _hang
    transport = httpx.ASGITransport(app=impatient_app)
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as client:
        began = time.perf_counter()
        response = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)
        took = time.perf_counter() - began
    assert response.status_code == 302
    assert response.headers["location"].endswith("error=idp_error")
    assert took < TIMEOUT + 2.0
