"""Provider health ahead of time (README, *Keeping SSO healthy*): a provider whose client
secret expires soon, or has expired, says so in ``warnings``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from sso_broker.config import Settings
from sso_broker.database import session_scope, utcnow
from sso_broker.deps import AppContext
from sso_broker.models import SSOProvider
from sso_broker.providers import certificates
from sso_broker.providers.warnings import SECRET_EXPIRED, SECRET_EXPIRING, secret_warnings
from tests.conftest import Database, Factory, Tenant, make_settings
from tests.providers.helpers import CLIENT_ID, SECRET, item


def _provider(*, secret: bool = True, expires_in: timedelta | None) -> SSOProvider:
    now = utcnow()
    return SSOProvider(
        client_secret_encrypted="sealed" if secret else None,
        client_secret_expires_at=None if expires_in is None else now + expires_in,
    )


class TestSecretWarnings:
    @pytest.mark.parametrize(
        ("expires_in", "codes"),
        [
            (None, []),  # no expiry known
            (timedelta(days=31), []),
            (timedelta(days=30, seconds=-60), [SECRET_EXPIRING]),
            (timedelta(days=1), [SECRET_EXPIRING]),
            (timedelta(minutes=5), [SECRET_EXPIRING]),
            (timedelta(seconds=-1), [SECRET_EXPIRED]),
            (timedelta(days=-400), [SECRET_EXPIRED]),
        ],
    )
    def test_by_how_far_off_the_expiry_is(
        self, expires_in: timedelta | None, codes: list[str]
    ) -> None:
        provider = _provider(expires_in=expires_in)
        found = secret_warnings(provider, now=utcnow(), days=30)
        assert [w.code for w in found] == codes
        for warning in found:
            assert "client_secret" in warning.message  # says what to paste
            assert "UTC" in warning.message  # and when

    def test_says_how_many_days_are_left(self) -> None:
        now = utcnow()
        provider = _provider(expires_in=timedelta(days=12, hours=3))
        (warning,) = secret_warnings(provider, now=now, days=30)
        assert "in 12 days" in warning.message
        provider = _provider(expires_in=timedelta(hours=3))
        (warning,) = secret_warnings(provider, now=now, days=30)
        assert "within a day" in warning.message

    def test_no_secret_no_warning(self) -> None:
        provider = _provider(secret=False, expires_in=timedelta(days=-1))
        assert secret_warnings(provider, now=utcnow(), days=30) == []

    def test_zero_days_warns_only_once_expired(self) -> None:
        assert secret_warnings(_provider(expires_in=timedelta(hours=1)), now=utcnow(), days=0) == []
        expired = secret_warnings(_provider(expires_in=timedelta(hours=-1)), now=utcnow(), days=0)
        assert [w.code for w in expired] == [SECRET_EXPIRED]


async def _patch(
    client: httpx.AsyncClient, admin: dict[str, str], provider: SSOProvider, **body: Any
) -> dict[str, Any]:
    response = await client.patch(item(provider.id), json=body, headers=admin)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


class TestTheProvidersWarnings:
    async def test_follow_the_secrets_expiry(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        provider: SSOProvider,
    ) -> None:
        assert (await client.get(item(provider.id), headers=admin)).json()["warnings"] == []
        soon = (utcnow() + timedelta(days=10)).isoformat()
        body = await _patch(
            client, admin, provider,
            client_id=CLIENT_ID, client_secret=SECRET, client_secret_expires_at=soon,
        )  # fmt: skip
        assert [w["code"] for w in body["warnings"]] == [SECRET_EXPIRING]
        assert SECRET not in str(body["warnings"])
        listed = await client.get("/api/v1/sso-providers", headers=admin)
        assert [w["code"] for w in listed.json()["items"][0]["warnings"]] == [SECRET_EXPIRING]

        past = (utcnow() - timedelta(days=1)).isoformat()
        body = await _patch(client, admin, provider, client_secret_expires_at=past)
        assert [w["code"] for w in body["warnings"]] == [SECRET_EXPIRED]

        # A new secret without its expiry: the old expiry says nothing of it.
        body = await _patch(client, admin, provider, client_secret="a-new-secret-value")
        assert body["client_secret_expires_at"] is None
        assert body["warnings"] == []

        later = (utcnow() + timedelta(days=300)).isoformat()
        body = await _patch(client, admin, provider, client_secret_expires_at=later)
        assert body["warnings"] == []


class TestAConfiguredWindow:
    @pytest.fixture
    def settings(self, database: Database) -> Settings:
        return make_settings(database.url, secret_expiry_warning_days=90)

    async def test_warns_from_that_many_days_before(
        self, client: httpx.AsyncClient, factory: Factory, tenant: Tenant, admin: dict[str, str]
    ) -> None:
        provider = await factory.provider(
            tenant.company,
            client_id=CLIENT_ID,
            client_secret=SECRET,
            client_secret_expires_at=utcnow() + timedelta(days=60),
        )
        body = (await client.get(item(provider.id), headers=admin)).json()
        assert [w["code"] for w in body["warnings"]] == [SECRET_EXPIRING]


class TestCertificateWarnings:
    async def _with_certificate(
        self, factory: Factory, tenant: Tenant, context: AppContext, *, days: float
    ) -> SSOProvider:
        provider = await factory.provider(tenant.company, client_id=CLIENT_ID, client_secret=SECRET)
        async with session_scope(context.sessionmaker) as session:
            stored = await certificates.create(session, context.box, provider, days=400)
            stored.not_after = utcnow() + timedelta(days=days)
            await session.execute(
                update(SSOProvider)
                .where(SSOProvider.id == provider.id)
                .values(client_auth_method="private_key_jwt")
            )
        return provider

    @pytest.mark.parametrize(
        ("days", "codes"),
        [(100, []), (20, ["certificate_expiring"]), (-1, ["certificate_expired"])],
    )
    async def test_follow_the_longest_lived_certificate(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        context: AppContext,
        days: float,
        codes: list[str],
    ) -> None:
        provider = await self._with_certificate(factory, tenant, context, days=days)
        one = (await client.get(item(provider.id), headers=admin)).json()
        assert [w["code"] for w in one["warnings"]] == codes
        listed = (await client.get("/api/v1/sso-providers", headers=admin)).json()["items"]
        assert [w["code"] for w in listed[0]["warnings"]] == codes
        # A new certificate made in time ends the warning.
        made = await client.post(f"{item(provider.id)}/certificate", headers=admin)
        assert made.status_code == 201
        assert (await client.get(item(provider.id), headers=admin)).json()["warnings"] == []

    async def test_none_while_sign_ins_use_the_secret(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        context: AppContext,
    ) -> None:
        provider = await self._with_certificate(factory, tenant, context, days=-1)
        await client.patch(
            item(provider.id), json={"client_auth_method": "client_secret"}, headers=admin
        )
        assert (await client.get(item(provider.id), headers=admin)).json()["warnings"] == []


async def test_secret_based_providers_cost_the_list_no_certificate_query(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    factory: Factory,
    tenant: Tenant,
    context: AppContext,
) -> None:
    """Only providers that sign in with a certificate have certificate warnings: a list of
    secret-based ones reads no certificates (the admin list's cost, README *Performance*)."""
    from sqlalchemy import event

    await factory.provider(tenant.company, client_id=CLIENT_ID, client_secret=SECRET)
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(str(args[2]))

    engine = context.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        for path in ("/api/v1/sso-providers",):
            assert (await client.get(path, headers=admin)).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert seen, "the list was read"
    assert not [sql for sql in seen if "provider_certificates" in sql]
