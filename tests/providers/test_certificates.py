"""Certificate credentials (README, *Keeping SSO healthy*): the service makes the key pair and
a self-signed certificate, keeps the key encrypted, serves the public key as a JWK, and signs
an RFC 7523 client assertion per token request, which the fake Entra tenant verifies against
the certificates "uploaded" to it."""

from __future__ import annotations

import base64
import hashlib
from datetime import timedelta
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import text, update

from sso_broker.config import Settings
from sso_broker.database import session_scope, utcnow
from sso_broker.deps import AppContext
from sso_broker.models import ProviderCertificate, SSOProvider
from sso_broker.users.models import Role
from tests.conftest import Database, Factory, Tenant, make_settings
from tests.fixtures.entra import CLIENT_ID, CLIENT_SECRET, TENANT_ID, EntraUser, FakeEntra
from tests.problems import assert_problem
from tests.providers.helpers import item
from tests.sso.helpers import login_code, start


async def make_certificate(
    client: httpx.AsyncClient, admin: dict[str, str], provider: SSOProvider
) -> dict[str, Any]:
    response = await client.post(f"{item(provider.id)}/certificate", headers=admin)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def loaded(body: dict[str, Any]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(body["certificate_pem"].encode())


def upload(entra: FakeEntra, body: dict[str, Any]) -> None:
    """What an administrator does in Entra: Certificates & secrets → Upload certificate."""
    entra.certificates.append(loaded(body))


async def key_provider(factory: Factory, tenant: Tenant, **overrides: Any) -> SSOProvider:
    values: dict[str, Any] = {"base_url": TENANT_ID, "client_id": CLIENT_ID}
    values.update(overrides)
    return await factory.provider(tenant.company, **values)


class TestMakingACertificate:
    async def test_a_self_signed_rsa_certificate_whose_key_stays_here(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        context: AppContext,
    ) -> None:
        provider = await key_provider(factory, tenant)
        body = await make_certificate(client, admin, provider)
        assert set(body) == {"certificate_pem", "thumbprint_sha256", "expires_at", "created_at"}
        certificate = loaded(body)
        der = certificate.public_bytes(serialization.Encoding.DER)
        assert body["thumbprint_sha256"] == hashlib.sha256(der).hexdigest()
        assert certificate.issuer == certificate.subject  # self-signed
        public = certificate.public_key()
        assert isinstance(public, rsa.RSAPublicKey)
        assert public.key_size >= 2048
        expires = certificate.not_valid_after_utc
        assert abs(expires - (utcnow() + timedelta(days=365))) < timedelta(minutes=5)
        assert body["expires_at"].startswith(expires.date().isoformat())
        assert "PRIVATE KEY" not in str(body)
        async with context.sessionmaker() as session:
            (stored,) = (
                await session.execute(
                    text("SELECT private_key_encrypted FROM provider_certificates")
                )
            ).one()
        assert "PRIVATE KEY" not in stored  # encrypted at rest
        assert "PRIVATE KEY" in context.box.decrypt(stored)

    async def test_listed_newest_first_and_deleted_by_thumbprint(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
    ) -> None:
        provider = await key_provider(factory, tenant)
        first = await make_certificate(client, admin, provider)
        second = await make_certificate(client, admin, provider)
        listed = await client.get(f"{item(provider.id)}/certificates", headers=admin)
        assert [c["thumbprint_sha256"] for c in listed.json()["items"]] == [
            second["thumbprint_sha256"],
            first["thumbprint_sha256"],
        ]
        gone = await client.delete(
            f"{item(provider.id)}/certificates/{first['thumbprint_sha256']}", headers=admin
        )
        assert gone.status_code == 204
        again = await client.delete(
            f"{item(provider.id)}/certificates/{first['thumbprint_sha256']}", headers=admin
        )
        assert_problem(again, 404, "not_found")
        listed = await client.get(f"{item(provider.id)}/certificates", headers=admin)
        assert [c["thumbprint_sha256"] for c in listed.json()["items"]] == [
            second["thumbprint_sha256"]
        ]

    async def test_only_administrators_of_the_company(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        tenant: Tenant,
        other_admin: dict[str, str],
    ) -> None:
        provider = await key_provider(factory, tenant)
        for role in (Role.MANAGER, Role.USER, Role.READ_ONLY):
            response = await client.post(
                f"{item(provider.id)}/certificate", headers=tenant.headers[role]
            )
            assert_problem(response, 403, "forbidden")
        response = await client.post(f"{item(provider.id)}/certificate", headers=other_admin)
        assert_problem(response, 404, "not_found")


class TestAConfiguredValidity:
    @pytest.fixture
    def settings(self, database: Database) -> Settings:
        return make_settings(database.url, certificate_validity_days=30)

    async def test_the_certificate_lives_that_long(
        self, client: httpx.AsyncClient, admin: dict[str, str], factory: Factory, tenant: Tenant
    ) -> None:
        provider = await key_provider(factory, tenant)
        expires = loaded(await make_certificate(client, admin, provider)).not_valid_after_utc
        assert abs(expires - (utcnow() + timedelta(days=30))) < timedelta(minutes=5)


class TestThePublicKeys:
    async def test_served_as_a_jwk_set_to_anyone(
        self, client: httpx.AsyncClient, admin: dict[str, str], factory: Factory, tenant: Tenant
    ) -> None:
        provider = await key_provider(factory, tenant)
        empty = await client.get(f"/sso/{provider.id}/jwks.json")
        assert empty.status_code == 200
        assert empty.json() == {"keys": []}
        body = await make_certificate(client, admin, provider)
        keys = (await client.get(f"/sso/{provider.id}/jwks.json")).json()["keys"]
        (key,) = keys
        assert key["kid"] == body["thumbprint_sha256"]
        assert (key["kty"], key["alg"], key["use"]) == ("RSA", "RS256", "sig")
        public = loaded(body).public_key()
        assert isinstance(public, rsa.RSAPublicKey)
        n = int.from_bytes(_b64decode(key["n"]), "big")
        assert n == public.public_numbers().n
        assert not {"d", "p", "q"} & set(key)  # never the private part
        assert _b64decode(key["x5t#S256"]).hex() == body["thumbprint_sha256"]

    async def test_an_unknown_provider_is_not_found(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/sso/00000000-0000-4000-8000-000000000000/jwks.json")
        assert_problem(response, 404, "not_found")


def _b64decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


class TestSigningInWithACertificate:
    async def _enabled(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        entra: FakeEntra,
    ) -> tuple[SSOProvider, dict[str, Any]]:
        provider = await key_provider(factory, tenant)
        refused = await client.patch(
            item(provider.id), json={"client_auth_method": "private_key_jwt", "enabled": True},
            headers=admin,
        )  # fmt: skip
        assert_problem(refused, 422, "provider_incomplete")
        assert "certificate" in refused.json()["detail"]
        body = await make_certificate(client, admin, provider)
        upload(entra, body)
        enabled = await client.patch(
            item(provider.id), json={"client_auth_method": "private_key_jwt", "enabled": True},
            headers=admin,
        )  # fmt: skip
        assert enabled.status_code == 200, enabled.text
        assert enabled.json()["client_auth_method"] == "private_key_jwt"
        assert enabled.json()["client_secret_set"] is False
        return provider, body

    async def _sign_in(
        self, client: httpx.AsyncClient, factory: Factory, tenant: Tenant, provider: SSOProvider,
        entra: FakeEntra,
    ) -> httpx.Response:  # fmt: skip
        person = EntraUser.make()
        assert person.email is not None
        await factory.user(tenant.company, email=person.email, provider=provider)
        started = await start(client, provider)
        return await client.get(entra.authorize(started.location, user=person))

    async def test_a_sign_in_sends_a_fresh_rfc_7523_assertion_and_no_secret(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        entra: FakeEntra,
    ) -> None:
        provider, body = await self._enabled(client, admin, factory, tenant, entra)
        for _ in range(2):
            login_code(await self._sign_in(client, factory, tenant, provider, entra))
        first, second = entra.assertions
        for seen in (first, second):
            assert seen["header"]["kid"] == body["thumbprint_sha256"]
            claims = seen["claims"]
            assert claims["iss"] == claims["sub"] == CLIENT_ID
            assert claims["aud"] == entra.token_endpoint
            assert claims["exp"] - claims["iat"] <= 600
        assert first["claims"]["jti"] != second["claims"]["jti"]
        for request in entra.token_requests:
            assert "client_secret" not in request
            assert request["client_assertion_type"].endswith("jwt-bearer")

    async def test_a_new_certificate_takes_over_and_the_old_one_can_go(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        entra: FakeEntra,
    ) -> None:
        provider, old = await self._enabled(client, admin, factory, tenant, entra)
        new = await make_certificate(client, admin, provider)
        upload(entra, new)
        login_code(await self._sign_in(client, factory, tenant, provider, entra))
        assert entra.assertions[-1]["header"]["kid"] == new["thumbprint_sha256"]
        deleted = await client.delete(
            f"{item(provider.id)}/certificates/{old['thumbprint_sha256']}", headers=admin
        )
        assert deleted.status_code == 204
        login_code(await self._sign_in(client, factory, tenant, provider, entra))
        # The last one is what sign-ins use: it stays until another takes over.
        last = await client.delete(
            f"{item(provider.id)}/certificates/{new['thumbprint_sha256']}", headers=admin
        )
        assert_problem(last, 422, "provider_incomplete")

    async def test_the_last_unexpired_certificate_stays_and_changes_are_audited(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        entra: FakeEntra,
        context: AppContext,
    ) -> None:
        provider, old = await self._enabled(client, admin, factory, tenant, entra)
        new = await make_certificate(client, admin, provider)
        async with session_scope(context.sessionmaker) as session:
            await session.execute(
                update(ProviderCertificate)
                .where(ProviderCertificate.thumbprint_sha256 == old["thumbprint_sha256"])
                .values(not_after=utcnow() - timedelta(days=1))
            )
        refused = await client.delete(
            f"{item(provider.id)}/certificates/{new['thumbprint_sha256']}", headers=admin
        )
        assert_problem(refused, 422, "provider_incomplete")
        gone = await client.delete(
            f"{item(provider.id)}/certificates/{old['thumbprint_sha256']}", headers=admin
        )
        assert gone.status_code == 204
        events = await client.get(
            "/api/v1/audit-events", params={"type": "provider.updated"}, headers=admin
        )
        changes = [
            (e["details"].get("certificate"), e["details"].get("thumbprint_sha256"))
            for e in events.json()["items"]
            if "certificate" in (e["details"] or {})
        ]
        assert changes == [
            ("deleted", old["thumbprint_sha256"]),
            ("created", new["thumbprint_sha256"]),
            ("created", old["thumbprint_sha256"]),
        ]

    async def test_a_certificate_the_provider_does_not_know_fails_and_says_so(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        entra: FakeEntra,
        context: AppContext,
    ) -> None:
        provider, _ = await self._enabled(client, admin, factory, tenant, entra)
        entra.certificates.clear()  # deleted in Entra, or never uploaded
        response = await self._sign_in(client, factory, tenant, provider, entra)
        assert response.headers["location"].endswith("error=token_exchange_failed")
        test = await client.post(f"{item(provider.id)}/test", headers=admin)
        credentials = test.json()["checks"][2]
        assert (credentials["ok"], credentials["code"]) == (False, "invalid_client")

    async def test_the_connection_test_uses_the_certificate(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        entra: FakeEntra,
    ) -> None:
        provider, body = await self._enabled(client, admin, factory, tenant, entra)
        test = await client.post(f"{item(provider.id)}/test", headers=admin)
        assert test.json()["ok"] is True, test.json()
        assert entra.assertions[-1]["header"]["kid"] == body["thumbprint_sha256"]

    async def test_back_to_the_secret(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        entra: FakeEntra,
    ) -> None:
        provider, _ = await self._enabled(client, admin, factory, tenant, entra)
        refused = await client.patch(
            item(provider.id), json={"client_auth_method": "client_secret"}, headers=admin
        )
        assert_problem(refused, 422, "provider_incomplete")
        switched = await client.patch(
            item(provider.id),
            json={"client_auth_method": "client_secret", "client_secret": CLIENT_SECRET},
            headers=admin,
        )
        assert switched.status_code == 200, switched.text
        login_code(await self._sign_in(client, factory, tenant, provider, entra))
        assert "client_secret" in entra.token_requests[-1]
