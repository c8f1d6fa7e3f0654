"""The SSO provider admin API: /api/v1/sso-providers (README, *The admin API in short*):
authentication and roles, create, list, read, delete, and companies kept apart. Changing a
provider is ``test_update.py``."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from sso_broker.database import session_scope
from sso_broker.deps import AppContext
from sso_broker.models import SSOProvider, User
from sso_broker.users.models import Role
from tests.conftest import Factory, Tenant
from tests.problems import assert_problem
from tests.providers.helpers import (
    BASE,
    CLIENT_ID,
    CONSUMER_TENANT,
    DEFAULT_NAME,
    LAST_ERROR,
    NON_ADMIN_ROLES,
    OTHER_TENANT_ID,
    PROVIDER_FIELDS,
    SECRET,
    TENANT_ID,
    assert_untouched,
    at,
    create,
    item,
    provider_count,
    raw_secret_columns,
    set_last_error,
    stored,
    stored_or_fail,
    urls_of,
)

# -- authentication and roles, on every route ---------------------------------------------

ROUTES = [
    pytest.param("GET", False, None, id="list"),
    pytest.param("POST", False, {"type": "entra", "base_url": TENANT_ID}, id="create"),
    pytest.param("GET", True, None, id="get"),
    pytest.param("PATCH", True, {"name": "Hijacked", "base_url": OTHER_TENANT_ID}, id="update"),
    pytest.param("DELETE", True, None, id="delete"),
]


async def call(
    client: httpx.AsyncClient,
    method: str,
    on_item: bool,
    body: dict[str, Any] | None,
    provider_id: uuid.UUID,
    headers: dict[str, str],
) -> httpx.Response:
    url = item(provider_id) if on_item else BASE
    return await client.request(method, url, json=body, headers=headers)


class TestAuthentication:
    @pytest.mark.parametrize(("method", "on_item", "body"), ROUTES)
    async def test_no_token_is_401_not_authenticated(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        provider: SSOProvider,
        method: str,
        on_item: bool,
        body: dict[str, Any] | None,
    ) -> None:
        response = await call(client, method, on_item, body, provider.id, {})
        assert_problem(response, 401, "not_authenticated")
        assert response.headers["www-authenticate"] == "Bearer"
        await assert_untouched(context, provider)

    @pytest.mark.parametrize(
        "authorization",
        [
            pytest.param("Bearer", id="bearer-without-token"),
            pytest.param("Bearer ", id="bearer-empty"),
            pytest.param("Basic dXNlcjpwYXNz", id="basic"),
            pytest.param("garbage", id="no-scheme"),
        ],
    )
    @pytest.mark.parametrize(("method", "on_item", "body"), ROUTES)
    async def test_no_bearer_token_is_401_not_authenticated(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        provider: SSOProvider,
        method: str,
        on_item: bool,
        body: dict[str, Any] | None,
        authorization: str,
    ) -> None:
        headers = {"Authorization": authorization}
        response = await call(client, method, on_item, body, provider.id, headers)
        assert_problem(response, 401, "not_authenticated")
        await assert_untouched(context, provider)

    @pytest.mark.parametrize(
        "token",
        [
            pytest.param("garbage", id="garbage"),
            pytest.param("a.b.c", id="jwt-shaped"),
            pytest.param("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.", id="alg-none"),
            pytest.param("x" * 5000, id="too-long"),
        ],
    )
    @pytest.mark.parametrize(("method", "on_item", "body"), ROUTES)
    async def test_bad_token_is_401_invalid_token(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        provider: SSOProvider,
        method: str,
        on_item: bool,
        body: dict[str, Any] | None,
        token: str,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        response = await call(client, method, on_item, body, provider.id, headers)
        assert_problem(response, 401, "invalid_token")
        assert response.headers["www-authenticate"] == "Bearer"
        await assert_untouched(context, provider)

    async def test_anonymous_invalid_body_is_401_not_422(
        self, client: httpx.AsyncClient, context: AppContext
    ) -> None:
        response = await client.post(BASE, json={"type": "okta", "base_url": "common"})
        assert_problem(response, 401, "not_authenticated")
        assert await provider_count(context) == 0


class TestAuthorization:
    @pytest.mark.parametrize("role", NON_ADMIN_ROLES)
    @pytest.mark.parametrize(("method", "on_item", "body"), ROUTES)
    async def test_non_administrator_is_403_forbidden(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        tenant: Tenant,
        provider: SSOProvider,
        role: Role,
        method: str,
        on_item: bool,
        body: dict[str, Any] | None,
    ) -> None:
        response = await call(client, method, on_item, body, provider.id, tenant.headers[role])
        assert_problem(response, 403, "forbidden")
        assert str(provider.id) not in response.text
        await assert_untouched(context, provider)

    @pytest.mark.parametrize("role", NON_ADMIN_ROLES)
    async def test_non_administrator_is_403_even_for_an_unknown_id_or_bad_body(
        self, client: httpx.AsyncClient, context: AppContext, tenant: Tenant, role: Role
    ) -> None:
        headers = tenant.headers[role]
        unknown = item(uuid.uuid4())
        assert_problem(await client.get(unknown, headers=headers), 403, "forbidden")
        assert_problem(await client.delete(unknown, headers=headers), 403, "forbidden")
        assert_problem(
            await client.patch(unknown, json={"enabled": None}, headers=headers), 403, "forbidden"
        )
        assert_problem(
            await client.post(BASE, json={"type": "okta"}, headers=headers), 403, "forbidden"
        )
        assert await provider_count(context) == 0

    async def test_administrator_may_use_every_route(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        created = await create(client, admin)
        assert (await client.get(BASE, headers=admin)).status_code == 200
        assert (await client.get(item(created["id"]), headers=admin)).status_code == 200
        patched = await client.patch(item(created["id"]), json={"name": "X"}, headers=admin)
        assert patched.status_code == 200
        assert (await client.delete(item(created["id"]), headers=admin)).status_code == 204


# -- POST ----------------------------------------------------------------------------------


class TestCreate:
    async def test_create_returns_201_with_defaults_and_urls(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        tenant: Tenant,
        admin: dict[str, str],
    ) -> None:
        before = datetime.now(UTC)
        response = await client.post(
            BASE, json={"type": "entra", "base_url": TENANT_ID}, headers=admin
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert set(body) == PROVIDER_FIELDS
        provider_id = uuid.UUID(body["id"])
        assert body["type"] == "entra"
        assert body["name"] == DEFAULT_NAME
        assert body["base_url"] == TENANT_ID
        assert body["client_id"] is None
        assert body["client_secret_set"] is False
        assert body["client_secret_expires_at"] is None
        assert body["enabled"] is False
        assert body["last_error"] is None
        assert body["urls"] == urls_of(provider_id)
        assert body["urls"]["initiate_sign_in_url"] == (
            f"https://sso.example.com/sso/{provider_id}/initiate"
        )
        assert at(body["created_at"]) >= before - timedelta(seconds=1)
        assert at(body["updated_at"]) >= at(body["created_at"])

        row = await stored_or_fail(context, provider_id)
        assert row.company_id == tenant.company.id
        assert row.type == "entra"
        assert row.enabled is False
        assert row.client_secret_encrypted is None

    async def test_created_provider_reads_back_identically(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        created = await create(client, admin)
        response = await client.get(item(created["id"]), headers=admin)
        assert response.status_code == 200
        assert response.json() == created

    async def test_create_gives_each_provider_its_own_id_and_urls(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        first = await create(client, admin)
        second = await create(client, admin)
        assert first["id"] != second["id"]
        assert second["urls"] == urls_of(second["id"])

    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            ("Contoso staff", "Contoso staff"),
            ("  Contoso staff  ", "Contoso staff"),
            ("Ünïcødé ✓ name", "Ünïcødé ✓ name"),
            ("n" * 200, "n" * 200),
        ],
    )
    async def test_create_with_custom_name(
        self, client: httpx.AsyncClient, admin: dict[str, str], name: str, expected: str
    ) -> None:
        created = await create(client, admin, name=name)
        assert created["name"] == expected

    async def test_create_with_null_name_uses_the_default(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        created = await create(client, admin, name=None)
        assert created["name"] == DEFAULT_NAME

    @pytest.mark.parametrize(
        ("base_url", "expected"),
        [
            (TENANT_ID, TENANT_ID),
            (TENANT_ID.upper(), TENANT_ID),
            ("contoso.onmicrosoft.com", "contoso.onmicrosoft.com"),
            ("Contoso.OnMicrosoft.com", "contoso.onmicrosoft.com"),
            ("login.contoso.co.uk", "login.contoso.co.uk"),
            (f"  {TENANT_ID}  ", TENANT_ID),
            ("\tcontoso.onmicrosoft.com\n", "contoso.onmicrosoft.com"),
            # What the Entra admin center and Entra's documents show, pasted whole.
            (f"https://login.microsoftonline.com/{TENANT_ID}/v2.0", TENANT_ID),
            (f"https://login.microsoftonline.com/{TENANT_ID.upper()}/", TENANT_ID),
            (
                f"https://login.microsoftonline.com/{TENANT_ID}/v2.0/.well-known/openid-configuration",
                TENANT_ID,
            ),
            (f"https://sts.windows.net/{TENANT_ID}/", TENANT_ID),
        ],
    )
    async def test_create_stores_base_url_normalised(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        admin: dict[str, str],
        base_url: str,
        expected: str,
    ) -> None:
        created = await create(client, admin, base_url=base_url)
        assert created["base_url"] == expected
        assert (await stored_or_fail(context, created["id"])).base_url == expected

    @pytest.mark.parametrize(
        "base_url",
        [
            "common",
            "organizations",
            "consumers",
            "COMMON",
            "Organizations",
            "cOnSuMeRs",
            "  common  ",
            " organizations\t",
            "\nconsumers\n",
            CONSUMER_TENANT,
            CONSUMER_TENANT.upper(),
            f"  {CONSUMER_TENANT}  ",
        ],
    )
    async def test_create_refuses_multi_tenant_endpoints(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        admin: dict[str, str],
        base_url: str,
    ) -> None:
        response = await client.post(
            BASE, json={"type": "entra", "base_url": base_url}, headers=admin
        )
        assert_problem(response, 422, "unsupported_tenant")
        assert await provider_count(context) == 0

    @pytest.mark.parametrize(
        "base_url",
        [
            "contoso",
            "   ",
            "not a tenant",
            f"login.microsoftonline.com/{TENANT_ID}",
            f"https://login.microsoftonline.com/{TENANT_ID}/oauth2/v2.0/authorize",
            "https://contoso.onmicrosoft.com",
            "contoso.onmicrosoft.com.",
            "contoso.onmicrosoft.com:443",
            "-contoso.onmicrosoft.com",
            "a" * 64 + ".onmicrosoft.com",
            "a" * 250 + ".com",
            "10.0.0.1",
            "[::1]",
            "{" + TENANT_ID + "}",
            TENANT_ID.replace("-", ""),
            "c\u043entoso.onmicrosoft.com",
            "\u0441ommon",
            "common\u200b",
            "<script>alert(1)</script>",
            "'; DROP TABLE sso_providers; --",
        ],
    )
    async def test_create_refuses_garbage_tenants(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        admin: dict[str, str],
        base_url: str,
    ) -> None:
        response = await client.post(
            BASE, json={"type": "entra", "base_url": base_url}, headers=admin
        )
        assert_problem(response, 422, "invalid_base_url")
        assert await provider_count(context) == 0

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param({"type": "entra", "base_url": ""}, id="empty-base-url"),
            pytest.param({"type": "entra", "base_url": "a" * 252 + ".com"}, id="too-long"),
            pytest.param({"type": "entra", "base_url": 123}, id="number"),
            pytest.param({"type": "entra", "base_url": [TENANT_ID]}, id="list"),
            pytest.param({"type": "entra", "base_url": {"id": TENANT_ID}}, id="object"),
            pytest.param({"type": "entra", "base_url": True}, id="bool"),
            pytest.param({"type": "entra", "base_url": None}, id="null-base-url"),
            pytest.param({"type": "entra"}, id="missing-base-url"),
            pytest.param({"base_url": TENANT_ID}, id="missing-type"),
            pytest.param({"type": None, "base_url": TENANT_ID}, id="null-type"),
            pytest.param({"type": "saml", "base_url": TENANT_ID}, id="unknown-type"),
            pytest.param({"type": "ENTRA", "base_url": TENANT_ID}, id="type-wrong-case"),
            pytest.param({"type": "", "base_url": TENANT_ID}, id="empty-type"),
            pytest.param({"type": "entra", "base_url": TENANT_ID, "name": ""}, id="empty-name"),
            pytest.param({"type": "entra", "base_url": TENANT_ID, "name": "   "}, id="blank"),
            pytest.param({"type": "entra", "base_url": TENANT_ID, "name": 7}, id="number-name"),
            # PostgreSQL cannot store NUL: it must be a 422 here, not a 500 from the insert.
            pytest.param(
                {"type": "entra", "base_url": TENANT_ID, "name": "Contoso\x00staff"},
                id="nul-in-name",
            ),
        ],
    )
    async def test_create_refuses_invalid_fields_as_validation_error(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        admin: dict[str, str],
        body: dict[str, Any],
    ) -> None:
        response = await client.post(BASE, json=body, headers=admin)
        problem = assert_problem(response, 422, "validation_error")
        assert problem["errors"]
        assert await provider_count(context) == 0

    @pytest.mark.parametrize(
        "extra",
        [
            {"unknown": 1},
            {"enabled": True},
            {"client_id": CLIENT_ID},
            {"client_secret": SECRET},
            {"client_secret_encrypted": "gAAAA"},
            {"company_id": str(uuid.uuid4())},
            {"id": str(uuid.uuid4())},
            {"last_error": LAST_ERROR},
        ],
    )
    async def test_create_refuses_unknown_fields_and_stores_nothing(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        admin: dict[str, str],
        extra: dict[str, Any],
    ) -> None:
        body = {"type": "entra", "base_url": TENANT_ID, **extra}
        response = await client.post(BASE, json=body, headers=admin)
        assert_problem(response, 422, "validation_error")
        assert SECRET not in response.text
        assert await provider_count(context) == 0

    async def test_create_refuses_a_name_over_200_characters_without_echoing_it(
        self, client: httpx.AsyncClient, context: AppContext, admin: dict[str, str]
    ) -> None:
        name = ("Zx9-" * 51)[:201]
        response = await client.post(
            BASE, json={"type": "entra", "base_url": TENANT_ID, "name": name}, headers=admin
        )
        assert_problem(response, 422, "validation_error")
        assert "Zx9-Zx9-" not in response.text
        assert await provider_count(context) == 0

    @pytest.mark.parametrize(
        "content",
        [
            pytest.param("not json", id="not-json"),
            pytest.param('{"type": "entra", "base_url": ', id="truncated"),
            pytest.param("[]", id="array"),
            pytest.param('"entra"', id="string"),
            pytest.param("null", id="null"),
        ],
    )
    async def test_create_refuses_a_body_that_is_not_a_json_object(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        admin: dict[str, str],
        content: str,
    ) -> None:
        response = await client.post(
            BASE,
            content=content,
            headers={**admin, "Content-Type": "application/json"},
        )
        assert_problem(response, 422, "validation_error")
        assert await provider_count(context) == 0

    async def test_create_never_reveals_another_companys_providers(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        other_tenant: Tenant,
        admin: dict[str, str],
    ) -> None:
        foreign = await factory.provider(other_tenant.company, base_url=TENANT_ID)
        created = await create(client, admin, base_url=TENANT_ID)
        assert created["id"] != str(foreign.id)


# -- GET list ------------------------------------------------------------------------------


class TestList:
    async def test_list_is_empty_without_providers(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        response = await client.get(BASE, headers=admin)
        assert response.status_code == 200
        assert response.json() == {"items": [], "next_cursor": None}

    async def test_list_returns_the_providers_in_creation_order(
        self, client: httpx.AsyncClient, admin: dict[str, str]
    ) -> None:
        created = [
            await create(client, admin, name=name, base_url=f"tenant{n}.onmicrosoft.com")
            for n, name in enumerate(["First", "Second", "Third", "Fourth"])
        ]
        response = await client.get(BASE, headers=admin)
        assert response.status_code == 200
        assert response.json() == {"items": created, "next_cursor": None}

    async def test_list_orders_by_creation_time_not_by_id(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        tenant: Tenant,
        admin: dict[str, str],
    ) -> None:
        # Ids run backwards while creation times run forwards.
        ids = [uuid.UUID(f"{digit}" * 8 + "-0000-4000-8000-000000000000") for digit in "fc84"]
        start = datetime(2026, 1, 1, tzinfo=UTC)
        async with session_scope(context.sessionmaker) as session:
            for n, provider_id in enumerate(ids):
                when = start + timedelta(minutes=n)
                session.add(
                    SSOProvider(
                        id=provider_id,
                        company_id=tenant.company.id,
                        type="entra",
                        name=f"P{n}",
                        base_url=TENANT_ID,
                        enabled=False,
                        created_at=when,
                        updated_at=when,
                    )
                )
        response = await client.get(BASE, headers=admin)
        assert response.status_code == 200
        assert [p["id"] for p in response.json()["items"]] == [str(i) for i in ids]
        assert [p["name"] for p in response.json()["items"]] == ["P0", "P1", "P2", "P3"]

    async def test_list_shows_only_the_callers_company(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        tenant: Tenant,
        other_tenant: Tenant,
        admin: dict[str, str],
        other_admin: dict[str, str],
    ) -> None:
        mine = await create(client, admin, base_url=TENANT_ID)
        theirs = await create(client, other_admin, base_url=OTHER_TENANT_ID)
        direct = await factory.provider(other_tenant.company)

        own_list = (await client.get(BASE, headers=admin)).json()["items"]
        other_list = (await client.get(BASE, headers=other_admin)).json()["items"]
        assert own_list == [mine]
        assert [p["id"] for p in other_list] == [theirs["id"], str(direct.id)]
        assert mine["id"] not in json.dumps(other_list)

    async def test_list_never_contains_a_secret(
        self, client: httpx.AsyncClient, enabled_provider: SSOProvider, admin: dict[str, str]
    ) -> None:
        response = await client.get(BASE, headers=admin)
        assert response.status_code == 200
        (entry,) = response.json()["items"]
        assert entry["client_secret_set"] is True
        assert entry["enabled"] is True
        assert "client_secret" not in entry
        assert SECRET not in response.text
        assert "client_secret_encrypted" not in response.text


# -- GET one -------------------------------------------------------------------------------


class TestGet:
    async def test_get_returns_the_provider(
        self, client: httpx.AsyncClient, provider: SSOProvider, admin: dict[str, str]
    ) -> None:
        response = await client.get(item(provider.id), headers=admin)
        assert response.status_code == 200
        body = response.json()
        assert set(body) == PROVIDER_FIELDS
        assert body["id"] == str(provider.id)
        assert body["name"] == provider.name
        assert body["base_url"] == provider.base_url
        assert body["urls"] == urls_of(provider.id)
        assert body["client_secret_set"] is False

    async def test_get_shows_credentials_state_but_never_the_secret(
        self, client: httpx.AsyncClient, enabled_provider: SSOProvider, admin: dict[str, str]
    ) -> None:
        response = await client.get(item(enabled_provider.id), headers=admin)
        assert response.status_code == 200
        body = response.json()
        assert body["client_id"] == CLIENT_ID
        assert body["client_secret_set"] is True
        assert body["enabled"] is True
        assert SECRET not in response.text

    async def test_get_shows_the_last_error(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        provider: SSOProvider,
        admin: dict[str, str],
    ) -> None:
        await set_last_error(context, provider.id)
        body = (await client.get(item(provider.id), headers=admin)).json()
        assert body["last_error"]["code"] == LAST_ERROR["code"]
        assert body["last_error"]["message"] == LAST_ERROR["message"]
        assert at(body["last_error"]["at"]) == at(LAST_ERROR["at"])

    async def test_get_unknown_id_is_404_not_found(
        self, client: httpx.AsyncClient, provider: SSOProvider, admin: dict[str, str]
    ) -> None:
        response = await client.get(item(uuid.uuid4()), headers=admin)
        assert_problem(response, 404, "not_found")

    @pytest.mark.parametrize(
        "bad_id", ["not-a-uuid", "123", "00000000-0000-0000-0000-00000000000g", "%20"]
    )
    async def test_get_malformed_id_is_422(
        self, client: httpx.AsyncClient, admin: dict[str, str], bad_id: str
    ) -> None:
        response = await client.get(item(bad_id), headers=admin)
        assert_problem(response, 422, "validation_error")

    async def test_get_of_another_companys_provider_is_404_like_an_unknown_id(
        self,
        client: httpx.AsyncClient,
        provider: SSOProvider,
        other_admin: dict[str, str],
    ) -> None:
        foreign = await client.get(item(provider.id), headers=other_admin)
        body = assert_problem(foreign, 404, "not_found")
        unknown = await client.get(item(uuid.uuid4()), headers=other_admin)
        assert body == unknown.json()
        assert str(provider.id) not in foreign.text
        assert provider.base_url not in foreign.text


# -- PATCH ---------------------------------------------------------------------------------


# -- DELETE --------------------------------------------------------------------------------


class TestDelete:
    async def test_delete_is_204_and_the_provider_is_gone(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        enabled_provider: SSOProvider,
        admin: dict[str, str],
    ) -> None:
        response = await client.delete(item(enabled_provider.id), headers=admin)
        assert response.status_code == 204
        assert response.content == b""
        assert await stored(context, enabled_provider.id) is None
        assert await raw_secret_columns(context) == []

        assert_problem(await client.get(item(enabled_provider.id), headers=admin), 404, "not_found")
        assert (await client.get(BASE, headers=admin)).json() == {"items": [], "next_cursor": None}

    async def test_delete_twice_is_404_the_second_time(
        self, client: httpx.AsyncClient, provider: SSOProvider, admin: dict[str, str]
    ) -> None:
        assert (await client.delete(item(provider.id), headers=admin)).status_code == 204
        assert_problem(await client.delete(item(provider.id), headers=admin), 404, "not_found")
        assert_problem(
            await client.patch(item(provider.id), json={"name": "X"}, headers=admin),
            404,
            "not_found",
        )

    async def test_delete_keeps_the_users_and_unlinks_them(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        factory: Factory,
        tenant: Tenant,
        admin: dict[str, str],
    ) -> None:
        doomed = await factory.provider(tenant.company, base_url=TENANT_ID)
        kept = await factory.provider(tenant.company, base_url=OTHER_TENANT_ID)
        linked = [await factory.user(tenant.company, Role.USER, provider=doomed) for _ in range(2)]
        manager = await factory.user(tenant.company, Role.MANAGER, provider=doomed)
        elsewhere = await factory.user(tenant.company, Role.USER, provider=kept)
        async with context.sessionmaker() as session:
            users_before = await session.scalar(select(func.count()).select_from(User))

        response = await client.delete(item(doomed.id), headers=admin)
        assert response.status_code == 204

        async with context.sessionmaker() as session:
            assert await session.scalar(select(func.count()).select_from(User)) == users_before
            for user in [*linked, manager]:
                row = await session.get(User, user.id)
                assert row is not None
                assert row.sso_provider_id is None
                assert row.email == user.email
                assert row.role == user.role
            other = await session.get(User, elsewhere.id)
            assert other is not None
            assert other.sso_provider_id == kept.id

        assert await stored(context, kept.id) is not None
        assert [p["id"] for p in (await client.get(BASE, headers=admin)).json()["items"]] == [
            str(kept.id)
        ]

    async def test_delete_keeps_the_administrators_access(
        self,
        client: httpx.AsyncClient,
        provider: SSOProvider,
        admin: dict[str, str],
    ) -> None:
        assert (await client.delete(item(provider.id), headers=admin)).status_code == 204
        assert (await client.get(BASE, headers=admin)).status_code == 200

    async def test_delete_unknown_id_is_404_not_found(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        provider: SSOProvider,
        admin: dict[str, str],
    ) -> None:
        response = await client.delete(item(uuid.uuid4()), headers=admin)
        assert_problem(response, 404, "not_found")
        assert await provider_count(context) == 1

    @pytest.mark.parametrize(
        "bad_id", ["not-a-uuid", "123", "00000000-0000-0000-0000-00000000000g"]
    )
    async def test_delete_malformed_id_is_422(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        provider: SSOProvider,
        admin: dict[str, str],
        bad_id: str,
    ) -> None:
        response = await client.delete(item(bad_id), headers=admin)
        assert_problem(response, 422, "validation_error")
        assert await provider_count(context) == 1

    async def test_delete_of_another_companys_provider_is_404_and_deletes_nothing(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        factory: Factory,
        tenant: Tenant,
        enabled_provider: SSOProvider,
        admin: dict[str, str],
        other_admin: dict[str, str],
    ) -> None:
        member = await factory.user(tenant.company, Role.USER, provider=enabled_provider)
        before = (await client.get(item(enabled_provider.id), headers=admin)).json()

        response = await client.delete(item(enabled_provider.id), headers=other_admin)
        problem = assert_problem(response, 404, "not_found")
        assert problem == (await client.delete(item(uuid.uuid4()), headers=other_admin)).json()

        assert (await client.get(item(enabled_provider.id), headers=admin)).json() == before
        async with context.sessionmaker() as session:
            row = await session.get(User, member.id)
            assert row is not None
            assert row.sso_provider_id == enabled_provider.id


# -- across companies ----------------------------------------------------------------------


class TestCrossCompany:
    async def test_another_company_never_sees_or_changes_the_provider(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        admin: dict[str, str],
        other_admin: dict[str, str],
    ) -> None:
        mine = await create(client, admin, base_url=TENANT_ID, name="Contoso staff")
        mine = await self.ok_patch(
            client, admin, mine["id"], {"client_id": CLIENT_ID, "client_secret": SECRET}
        )
        theirs = await create(client, other_admin, base_url=OTHER_TENANT_ID)

        assert_problem(await client.get(item(mine["id"]), headers=other_admin), 404, "not_found")
        for body in ({"name": "Hijacked"}, {"enabled": True}, {"client_secret": None}):
            response = await client.patch(item(mine["id"]), json=body, headers=other_admin)
            assert_problem(response, 404, "not_found")
        assert_problem(await client.delete(item(mine["id"]), headers=other_admin), 404, "not_found")
        listed = (await client.get(BASE, headers=other_admin)).json()["items"]
        assert listed == [theirs]

        assert (await client.get(item(mine["id"]), headers=admin)).json() == mine
        assert (await client.get(BASE, headers=admin)).json() == {
            "items": [mine],
            "next_cursor": None,
        }
        row = await stored_or_fail(context, mine["id"])
        assert row.client_secret_encrypted is not None
        assert context.box.decrypt(row.client_secret_encrypted) == SECRET

    async def test_managers_of_another_company_get_403_not_404(
        self,
        client: httpx.AsyncClient,
        provider: SSOProvider,
        other_tenant: Tenant,
    ) -> None:
        response = await client.get(item(provider.id), headers=other_tenant.headers[Role.MANAGER])
        assert_problem(response, 403, "forbidden")

    @staticmethod
    async def ok_patch(
        client: httpx.AsyncClient,
        headers: dict[str, str],
        provider_id: str,
        body: dict[str, Any],
    ) -> dict[str, Any]:
        response = await client.patch(item(provider_id), json=body, headers=headers)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result
