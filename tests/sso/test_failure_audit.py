"""Every sign-in failure at the callback of an existing provider is in the company's audit
log as ``sign_in.failed`` with its error code and provider (README, *Security model*): a
replayed or forged state, a disabled provider and a refused user leave a trace."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from sso_broker.users.models import Role
from tests.conftest import Factory
from tests.fixtures.entra import EntraUser, FakeEntra, error_body
from tests.sso.helpers import Setup, assert_error, set_enabled, setup, start

Browser, Response = httpx.AsyncClient, httpx.Response
Scenario = Callable[[Browser, FakeEntra, Setup, Any], Awaitable[Response]]


async def _replayed_state(
    client: httpx.AsyncClient, entra: FakeEntra, s: Setup, _: Any
) -> httpx.Response:
    started = await start(client, s.provider)
    back = entra.authorize(started.location, user=s.person)
    await client.get(back, headers=started.cookie_header)
    return await client.get(back, headers=started.cookie_header)


async def _forged_state(
    client: httpx.AsyncClient, entra: FakeEntra, s: Setup, _: Any
) -> httpx.Response:
    return await client.get(
        f"/sso/{s.provider.id}/callback", params={"state": "forged", "code": "x"}
    )


async def _disabled(client: Browser, entra: FakeEntra, s: Setup, sessionmaker: Any) -> Response:
    started = await start(client, s.provider)
    await set_enabled(sessionmaker, s.provider, False)
    return await client.get(entra.authorize(started.location, user=s.person))


async def _cancelled(
    client: httpx.AsyncClient, entra: FakeEntra, s: Setup, _: Any
) -> httpx.Response:
    started = await start(client, s.provider)
    return await client.get(entra.authorize_error(started.location))


async def _idp_error(
    client: httpx.AsyncClient, entra: FakeEntra, s: Setup, _: Any
) -> httpx.Response:
    started = await start(client, s.provider)
    return await client.get(
        entra.authorize_error(started.location, error="server_error", description="boom")
    )


async def _bad_secret(
    client: httpx.AsyncClient, entra: FakeEntra, s: Setup, _: Any
) -> httpx.Response:
    entra.token_error = (401, error_body("invalid_client", 7000215, "Invalid client secret."))
    started = await start(client, s.provider)
    return await client.get(entra.authorize(started.location, user=s.person))


async def _bad_token(
    client: httpx.AsyncClient, entra: FakeEntra, s: Setup, _: Any
) -> httpx.Response:
    started = await start(client, s.provider)
    return await client.get(entra.authorize(started.location, user=s.person, nonce="other"))


async def _stranger(
    client: httpx.AsyncClient, entra: FakeEntra, s: Setup, _: Any
) -> httpx.Response:
    started = await start(client, s.provider)
    return await client.get(entra.authorize(started.location, user=EntraUser.make()))


SCENARIOS = [
    ("invalid_state", _replayed_state),
    ("invalid_state", _forged_state),
    ("provider_disabled", _disabled),
    ("access_denied", _cancelled),
    ("idp_error", _idp_error),
    ("token_exchange_failed", _bad_secret),
    ("invalid_id_token", _bad_token),
    ("user_not_provisioned", _stranger),
]


@pytest.mark.parametrize(
    ("code", "scenario"), SCENARIOS, ids=[f"{c}-{f.__name__.strip('_')}" for c, f in SCENARIOS]
)
async def test_every_callback_failure_is_audited(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    sessionmaker: Any,
    code: str,
    scenario: Scenario,
) -> None:
    s = await setup(factory)
    response = await scenario(client, entra, s, sessionmaker)
    assert_error(response, code)
    admin = await factory.user(s.company, Role.ADMINISTRATOR)
    events = await client.get(
        "/api/v1/audit-events",
        params={"type": "sign_in.failed"},
        headers=await factory.headers(admin),
    )
    assert events.status_code == 200, events.text
    failures = [(e["error"], e["provider_id"]) for e in events.json()["items"]]
    assert failures == [(code, str(s.provider.id))]
