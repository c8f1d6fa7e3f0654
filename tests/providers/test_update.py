"""PATCH /api/v1/sso-providers/{id}: every field, the checks on the provider as it would be
afterwards, and what a change never leaks (README, *The admin API in short*)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from sso_broker.deps import AppContext
from sso_broker.models import SSOProvider
from tests.conftest import Factory, Tenant
from tests.problems import assert_problem
from tests.providers.helpers import (
    BASE,
    CLIENT_ID,
    CONSUMER_TENANT,
    LAST_ERROR,
    OTHER_CLIENT_ID,
    OTHER_SECRET,
    OTHER_TENANT_ID,
    PROVIDER_FIELDS,
    SECRET,
    TENANT_ID,
    at,
    capture_everything,
    create,
    item,
    provider_count,
    raw_secret_columns,
    rendered_logs,
    set_last_error,
    stored_or_fail,
)

# -- PATCH ---------------------------------------------------------------------------------


class TestUpdate:
    async def patch(
        self,
        client: httpx.AsyncClient,
        headers: dict[str, str],
        provider_id: uuid.UUID | str,
        body: dict[str, Any],
    ) -> httpx.Response:
        return await client.patch(item(provider_id), json=body, headers=headers)

    async def ok(
        self,
        client: httpx.AsyncClient,
        headers: dict[str, str],
        provider_id: uuid.UUID | str,
        body: dict[str, Any],
    ) -> dict[str, Any]:
        response = await self.patch(client, headers, provider_id, body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        assert set(result) == PROVIDER_FIELDS
        return result

    # name ------------------------------------------------------------------------------

    async def test_update_name(
        self, client: httpx.AsyncClient, provider: SSOProvider, admin: dict[str, str]
    ) -> None:
        body = await self.ok(client, admin, provider.id, {"name": "  Staff sign-in  "})
        assert body["name"] == "Staff sign-in"
        assert body["base_url"] == provider.base_url
        assert body["enabled"] is False
        assert (await client.get(item(provider.id), headers=admin)).json() == body

    async def test_update_changes_updated_at_not_created_at(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        created = await create(client, admin)
        body = await self.ok(client, admin, created["id"], {"name": "Renamed"})
        assert body["created_at"] == created["created_at"]
        assert at(body["updated_at"]) > at(created["updated_at"])

    async def test_empty_update_changes_nothing(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        created = await create(client, admin)
        assert await self.ok(client, admin, created["id"], {}) == created

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param({"name": None}, id="null-name"),
            pytest.param({"base_url": None}, id="null-base-url"),
            pytest.param({"enabled": None}, id="null-enabled"),
            pytest.param({"name": ""}, id="empty-name"),
            pytest.param({"name": "   "}, id="blank-name"),
            pytest.param({"name": 5}, id="number-name"),
            pytest.param({"name": "Contoso\x00staff"}, id="nul-in-name"),
            pytest.param({"base_url": ""}, id="empty-base-url"),
            pytest.param({"base_url": "a" * 252 + ".com"}, id="too-long-base-url"),
            pytest.param({"base_url": 1}, id="number-base-url"),
            pytest.param({"client_id": ""}, id="empty-client-id"),
            pytest.param({"client_id": 1}, id="number-client-id"),
            pytest.param({"client_secret": ""}, id="empty-secret"),
            pytest.param({"client_secret": 12345}, id="number-secret"),
            pytest.param({"client_secret": ["x"]}, id="list-secret"),
            pytest.param({"enabled": "maybe"}, id="string-enabled"),
            pytest.param({"enabled": [True]}, id="list-enabled"),
            pytest.param({"client_secret_expires_at": "soon"}, id="garbage-expiry"),
            pytest.param({"client_secret_expires_at": "2030-06-30T12:00:00"}, id="naive-expiry"),
            pytest.param({"client_secret_expires_at": "2030-06-30"}, id="date-expiry"),
            pytest.param({"type": "entra"}, id="type-is-not-updatable"),
            pytest.param({"unknown": 1}, id="unknown-field"),
            pytest.param({"client_secret_set": True}, id="read-only-field"),
            pytest.param({"client_secret_encrypted": "gAAAA"}, id="column"),
            pytest.param({"company_id": str(uuid.uuid4())}, id="company-id"),
            pytest.param({"id": str(uuid.uuid4())}, id="id"),
            pytest.param({"last_error": None}, id="last-error"),
            pytest.param({"urls": {}}, id="urls"),
        ],
    )
    async def test_update_refuses_invalid_fields_as_validation_error(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        enabled_provider: SSOProvider,
        admin: dict[str, str],
        body: dict[str, Any],
    ) -> None:
        before = (await client.get(item(enabled_provider.id), headers=admin)).json()
        response = await self.patch(client, admin, enabled_provider.id, body)
        problem = assert_problem(response, 422, "validation_error")
        assert problem["errors"]
        assert (await client.get(item(enabled_provider.id), headers=admin)).json() == before
        assert await provider_count(context) == 1

    @pytest.mark.parametrize("field", ["name", "base_url", "enabled"])
    async def test_update_refuses_null_for_a_required_field_and_says_which(
        self,
        client: httpx.AsyncClient,
        provider: SSOProvider,
        admin: dict[str, str],
        field: str,
    ) -> None:
        response = await self.patch(client, admin, provider.id, {field: None})
        problem = assert_problem(response, 422, "validation_error")
        assert any(field in error["msg"] for error in problem["errors"])

    @pytest.mark.parametrize(
        "content",
        [
            pytest.param("not json", id="not-json"),
            pytest.param("[]", id="array"),
            pytest.param(f'{{"client_secret": "{SECRET}", ', id="truncated-with-secret"),
        ],
    )
    async def test_update_refuses_a_body_that_is_not_a_json_object(
        self,
        client: httpx.AsyncClient,
        provider: SSOProvider,
        admin: dict[str, str],
        content: str,
    ) -> None:
        response = await client.patch(
            item(provider.id),
            content=content,
            headers={**admin, "Content-Type": "application/json"},
        )
        assert_problem(response, 422, "validation_error")
        assert SECRET not in response.text

    # base_url --------------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("base_url", "expected"),
        [
            (TENANT_ID, TENANT_ID),
            (TENANT_ID.upper(), TENANT_ID),
            ("fabrikam.onmicrosoft.com", "fabrikam.onmicrosoft.com"),
            (" Fabrikam.com ", "fabrikam.com"),
            (f"https://login.microsoftonline.com/{TENANT_ID}/v2.0", TENANT_ID),
        ],
    )
    async def test_update_base_url(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        provider: SSOProvider,
        admin: dict[str, str],
        base_url: str,
        expected: str,
    ) -> None:
        body = await self.ok(client, admin, provider.id, {"base_url": base_url})
        assert body["base_url"] == expected
        assert (await stored_or_fail(context, provider.id)).base_url == expected

    @pytest.mark.parametrize(
        "base_url",
        ["common", "ORGANIZATIONS", " consumers ", CONSUMER_TENANT, CONSUMER_TENANT.upper()],
    )
    async def test_update_refuses_multi_tenant_endpoints(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        enabled_provider: SSOProvider,
        admin: dict[str, str],
        base_url: str,
    ) -> None:
        response = await self.patch(
            client, admin, enabled_provider.id, {"base_url": base_url, "name": "Changed"}
        )
        assert_problem(response, 422, "unsupported_tenant")
        row = await stored_or_fail(context, enabled_provider.id)
        assert row.base_url == enabled_provider.base_url
        assert row.name == enabled_provider.name

    @pytest.mark.parametrize(
        "base_url",
        [
            f"https://evil.example/{TENANT_ID}/v2.0",
            "contoso",
            "contoso.onmicrosoft.com.",
            "10.0.0.1",
            "   ",
        ],
    )
    async def test_update_refuses_garbage_tenants(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        provider: SSOProvider,
        admin: dict[str, str],
        base_url: str,
    ) -> None:
        response = await self.patch(client, admin, provider.id, {"base_url": base_url})
        assert_problem(response, 422, "invalid_base_url")
        assert (await stored_or_fail(context, provider.id)).base_url == provider.base_url

    # client_id -------------------------------------------------------------------------

    async def test_update_client_id(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        provider: SSOProvider,
        admin: dict[str, str],
    ) -> None:
        body = await self.ok(client, admin, provider.id, {"client_id": f" {CLIENT_ID.upper()} "})
        assert body["client_id"] == CLIENT_ID
        assert body["enabled"] is False
        assert (await stored_or_fail(context, provider.id)).client_id == CLIENT_ID

        cleared = await self.ok(client, admin, provider.id, {"client_id": None})
        assert cleared["client_id"] is None
        assert (await stored_or_fail(context, provider.id)).client_id is None

    @pytest.mark.parametrize(
        "client_id",
        ["my-app", "   ", "{" + CLIENT_ID + "}", CLIENT_ID.replace("-", ""), "api://" + CLIENT_ID],
    )
    async def test_update_refuses_a_client_id_that_is_not_a_guid(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        enabled_provider: SSOProvider,
        admin: dict[str, str],
        client_id: str,
    ) -> None:
        response = await self.patch(client, admin, enabled_provider.id, {"client_id": client_id})
        assert_problem(response, 422, "invalid_client_id")
        assert (await stored_or_fail(context, enabled_provider.id)).client_id == CLIENT_ID

    # client_secret ---------------------------------------------------------------------

    async def test_update_client_secret_is_stored_encrypted(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        provider: SSOProvider,
        admin: dict[str, str],
    ) -> None:
        body = await self.ok(client, admin, provider.id, {"client_secret": SECRET})
        assert body["client_secret_set"] is True
        assert body["enabled"] is False
        assert "client_secret" not in body

        (column,) = await raw_secret_columns(context)
        assert column is not None
        assert SECRET not in column
        assert "s3cr3t" not in column
        assert context.box.decrypt(column) == SECRET

    async def test_update_client_secret_replaces_the_old_one(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        enabled_provider: SSOProvider,
        admin: dict[str, str],
    ) -> None:
        body = await self.ok(client, admin, enabled_provider.id, {"client_secret": OTHER_SECRET})
        assert body["client_secret_set"] is True
        assert body["enabled"] is True
        (column,) = await raw_secret_columns(context)
        assert column is not None
        assert context.box.decrypt(column) == OTHER_SECRET

    async def test_update_strips_space_around_the_secret(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        provider: SSOProvider,
        admin: dict[str, str],
    ) -> None:
        await self.ok(client, admin, provider.id, {"client_secret": f"  {SECRET}\n"})
        (column,) = await raw_secret_columns(context)
        assert column is not None
        assert context.box.decrypt(column) == SECRET

    async def test_update_clears_the_secret_of_a_disabled_provider(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        factory: Factory,
        tenant: Tenant,
        admin: dict[str, str],
    ) -> None:
        disabled = await factory.provider(
            tenant.company, client_id=CLIENT_ID, client_secret=SECRET, enabled=False
        )
        body = await self.ok(client, admin, disabled.id, {"client_secret": None})
        assert body["client_secret_set"] is False
        assert body["client_id"] == CLIENT_ID
        assert await raw_secret_columns(context) == [None]

    @pytest.mark.parametrize(
        "secret", [TENANT_ID, CLIENT_ID.upper(), f"  {OTHER_CLIENT_ID}  "], ids=["a", "b", "c"]
    )
    async def test_update_refuses_a_guid_shaped_secret(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        enabled_provider: SSOProvider,
        admin: dict[str, str],
        secret: str,
    ) -> None:
        response = await self.patch(client, admin, enabled_provider.id, {"client_secret": secret})
        assert_problem(response, 422, "invalid_client_secret")
        assert secret.strip().lower() not in response.text.lower()
        (column,) = await raw_secret_columns(context)
        assert column is not None
        assert context.box.decrypt(column) == SECRET

    async def test_update_refuses_a_blank_secret(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        enabled_provider: SSOProvider,
        admin: dict[str, str],
    ) -> None:
        response = await self.patch(client, admin, enabled_provider.id, {"client_secret": "   "})
        assert_problem(response, 422, "invalid_client_secret")
        (column,) = await raw_secret_columns(context)
        assert column is not None
        assert context.box.decrypt(column) == SECRET

    async def test_update_accepts_a_secret_of_1024_characters(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        provider: SSOProvider,
        admin: dict[str, str],
    ) -> None:
        secret = ("Lo9~" * 256)[:1024]
        body = await self.ok(client, admin, provider.id, {"client_secret": secret})
        assert body["client_secret_set"] is True
        (column,) = await raw_secret_columns(context)
        assert column is not None
        assert context.box.decrypt(column) == secret

    @pytest.mark.parametrize("length", [1025, 4096])
    async def test_update_refuses_an_oversized_secret_without_echoing_it(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        provider: SSOProvider,
        admin: dict[str, str],
        caplog: pytest.LogCaptureFixture,
        length: int,
    ) -> None:
        secret = ("Hg5~" * (length // 4 + 1))[:length]
        capture_everything(caplog)
        response = await self.patch(client, admin, provider.id, {"client_secret": secret})
        assert_problem(response, 422, "validation_error")
        assert "Hg5~Hg5~" not in response.text
        assert not any("Hg5~Hg5~" in line for line in rendered_logs(caplog))
        assert await raw_secret_columns(context) == [None]

    async def test_update_refuses_a_name_over_200_characters_without_echoing_it(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        provider: SSOProvider,
        admin: dict[str, str],
    ) -> None:
        name = ("Zx9-" * 51)[:201]
        response = await self.patch(client, admin, provider.id, {"name": name})
        assert_problem(response, 422, "validation_error")
        assert "Zx9-Zx9-" not in response.text
        assert (await stored_or_fail(context, provider.id)).name == provider.name

    async def test_update_never_echoes_or_logs_the_secret(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        provider: SSOProvider,
        admin: dict[str, str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        capture_everything(caplog)
        response = await self.patch(
            client,
            admin,
            provider.id,
            {"client_id": CLIENT_ID, "client_secret": SECRET, "enabled": True},
        )
        assert response.status_code == 200, response.text
        assert SECRET not in response.text
        assert "s3cr3t" not in response.text
        assert "Qz7~" not in json.dumps(dict(response.headers))

        lines = rendered_logs(caplog)
        # The capture is real: the UPDATE itself was logged, with its parameters.
        assert any("UPDATE sso_providers" in line for line in lines), lines
        assert not any(SECRET in line for line in lines)
        assert SECRET not in caplog.text

        for url in (BASE, item(provider.id)):
            read = await client.get(url, headers=admin)
            assert read.status_code == 200
            assert SECRET not in read.text
        assert not any(SECRET in line for line in rendered_logs(caplog))

    async def test_refused_updates_never_echo_or_log_the_secret(
        self,
        client: httpx.AsyncClient,
        provider: SSOProvider,
        admin: dict[str, str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        capture_everything(caplog)
        refusals = [
            ({"client_secret": SECRET, "enabled": True}, "provider_incomplete"),
            ({"client_secret": SECRET, "client_id": "bad"}, "invalid_client_id"),
            ({"client_secret": SECRET, "base_url": "common"}, "unsupported_tenant"),
            ({"client_secret": SECRET, "base_url": "x/y"}, "invalid_base_url"),
            ({"client_secret": SECRET, "name": None}, "validation_error"),
            ({"client_secret": SECRET, "surprise": 1}, "validation_error"),
        ]
        for body, code in refusals:
            response = await self.patch(client, admin, provider.id, body)
            assert_problem(response, 422, code)
            assert SECRET not in response.text
        assert not any(SECRET in line for line in rendered_logs(caplog))

    # client_secret_expires_at ----------------------------------------------------------

    async def test_update_client_secret_expiry_keeps_the_instant(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        provider: SSOProvider,
        admin: dict[str, str],
    ) -> None:
        body = await self.ok(
            client, admin, provider.id, {"client_secret_expires_at": "2030-06-30T12:00:00+02:00"}
        )
        expected = datetime(2030, 6, 30, 10, 0, tzinfo=UTC)
        assert at(body["client_secret_expires_at"]) == expected
        assert (await stored_or_fail(context, provider.id)).client_secret_expires_at == expected
        read = (await client.get(item(provider.id), headers=admin)).json()
        assert at(read["client_secret_expires_at"]) == expected

        cleared = await self.ok(client, admin, provider.id, {"client_secret_expires_at": None})
        assert cleared["client_secret_expires_at"] is None
        assert (await stored_or_fail(context, provider.id)).client_secret_expires_at is None

    async def test_a_new_secret_without_expiry_clears_the_old_expiry(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        provider: SSOProvider,
        admin: dict[str, str],
    ) -> None:
        both = {"client_secret": SECRET, "client_secret_expires_at": "2030-06-30T12:00:00Z"}
        body = await self.ok(client, admin, provider.id, both)
        assert body["client_secret_expires_at"] is not None
        renamed = await self.ok(client, admin, provider.id, {"name": "Renamed"})
        assert renamed["client_secret_expires_at"] is not None
        replaced = await self.ok(client, admin, provider.id, {"client_secret": SECRET + "-new"})
        assert replaced["client_secret_expires_at"] is None
        assert (await stored_or_fail(context, provider.id)).client_secret_expires_at is None

    async def test_update_refuses_an_expiry_without_timezone(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        provider: SSOProvider,
        admin: dict[str, str],
    ) -> None:
        response = await self.patch(
            client, admin, provider.id, {"client_secret_expires_at": "2030-06-30T12:00:00"}
        )
        assert_problem(response, 422, "validation_error")
        assert (await stored_or_fail(context, provider.id)).client_secret_expires_at is None

    # enabled ---------------------------------------------------------------------------

    async def test_update_sets_credentials_and_enables_in_one_request(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        provider: SSOProvider,
        admin: dict[str, str],
    ) -> None:
        body = await self.ok(
            client,
            admin,
            provider.id,
            {"client_id": CLIENT_ID, "client_secret": SECRET, "enabled": True},
        )
        assert body["enabled"] is True
        assert body["client_id"] == CLIENT_ID
        assert body["client_secret_set"] is True
        row = await stored_or_fail(context, provider.id)
        assert row.enabled is True
        assert row.client_secret_encrypted is not None
        assert context.box.decrypt(row.client_secret_encrypted) == SECRET

    async def test_update_enables_after_credentials_were_set_separately(
        self, client: httpx.AsyncClient, provider: SSOProvider, admin: dict[str, str]
    ) -> None:
        await self.ok(client, admin, provider.id, {"client_id": CLIENT_ID})
        await self.ok(client, admin, provider.id, {"client_secret": SECRET})
        body = await self.ok(client, admin, provider.id, {"enabled": True})
        assert body["enabled"] is True

    async def test_update_disables(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        enabled_provider: SSOProvider,
        admin: dict[str, str],
    ) -> None:
        body = await self.ok(client, admin, enabled_provider.id, {"enabled": False})
        assert body["enabled"] is False
        assert body["client_secret_set"] is True
        assert (await stored_or_fail(context, enabled_provider.id)).enabled is False

    @pytest.mark.parametrize(
        ("client_id", "client_secret", "body", "missing"),
        [
            pytest.param(None, None, {"enabled": True}, ["client_id", "client_secret"], id="none"),
            pytest.param(CLIENT_ID, None, {"enabled": True}, ["client_secret"], id="id-only"),
            pytest.param(None, SECRET, {"enabled": True}, ["client_id"], id="secret-only"),
            pytest.param(
                None,
                None,
                {"client_id": CLIENT_ID, "enabled": True},
                ["client_secret"],
                id="sending-id-only",
            ),
            pytest.param(
                None,
                None,
                {"client_secret": SECRET, "enabled": True},
                ["client_id"],
                id="sending-secret-only",
            ),
            pytest.param(
                CLIENT_ID,
                SECRET,
                {"client_id": None, "enabled": True},
                ["client_id"],
                id="enabling-while-clearing-id",
            ),
            pytest.param(
                CLIENT_ID,
                SECRET,
                {"client_secret": None, "enabled": True},
                ["client_secret"],
                id="enabling-while-clearing-secret",
            ),
        ],
    )
    async def test_update_refuses_enabling_an_incomplete_provider(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        factory: Factory,
        tenant: Tenant,
        admin: dict[str, str],
        client_id: str | None,
        client_secret: str | None,
        body: dict[str, Any],
        missing: list[str],
    ) -> None:
        provider = await factory.provider(
            tenant.company, client_id=client_id, client_secret=client_secret
        )
        response = await self.patch(client, admin, provider.id, {**body, "name": "Changed"})
        problem = assert_problem(response, 422, "provider_incomplete")
        for field in missing:
            assert field in problem["detail"]
        for field in {"client_id", "client_secret"} - set(missing):
            assert field not in problem["detail"]
        assert SECRET not in response.text

        # Nothing of the refused request was kept.
        row = await stored_or_fail(context, provider.id)
        assert row.enabled is False
        assert row.name == provider.name
        assert row.client_id == client_id
        assert (row.client_secret_encrypted is None) == (client_secret is None)

    @pytest.mark.parametrize(
        ("body", "missing"),
        [
            ({"client_secret": None}, "client_secret"),
            ({"client_id": None}, "client_id"),
            ({"client_secret": None, "enabled": True}, "client_secret"),
        ],
    )
    async def test_update_refuses_removing_a_credential_of_an_enabled_provider(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        enabled_provider: SSOProvider,
        admin: dict[str, str],
        body: dict[str, Any],
        missing: str,
    ) -> None:
        response = await self.patch(client, admin, enabled_provider.id, body)
        problem = assert_problem(response, 422, "provider_incomplete")
        assert missing in problem["detail"]
        row = await stored_or_fail(context, enabled_provider.id)
        assert row.enabled is True
        assert row.client_id == CLIENT_ID
        assert row.client_secret_encrypted is not None
        assert context.box.decrypt(row.client_secret_encrypted) == SECRET

    async def test_update_disables_and_clears_credentials_in_one_request(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        enabled_provider: SSOProvider,
        admin: dict[str, str],
    ) -> None:
        body = await self.ok(
            client,
            admin,
            enabled_provider.id,
            {"enabled": False, "client_id": None, "client_secret": None},
        )
        assert body["enabled"] is False
        assert body["client_id"] is None
        assert body["client_secret_set"] is False
        assert await raw_secret_columns(context) == [None]

    # last_error ------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "change",
        [
            pytest.param({"client_secret": OTHER_SECRET}, id="secret"),
            pytest.param({"client_id": OTHER_CLIENT_ID}, id="client-id"),
            pytest.param({"base_url": OTHER_TENANT_ID}, id="base-url"),
            pytest.param(
                {"client_id": OTHER_CLIENT_ID, "client_secret": OTHER_SECRET, "enabled": True},
                id="dashboard-save",
            ),
        ],
    )
    async def test_update_of_credentials_clears_last_error(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        enabled_provider: SSOProvider,
        admin: dict[str, str],
        change: dict[str, Any],
    ) -> None:
        await set_last_error(context, enabled_provider.id)
        before = (await client.get(item(enabled_provider.id), headers=admin)).json()
        assert before["last_error"]["code"] == LAST_ERROR["code"]

        body = await self.ok(client, admin, enabled_provider.id, change)
        assert body["last_error"] is None
        assert (await stored_or_fail(context, enabled_provider.id)).last_error is None
        # SQL's NULL, not JSON's null: the sign-in's own statements test the column with
        # IS NULL (fastpath.py), and a JSON null made the next sign-in clear it again.
        async with context.sessionmaker() as session:
            cleared = await session.scalar(
                text("SELECT last_error IS NULL FROM sso_providers WHERE id = :id"),
                {"id": enabled_provider.id if context.engine.dialect.name == "postgresql"
                 else enabled_provider.id.hex},
            )  # fmt: skip
        assert cleared

    @pytest.mark.parametrize(
        "change",
        [
            pytest.param({"name": "Renamed"}, id="name"),
            pytest.param({"client_secret_expires_at": "2031-01-01T00:00:00Z"}, id="expiry"),
            pytest.param({"enabled": False}, id="disable"),
            pytest.param({}, id="nothing"),
        ],
    )
    async def test_update_of_other_fields_keeps_last_error(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        enabled_provider: SSOProvider,
        admin: dict[str, str],
        change: dict[str, Any],
    ) -> None:
        await set_last_error(context, enabled_provider.id)
        body = await self.ok(client, admin, enabled_provider.id, change)
        assert body["last_error"] is not None
        assert body["last_error"]["message"] == LAST_ERROR["message"]
        assert (await stored_or_fail(context, enabled_provider.id)).last_error == LAST_ERROR

    async def test_refused_credential_update_keeps_last_error(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        enabled_provider: SSOProvider,
        admin: dict[str, str],
    ) -> None:
        await set_last_error(context, enabled_provider.id)
        response = await self.patch(
            client, admin, enabled_provider.id, {"client_secret": OTHER_SECRET, "client_id": None}
        )
        assert_problem(response, 422, "provider_incomplete")
        assert (await stored_or_fail(context, enabled_provider.id)).last_error == LAST_ERROR

    # missing / foreign -----------------------------------------------------------------

    async def test_update_unknown_id_is_404_not_found(
        self, client: httpx.AsyncClient, provider: SSOProvider, admin: dict[str, str]
    ) -> None:
        response = await self.patch(client, admin, uuid.uuid4(), {"name": "X"})
        assert_problem(response, 404, "not_found")

    @pytest.mark.parametrize(
        "bad_id", ["not-a-uuid", "123", "00000000-0000-0000-0000-00000000000g"]
    )
    async def test_update_malformed_id_is_422(
        self, client: httpx.AsyncClient, admin: dict[str, str], bad_id: str
    ) -> None:
        response = await self.patch(client, admin, bad_id, {"name": "X"})
        assert_problem(response, 422, "validation_error")

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param({"name": "Hijacked"}, id="name"),
            pytest.param({"base_url": OTHER_TENANT_ID}, id="tenant"),
            pytest.param({"client_id": OTHER_CLIENT_ID, "client_secret": OTHER_SECRET}, id="creds"),
            pytest.param({"enabled": False}, id="disable"),
            pytest.param({"client_secret": None}, id="would-be-incomplete"),
            pytest.param({"client_id": "bad"}, id="would-be-invalid"),
        ],
    )
    async def test_update_of_another_companys_provider_is_404_and_changes_nothing(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        enabled_provider: SSOProvider,
        admin: dict[str, str],
        other_admin: dict[str, str],
        body: dict[str, Any],
    ) -> None:
        await set_last_error(context, enabled_provider.id)
        before = (await client.get(item(enabled_provider.id), headers=admin)).json()

        response = await self.patch(client, other_admin, enabled_provider.id, body)
        problem = assert_problem(response, 404, "not_found")
        unknown = await self.patch(client, other_admin, uuid.uuid4(), body)
        assert problem == unknown.json()

        assert (await client.get(item(enabled_provider.id), headers=admin)).json() == before
        row = await stored_or_fail(context, enabled_provider.id)
        assert row.client_secret_encrypted is not None
        assert context.box.decrypt(row.client_secret_encrypted) == SECRET
