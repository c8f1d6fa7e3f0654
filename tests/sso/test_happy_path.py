from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx

from tests.conftest import Factory
from tests.fixtures.entra import CLIENT_ID, CLIENT_SECRET, TENANT_ID, EntraUser, FakeEntra
from tests.pkce import PKCE, code_grant


async def test_a_provisioned_user_signs_in_end_to_end(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
) -> None:
    company = await factory.company()
    provider = await factory.provider(
        company, base_url=TENANT_ID, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, enabled=True
    )
    person = EntraUser.make()
    assert person.email is not None
    user = await factory.user(company, email=person.email, provider=provider)

    started = await client.get(
        f"/sso/{provider.id}/initiate", params={**PKCE, "return_to": "/reports"}
    )
    assert started.status_code == 302, started.text
    back = entra.authorize(started.headers["location"], user=person)
    finished = await client.get(back)
    assert finished.status_code == 302
    location = urlsplit(finished.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == (
        "https://app.example.com/sso/complete"
    ), finished.headers["location"]
    query = parse_qs(location.query)
    assert query["return_to"] == ["/reports"]

    tokens = await client.post("/api/v1/auth/token", json=code_grant(query["code"][0]))
    assert tokens.status_code == 200, tokens.text
    body = tokens.json()
    me = await client.get(
        "/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.status_code == 200, me.text
    assert me.json()["user"]["id"] == str(user.id)
    assert me.json()["session"]["provider_id"] == str(provider.id)
