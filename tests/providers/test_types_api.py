"""The admin API with each provider type (README, *Setting up Okta*, *Setting up PingOne*,
*Any OpenID Provider*): creation with the type's paste rules, default names, the read-only
issuer, and client IDs. Each type's rules in full are unit-tested in ``tests/idp/``."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.problems import assert_problem
from tests.providers.helpers import BASE, create, item

ENV = "5c6e7f80-91a2-4b3c-8d4e-5f60718293a4"
OKTA_ORG = "https://acme.okta.com"
ISSUER = "https://id.example.com"


@pytest.mark.parametrize(
    ("kind", "pasted", "base_url", "issuer", "name"),
    [
        (
            "okta",
            "https://Acme.okta.com/oauth2/default/.well-known/openid-configuration",
            "https://acme.okta.com/oauth2/default",
            "https://acme.okta.com/oauth2/default",
            "Okta",
        ),
        (
            "okta",
            "https://acme-admin.okta.com/",
            "https://acme.okta.com",
            "https://acme.okta.com",
            "Okta",
        ),
        ("pingone", ENV.upper(), ENV, f"https://auth.pingone.com/{ENV}/as", "PingOne"),
        (
            "pingone",
            f"https://auth.pingone.eu/{ENV}/as/",
            f"https://auth.pingone.eu/{ENV}/as",
            f"https://auth.pingone.eu/{ENV}/as",
            "PingOne",
        ),
        (
            "oidc",
            "https://id.example.com/",
            "https://id.example.com",
            "https://id.example.com",
            "OpenID Connect",
        ),
        ("entra", "Contoso.onmicrosoft.com", "contoso.onmicrosoft.com", None, "Azure AD / Entra"),
    ],
)
async def test_create_each_type(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    kind: str,
    pasted: str,
    base_url: str,
    issuer: str | None,
    name: str,
) -> None:
    created = await create(client, admin, type=kind, base_url=pasted)
    assert (created["type"], created["base_url"], created["issuer"], created["name"]) == (
        kind,
        base_url,
        issuer,
        name,
    )
    read = await client.get(item(created["id"]), headers=admin)
    assert read.json() == created


@pytest.mark.parametrize(
    ("kind", "base_url"),
    [
        ("okta", "https://acme.okta.com/app/UserHome"),
        ("okta", "acme.okta.com"),
        ("pingone", "https://auth.pingone.com/not-an-env/as"),
        ("oidc", "http://id.example.com"),
        ("oidc", "https://id.example.com?x=1"),
    ],
)
async def test_a_bad_base_url_is_invalid_base_url(
    client: httpx.AsyncClient, admin: dict[str, str], kind: str, base_url: str
) -> None:
    response = await client.post(BASE, json={"type": kind, "base_url": base_url}, headers=admin)
    body = assert_problem(response, 422, "invalid_base_url")
    assert "Paste" in body["detail"]


@pytest.mark.parametrize(
    ("kind", "base_url", "good", "bad"),
    [
        ("okta", "https://acme.okta.com", "0oa1b2c3d4E5f6G7h8i9", "0oa1 b2"),
        ("pingone", ENV, ENV.upper(), "not-a-guid"),
        ("oidc", "https://id.example.com", "my-app@example", "   "),
    ],
)
async def test_client_id_rules_follow_the_type(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    kind: str,
    base_url: str,
    good: str,
    bad: str,
) -> None:
    created: dict[str, Any] = await create(client, admin, type=kind, base_url=base_url)
    ok = await client.patch(item(created["id"]), json={"client_id": good}, headers=admin)
    assert ok.status_code == 200, ok.text
    assert ok.json()["client_id"] == (good.lower() if kind == "pingone" else good)
    refused = await client.patch(item(created["id"]), json={"client_id": bad}, headers=admin)
    assert_problem(refused, 422, "invalid_client_id")
