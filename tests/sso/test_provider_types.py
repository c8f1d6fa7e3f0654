"""A whole sign-in through a provider of type ``oidc`` (README, *Any OpenID Provider*): the
generic core with the plain adapter, against the fake tenant, which is a standard OpenID
Provider at its issuer. Identities are (``iss``, ``sub``); only a verified email links."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sso_broker.database import session_scope
from sso_broker.deps import AppContext
from sso_broker.errors import SignInError
from sso_broker.models import IdentityLink, SignInSession
from sso_broker.sso import service
from sso_broker.users.models import Role
from tests.conftest import PUBLIC_URL, Factory
from tests.fixtures.entra import CLIENT_ID, CLIENT_SECRET, EntraUser, FakeEntra
from tests.pkce import code_grant
from tests.sso.helpers import (
    Setup,
    assert_error,
    last_error,
    setup,
    signed_in_user,
    start,
)


async def oidc_setup(factory: Factory, entra: FakeEntra) -> Setup:
    company = await factory.company()
    provider = await factory.provider(
        company,
        type="oidc",
        base_url=entra.issuer,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        enabled=True,
    )
    person = EntraUser.make()
    assert person.email is not None
    user = await factory.user(company, email=person.email.upper(), provider=provider)
    return Setup(company=company, provider=provider, person=person, user=user)


async def sign_in(
    client: httpx.AsyncClient, entra: FakeEntra, s: Setup, **claims: Any
) -> httpx.Response:
    started = await start(client, s.provider)
    return await client.get(entra.authorize(started.location, user=s.person, **claims))


async def test_a_verified_email_links_the_identity_by_issuer_and_subject(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    s = await oidc_setup(factory, entra)
    response = await sign_in(client, entra, s, email_verified=True)
    assert await signed_in_user(client, response) == str(s.user.id)
    async with session_scope(sessionmaker) as session:
        (link,) = (await session.scalars(select(IdentityLink))).all()
    assert (link.namespace, link.user_id) == (entra.issuer, s.user.id)
    assert link.subject != s.person.oid  # the token's sub, not Entra's oid

    # Later sign-ins use the link alone: the email no longer matters.
    again = await sign_in(client, entra, s, email="someone.else@example.com")
    assert await signed_in_user(client, again) == str(s.user.id)


async def test_an_unverified_email_links_nobody(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
) -> None:
    s = await oidc_setup(factory, entra)
    for verified in (None, False, "true"):
        options = {} if verified is None else {"email_verified": verified}
        assert_error(await sign_in(client, entra, s, **options), "user_not_provisioned")


async def test_entras_claims_are_not_required_of_other_types(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
) -> None:
    s = await oidc_setup(factory, entra)
    response = await sign_in(client, entra, s, tid=..., oid=..., email_verified=True)
    assert await signed_in_user(client, response) == str(s.user.id)


async def test_domain_hint_is_entras_alone(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
) -> None:
    s = await oidc_setup(factory, entra)
    started = await start(client, s.provider, domain_hint="contoso.com", login_hint="a@b.c")
    query = parse_qs(urlsplit(started.location).query)
    assert "domain_hint" not in query
    assert query["login_hint"] == ["a@b.c"]


async def test_a_rejected_secret_names_the_generic_fix(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
) -> None:
    s = await oidc_setup(factory, entra)
    entra.token_error = (401, {"error": "invalid_client", "error_description": "bad secret"})
    assert_error(await sign_in(client, entra, s), "token_exchange_failed")
    error = await last_error(client, factory, s)
    assert error is not None
    assert error["code"] == "invalid_client"
    assert "client secret" in error["message"]
    assert "AADSTS" not in error["message"]


async def test_the_provider_shows_its_issuer(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
) -> None:
    s = await oidc_setup(factory, entra)
    admin = await factory.user(s.company, Role.ADMINISTRATOR)
    read = await client.get(
        f"/api/v1/sso-providers/{s.provider.id}", headers=await factory.headers(admin)
    )
    assert read.status_code == 200, read.text
    assert read.json()["type"] == "oidc"
    assert read.json()["issuer"] == entra.issuer
    assert read.json()["name"] == "OpenID Connect"


async def logout(client: httpx.AsyncClient, response: httpx.Response) -> str | None:
    """Signs the browser's session out; answers the provider's sign-out URL."""
    code = parse_qs(urlsplit(response.headers["location"]).query)["code"][0]
    tokens = await client.post("/api/v1/auth/token", json=code_grant(code))
    assert tokens.status_code == 200, tokens.text
    answer = await client.post(
        "/api/v1/auth/logout",
        headers={"Authorization": f"Bearer {tokens.json()['access_token']}"},
    )
    assert answer.status_code == 200, answer.text
    url: str | None = answer.json()["idp_logout_url"]
    return url


async def kept_id_tokens(sessionmaker: async_sessionmaker[AsyncSession]) -> list[str | None]:
    async with session_scope(sessionmaker) as session:
        return list((await session.scalars(select(SignInSession.id_token_encrypted))).all())


async def test_sign_out_hands_the_id_token_back_and_then_forgets_it(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    s = await oidc_setup(factory, entra)
    response = await sign_in(client, entra, s, email_verified=True)
    (kept,) = await kept_id_tokens(sessionmaker)
    assert kept is not None
    assert "eyJ" not in kept, "kept encrypted, never as it came"

    url = await logout(client, response)

    assert url is not None
    assert url.startswith(entra.end_session_endpoint + "?")
    query = parse_qs(urlsplit(url).query)
    hint = jwt.decode(query["id_token_hint"][0], options={"verify_signature": False})
    assert (hint["iss"], hint["aud"]) == (entra.issuer, CLIENT_ID)
    assert query["post_logout_redirect_uri"] == [f"{PUBLIC_URL}/sso/{s.provider.id}/logout"]
    assert query["client_id"] == [CLIENT_ID]
    assert await kept_id_tokens(sessionmaker) == [None], "a revoked session keeps nothing"


async def test_entra_keeps_no_id_token_and_signs_out_with_logout_hint(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    s = await setup(factory)
    started = await start(client, s.provider)
    response = await client.get(entra.authorize(started.location, user=s.person))
    assert await kept_id_tokens(sessionmaker) == [None]
    url = await logout(client, response)
    assert url is not None
    query = parse_qs(urlsplit(url).query)
    assert "id_token_hint" not in query
    assert query["logout_hint"] == [s.person.login_hint]


async def test_an_okta_server_that_does_not_exist_says_so_in_last_error(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, context: AppContext
) -> None:
    issuer = "https://acme.okta.com/oauth2/nope"
    entra.router.get(f"{issuer}/.well-known/openid-configuration").mock(
        return_value=httpx.Response(
            404,
            json={
                "errorCode": "E0000007",
                "errorSummary": "Not found: Resource not found: nope (AuthorizationServer)",
                "errorLink": "E0000007",
                "errorId": "oaeq3pZHt0dT2yZ8d",
                "errorCauses": [],
            },
        )
    )
    company = await factory.company()
    provider = await factory.provider(
        company, type="okta", base_url=issuer, client_id="0oa1", client_secret="s", enabled=True
    )
    person = EntraUser.make()
    user = await factory.user(company, email=str(person.email), provider=provider)
    s = Setup(company=company, provider=provider, person=person, user=user)
    # What the callback does with the metadata (an initiate only logs: it writes nothing).
    with pytest.raises(SignInError):
        await service.provider_metadata(context, provider)
    error = await last_error(client, factory, s)
    assert error is not None
    assert error["code"] == "issuer_not_found"
    assert "E0000007" in error["message"]


async def test_an_oidc_provider_at_an_entra_url_does_not_spoil_the_entra_providers_metadata(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
) -> None:
    """Metadata is cached per type: what a document is accepted as is its type's judgement,
    so another company's oidc provider pasted with an Entra tenant's issuer cannot make the
    Entra provider's sign-ins fail (or pass) on the oidc type's checks."""
    intruder = await oidc_setup(factory, entra)
    started = await start(client, intruder.provider)  # the oidc type reads the document first
    assert started.location
    s = await setup(factory)
    response = await sign_in_entra(client, entra, s)
    assert await signed_in_user(client, response) == str(s.user.id)


async def sign_in_entra(client: httpx.AsyncClient, entra: FakeEntra, s: Setup) -> httpx.Response:
    started = await start(client, s.provider)
    return await client.get(entra.authorize(started.location, user=s.person))
