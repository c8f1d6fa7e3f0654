"""``POST /api/v1/sso-providers/{id}/test`` (README, *Keeping SSO healthy*): metadata, signing
keys and client credentials checked against the live provider (the fake Entra tenant), each
with a verdict an administrator can act on; a failure sets ``last_error``, a pass clears it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from sso_broker.config import Settings
from sso_broker.deps import AppContext
from sso_broker.models import SSOProvider
from sso_broker.providers import connection
from sso_broker.users.models import Role
from tests.conftest import Database, Factory, Tenant, clear_of_a_window_edge, make_settings
from tests.fixtures.entra import CLIENT_ID, CLIENT_SECRET, TENANT_ID, FakeEntra, error_body
from tests.problems import assert_problem
from tests.providers.helpers import item, set_last_error, stored_or_fail

CHECKS = ["metadata", "signing_keys", "client_credentials"]


async def entra_provider(factory: Factory, tenant: Tenant, **overrides: Any) -> SSOProvider:
    values: dict[str, Any] = {
        "base_url": TENANT_ID,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "enabled": False,  # test before you enable
    }
    values.update(overrides)
    return await factory.provider(tenant.company, **values)


async def run_test(
    client: httpx.AsyncClient, admin: dict[str, str], provider: SSOProvider
) -> dict[str, Any]:
    response = await client.post(f"{item(provider.id)}/test", headers=admin)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert [check["name"] for check in body["checks"]] == CHECKS
    assert body["ok"] == all(check["ok"] for check in body["checks"])
    for check in body["checks"]:
        assert set(check) == {"name", "ok", "code", "detail"}
        assert check["detail"]
        assert CLIENT_SECRET not in check["detail"]
    return body


def codes(body: dict[str, Any]) -> list[str]:
    return [check["code"] for check in body["checks"]]


class TestAHealthyProvider:
    async def test_passes_every_check_and_clears_last_error(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        entra: FakeEntra,
        context: AppContext,
    ) -> None:
        provider = await entra_provider(factory, tenant)
        await set_last_error(context, provider.id)
        body = await run_test(client, admin, provider)
        assert body["ok"] is True
        assert codes(body) == ["ok", "ok", "ok"]
        assert entra.issuer in body["checks"][0]["detail"]
        assert "accepted the client ID and secret" in body["checks"][2]["detail"]
        assert (await stored_or_fail(context, provider.id)).last_error is None
        # The credentials were proven with a client_credentials request for the app itself.
        (request,) = entra.token_requests
        assert request["grant_type"] == "client_credentials"
        assert request["scope"] == f"{CLIENT_ID}/.default"
        assert "code" not in request

    async def test_asks_the_live_provider_not_the_cache(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        entra: FakeEntra,
    ) -> None:
        provider = await entra_provider(factory, tenant)
        await run_test(client, admin, provider)
        await run_test(client, admin, provider)
        assert entra.discovery_calls == 2
        assert entra.jwks_calls == 2


class TestTheCredentials:
    @pytest.mark.parametrize(
        ("fault", "code", "provider_code"),
        [
            ("secret", "invalid_client_secret", "AADSTS7000215"),
            ("expired", "client_secret_expired", "AADSTS7000222"),
            # Entra sends AADSTS700016 as unauthorized_client: the code decides.
            ("client_id", "unknown_client_id", "AADSTS700016"),
        ],
    )
    async def test_entras_refusals_fail_with_what_to_fix(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        entra: FakeEntra,
        context: AppContext,
        fault: str,
        code: str,
        provider_code: str,
    ) -> None:
        overrides: dict[str, Any] = {}
        if fault == "secret":
            overrides["client_secret"] = "not-the-secret-value"
        elif fault == "client_id":
            overrides["client_id"] = "0b7c1f6e-9d1a-4e55-8a33-1f2e3d4c5b6a"
        else:
            entra.client_secret_expired = True
        provider = await entra_provider(factory, tenant, **overrides)
        body = await run_test(client, admin, provider)
        assert body["ok"] is False
        assert codes(body) == ["ok", "ok", code]
        assert provider_code in body["checks"][2]["detail"]
        stored = await stored_or_fail(context, provider.id)
        assert stored.last_error is not None
        assert stored.last_error["code"] == code
        assert provider_code in stored.last_error["message"]

    async def test_missing_credentials_say_what_to_paste(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        entra: FakeEntra,
    ) -> None:
        provider = await entra_provider(factory, tenant, client_id=None, client_secret=None)
        body = await run_test(client, admin, provider)
        assert codes(body) == ["ok", "ok", "credentials_missing"]
        assert "client_secret" in body["checks"][2]["detail"]
        assert entra.token_calls == 0

    @pytest.mark.parametrize(
        ("answer", "ok", "code"),
        [
            # After client authentication: the credentials are good, the grant is not allowed.
            ((400, {"error": "unauthorized_client"}), True, "ok"),
            ((400, {"error": "invalid_scope"}), True, "ok"),
            # Refused before the credentials were looked at: nothing proven either way.
            ((400, {"error": "unsupported_grant_type"}), True, "not_verified"),
            ((400, {"error": "invalid_request"}), True, "not_verified"),
            # Wrong credentials, as any OAuth server says it: any 401 (Keycloak says
            # unauthorized_client, Auth0 access_denied).
            ((401, {"error": "invalid_client"}), False, "invalid_client"),
            ((401, {}), False, "invalid_client"),
            ((401, {"error": "unauthorized_client"}), False, "invalid_client"),
            (
                (401, {"error": "access_denied", "error_description": "Unauthorized"}),
                False,
                "invalid_client",
            ),
            # A 200 that carries no token is no proof.
            ((200, {}), False, "token_endpoint_unavailable"),
            # The endpoint itself is broken: sign-ins would fail too.
            ((503, {"error": "temporarily_unavailable"}), False, "token_endpoint_unavailable"),
        ],
    )
    async def test_other_answers_as_rfc_6749_reads_them(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        entra: FakeEntra,
        answer: tuple[int, dict[str, Any]],
        ok: bool,
        code: str,
    ) -> None:
        entra.token_error = answer
        provider = await entra_provider(factory, tenant)
        body = await run_test(client, admin, provider)
        assert body["checks"][2]["ok"] is ok
        assert body["checks"][2]["code"] == code
        assert body["ok"] is ok

    async def test_a_test_that_proves_nothing_leaves_last_error(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        entra: FakeEntra,
        context: AppContext,
    ) -> None:
        provider = await entra_provider(factory, tenant)
        await set_last_error(context, provider.id)
        entra.token_error = (400, {"error": "unsupported_grant_type"})
        body = await run_test(client, admin, provider)
        assert codes(body) == ["ok", "ok", "not_verified"]
        assert (await stored_or_fail(context, provider.id)).last_error is not None

    async def test_a_hostile_providers_words_are_cut_short(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        entra: FakeEntra,
    ) -> None:
        entra.token_error = (400, {"error": "x" * 10_000})
        body = await run_test(client, admin, await entra_provider(factory, tenant))
        assert body["checks"][2]["code"] == "not_verified"
        assert len(body["checks"][2]["detail"]) < 300

    async def test_a_plain_openid_provider_is_judged_by_rfc_6749_alone(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        entra: FakeEntra,
    ) -> None:
        provider = await entra_provider(factory, tenant, type="oidc", base_url=entra.issuer)
        body = await run_test(client, admin, provider)
        # No Entra scope for other types: the fake answers invalid_scope, after it has
        # authenticated the client.
        assert codes(body) == ["ok", "ok", "ok"]
        assert "scope" not in entra.token_requests[0]
        entra.token_error = (401, error_body("invalid_client", 7000215, "Invalid client secret"))
        body = await run_test(client, admin, provider)
        assert codes(body) == ["ok", "ok", "invalid_client"]
        assert "AADSTS" not in body["checks"][2]["detail"]


class TestTheMetadataAndKeys:
    async def test_an_unknown_tenant_fails_and_skips_the_rest(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        entra: FakeEntra,
        context: AppContext,
    ) -> None:
        provider = await entra_provider(
            factory, tenant, base_url="0d2e1c3b-5a4f-4e6d-8c7b-1a2b3c4d5e6f"
        )
        body = await run_test(client, admin, provider)
        assert body["ok"] is False
        assert codes(body) == ["tenant_not_found", "skipped", "skipped"]
        assert "AADSTS90002" in body["checks"][0]["detail"]
        assert entra.token_calls == 0
        stored = await stored_or_fail(context, provider.id)
        assert stored.last_error is not None
        assert stored.last_error["code"] == "tenant_not_found"

    async def test_a_key_set_without_rsa_keys_fails(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        entra: FakeEntra,
    ) -> None:
        entra.jwks_response_override = httpx.Response(
            200, json={"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}
        )
        provider = await entra_provider(factory, tenant)
        body = await run_test(client, admin, provider)
        assert codes(body) == ["ok", "signing_keys_unavailable", "ok"]
        assert body["ok"] is False


async def test_a_silent_provider_fails_within_the_deadline(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    factory: Factory,
    tenant: Tenant,
    context: AppContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = await entra_provider(factory, tenant)

    async def hang(*_args: Any, **_kwargs: Any) -> Any:
        await asyncio.sleep(3600)

    monkeypatch.setattr(context.http, "fetch", hang)
    monkeypatch.setattr(connection, "overall_deadline", lambda _http: 0.1)
    started = asyncio.get_running_loop().time()
    body = await run_test(client, admin, provider)
    assert asyncio.get_running_loop().time() - started < 2
    assert codes(body) == ["timeout", "skipped", "skipped"]


class TestWhoMayTest:
    @pytest.mark.parametrize("role", [Role.MANAGER, Role.USER, Role.READ_ONLY])
    async def test_administrators_only(
        self, client: httpx.AsyncClient, factory: Factory, tenant: Tenant, role: Role
    ) -> None:
        provider = await entra_provider(factory, tenant)
        response = await client.post(f"{item(provider.id)}/test", headers=tenant.headers[role])
        assert_problem(response, 403, "forbidden")

    async def test_another_companys_provider_is_not_found(
        self,
        client: httpx.AsyncClient,
        other_admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        entra: FakeEntra,
    ) -> None:
        provider = await entra_provider(factory, tenant)
        response = await client.post(f"{item(provider.id)}/test", headers=other_admin)
        assert_problem(response, 404, "not_found")
        assert entra.discovery_calls == 0


class TestTheRateLimit:
    @pytest.fixture
    def settings(self, database: Database) -> Settings:
        return make_settings(database.url, rate_limit_enabled=True)

    @pytest.fixture(autouse=True)
    async def _one_window(self) -> None:
        # The tests below must each fall in one window (a run of the suite failed when not).
        await clear_of_a_window_edge()

    async def test_six_tests_a_minute_per_provider(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        entra: FakeEntra,
    ) -> None:
        provider = await entra_provider(factory, tenant)
        for _ in range(connection.TESTS_PER_MINUTE):
            await run_test(client, admin, provider)
        refused = await client.post(f"{item(provider.id)}/test", headers=admin)
        assert_problem(refused, 429, "rate_limited")
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        another = await entra_provider(factory, tenant)
        await run_test(client, admin, another)

    async def test_thirty_tests_a_minute_per_company(
        self,
        client: httpx.AsyncClient,
        admin: dict[str, str],
        factory: Factory,
        tenant: Tenant,
        other_admin: dict[str, str],
        other_tenant: Tenant,
        entra: FakeEntra,
    ) -> None:
        """Many providers, or one deleted and made again, do not multiply the limit."""
        per_provider = connection.TESTS_PER_MINUTE
        for _ in range(connection.COMPANY_TESTS_PER_MINUTE // per_provider):
            provider = await entra_provider(factory, tenant)
            for _ in range(per_provider):
                await run_test(client, admin, provider)
        fresh = await entra_provider(factory, tenant)
        refused = await client.post(f"{item(fresh.id)}/test", headers=admin)
        assert_problem(refused, 429, "rate_limited")
        elsewhere = await entra_provider(factory, other_tenant)
        await run_test(client, other_admin, elsewhere)
