"""An Entra provider whose base_url is a domain is pinned, at its first successful sign-in,
to the tenant its metadata named; metadata naming another tenant later fails the sign-in
and says so in last_error (README, *Identities and first sign-in*)."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from sso_broker.database import session_scope
from sso_broker.deps import AppContext
from sso_broker.errors import SignInError
from sso_broker.models import SSOProvider
from sso_broker.sso import service
from sso_broker.users.models import Role
from tests.conftest import Factory
from tests.fixtures.entra import AUTHORITY, TENANT_DOMAIN, TENANT_ID, FakeEntra
from tests.pkce import PKCE
from tests.sso.helpers import last_error, setup, sign_in, signed_in_user

OTHER_TENANT = "0d2e1c3b-5a4f-4e6d-8c7b-1a2b3c4d5e6f"


async def pinned(context: AppContext, provider: SSOProvider) -> str | None:
    async with session_scope(context.sessionmaker) as session:
        row = await session.scalar(select(SSOProvider).where(SSOProvider.id == provider.id))
        assert row is not None
        return row.pinned_tenant


async def test_a_domain_is_pinned_at_its_first_sign_in_and_shows_its_issuer(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, context: AppContext
) -> None:
    s = await setup(factory, base_url=TENANT_DOMAIN)
    admin = await factory.user(s.company, Role.ADMINISTRATOR)
    headers = await factory.headers(admin)
    url = f"/api/v1/sso-providers/{s.provider.id}"
    assert (await client.get(url, headers=headers)).json()["issuer"] is None
    assert await pinned(context, s.provider) is None

    response = await sign_in(client, entra, s.provider, s.person)
    assert await signed_in_user(client, response) == str(s.user.id)

    assert await pinned(context, s.provider) == TENANT_ID
    assert (await client.get(url, headers=headers)).json()["issuer"] == (
        f"{AUTHORITY}/{TENANT_ID}/v2.0"
    )


async def test_a_guid_tenant_is_never_pinned(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, context: AppContext
) -> None:
    s = await setup(factory)
    await signed_in_user(client, await sign_in(client, entra, s.provider, s.person))
    assert await pinned(context, s.provider) is None


async def test_metadata_naming_another_tenant_fails_and_says_why(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, context: AppContext
) -> None:
    s = await setup(factory, base_url=TENANT_DOMAIN)
    await signed_in_user(client, await sign_in(client, entra, s.provider, s.person))
    # The domain moves to another tenant (whoever controls it): its metadata names that one.
    entra.discovery["issuer"] = f"{AUTHORITY}/{OTHER_TENANT}/v2.0"
    context.directory = type(context.directory)(context.http)  # past the metadata's TTL
    async with session_scope(context.sessionmaker) as session:
        provider = await session.get(SSOProvider, s.provider.id)
        assert provider is not None
        session.expunge(provider)

    with pytest.raises(SignInError) as caught:
        await service.provider_metadata(context, provider)
    assert caught.value.code.value == "idp_error"
    error = await last_error(client, factory, s)
    assert error is not None
    assert error["code"] == "tenant_changed"
    # An initiate is refused too (and writes nothing).
    answer = await client.get(f"/sso/{s.provider.id}/initiate", params=PKCE)
    assert answer.status_code == 302
    assert answer.headers["location"].endswith("error=idp_error")


async def test_a_new_base_url_clears_the_pin(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, context: AppContext
) -> None:
    s = await setup(factory, base_url=TENANT_DOMAIN)
    await signed_in_user(client, await sign_in(client, entra, s.provider, s.person))
    assert await pinned(context, s.provider) == TENANT_ID
    admin = await factory.user(s.company, Role.ADMINISTRATOR)
    changed = await client.patch(
        f"/api/v1/sso-providers/{s.provider.id}",
        json={"base_url": "fabrikam.onmicrosoft.com"},
        headers=await factory.headers(admin),
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["issuer"] is None
    assert await pinned(context, s.provider) is None
