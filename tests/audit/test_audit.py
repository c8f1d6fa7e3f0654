"""The audit log: what is recorded, who may read it, and that no secret is ever in it."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from sso_broker.users.models import Role
from tests.conftest import Factory, Tenant
from tests.fixtures.entra import CLIENT_ID, CLIENT_SECRET, TENANT_ID, EntraUser, FakeEntra
from tests.pkce import PKCE

EVENTS = "/api/v1/audit-events"


async def events(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    response = await client.get(EVENTS, headers=headers, params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def sign_in(
    client: httpx.AsyncClient, entra: FakeEntra, provider_id: str, person: EntraUser
) -> httpx.Response:
    started = await client.get(f"/sso/{provider_id}/initiate", params=PKCE)
    assert started.status_code == 302
    return await client.get(entra.authorize(started.headers["location"], user=person))


class TestAdministrationEvents:
    async def test_provider_lifecycle_is_recorded_with_field_names_only(
        self, client: httpx.AsyncClient, make_tenant: Any
    ) -> None:
        tenant: Tenant = await make_tenant()
        admin = tenant.headers[Role.ADMINISTRATOR]
        created = await client.post(
            "/api/v1/sso-providers", json={"type": "entra", "base_url": TENANT_ID}, headers=admin
        )
        provider_id = created.json()["id"]
        url = f"/api/v1/sso-providers/{provider_id}"
        body = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "enabled": True}
        assert (await client.patch(url, json=body, headers=admin)).status_code == 200
        assert (await client.patch(url, json={"enabled": False}, headers=admin)).status_code == 200
        assert (await client.delete(url, headers=admin)).status_code == 204

        recorded = await events(client, admin)
        types = [e["type"] for e in reversed(recorded)]
        assert types == [
            "provider.created",
            "provider.updated",
            "provider.enabled",
            "provider.updated",
            "provider.disabled",
            "provider.deleted",
        ]
        first_update = next(e for e in reversed(recorded) if e["type"] == "provider.updated")
        assert first_update["details"] == {"fields": ["client_id", "client_secret", "enabled"]}
        assert all(e["provider_id"] == provider_id for e in recorded)
        assert all(e["actor_user_id"] == str(tenant.users[Role.ADMINISTRATOR].id) for e in recorded)
        assert CLIENT_SECRET not in json.dumps(recorded)

    async def test_user_lifecycle_is_recorded(
        self, client: httpx.AsyncClient, make_tenant: Any
    ) -> None:
        tenant: Tenant = await make_tenant()
        admin = tenant.headers[Role.ADMINISTRATOR]
        made = await client.post(
            "/api/v1/users",
            json={"email": "new@example.com", "name": "New", "role": "user"},
            headers=admin,
        )
        user_id = made.json()["id"]
        await client.patch(f"/api/v1/users/{user_id}", json={"name": "Renamed"}, headers=admin)
        await client.delete(f"/api/v1/users/{user_id}", headers=admin)
        recorded = await events(
            client, admin, type=["user.created", "user.updated", "user.deleted"]
        )
        assert [e["type"] for e in reversed(recorded)] == [
            "user.created", "user.updated", "user.deleted",
        ]  # fmt: skip
        assert all(e["user_id"] == user_id for e in recorded)
        assert recorded[1]["details"]["fields"] == ["name"]


class TestSignInEvents:
    async def test_success_and_failure_are_recorded_with_idp_user_id(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        company = await factory.company()
        admin = await factory.headers(await factory.user(company, Role.ADMINISTRATOR))
        provider = await factory.provider(
            company, base_url=TENANT_ID, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
            enabled=True,
        )  # fmt: skip
        person = EntraUser.make()
        assert person.email is not None
        user = await factory.user(company, email=person.email, provider=provider)
        stranger = EntraUser.make()

        assert (await sign_in(client, entra, str(provider.id), person)).status_code == 302
        refused = await sign_in(client, entra, str(provider.id), stranger)
        assert "user_not_provisioned" in refused.headers["location"]

        succeeded = await events(client, admin, type="sign_in.succeeded")
        assert len(succeeded) == 1
        assert succeeded[0]["user_id"] == str(user.id)
        assert succeeded[0]["provider_id"] == str(provider.id)
        assert succeeded[0]["idp_subject"] == person.oid.lower()
        failed = await events(client, admin, type="sign_in.failed")
        assert len(failed) == 1
        assert failed[0]["error"] == "user_not_provisioned"
        assert failed[0]["idp_subject"] == stranger.oid.lower()

    async def test_unknown_provider_failures_are_not_stored(
        self, client: httpx.AsyncClient, make_tenant: Any
    ) -> None:
        tenant: Tenant = await make_tenant()
        for _ in range(3):
            await client.get(f"/sso/{uuid.uuid4()}/callback", params={"state": "x" * 400})
        assert await events(client, tenant.headers[Role.ADMINISTRATOR]) == []

    async def test_logout_is_recorded_as_a_revocation(
        self, client: httpx.AsyncClient, make_tenant: Any
    ) -> None:
        tenant: Tenant = await make_tenant()
        user = tenant.headers[Role.USER]
        assert (await client.post("/api/v1/auth/logout", headers=user)).status_code == 200
        revoked = await events(client, tenant.headers[Role.ADMINISTRATOR], type="session.revoked")
        assert len(revoked) == 1
        assert revoked[0]["details"] == {"reason": "logout"}
        assert revoked[0]["user_id"] == str(tenant.users[Role.USER].id)


class TestReadingTheLog:
    @pytest.mark.parametrize("role", [Role.MANAGER, Role.USER, Role.READ_ONLY])
    async def test_only_administrators_read_it(
        self, client: httpx.AsyncClient, make_tenant: Any, role: Role
    ) -> None:
        tenant: Tenant = await make_tenant()
        response = await client.get(EVENTS, headers=tenant.headers[role])
        assert response.status_code == 403
        assert response.json()["code"] == "forbidden"

    async def test_anonymous_is_401(self, client: httpx.AsyncClient) -> None:
        assert (await client.get(EVENTS)).status_code == 401

    async def test_another_companys_events_are_never_visible(
        self, client: httpx.AsyncClient, make_tenant: Any
    ) -> None:
        first: Tenant = await make_tenant("A")
        second: Tenant = await make_tenant("B")
        await client.post(
            "/api/v1/sso-providers",
            json={"type": "entra", "base_url": TENANT_ID},
            headers=first.headers[Role.ADMINISTRATOR],
        )
        assert await events(client, second.headers[Role.ADMINISTRATOR]) == []
        assert len(await events(client, first.headers[Role.ADMINISTRATOR])) == 1

    async def test_pages_and_filters_by_time(
        self, client: httpx.AsyncClient, make_tenant: Any
    ) -> None:
        tenant: Tenant = await make_tenant()
        admin = tenant.headers[Role.ADMINISTRATOR]
        for n in range(5):
            await client.post(
                "/api/v1/sso-providers",
                json={"type": "entra", "base_url": TENANT_ID, "name": f"P{n}"},
                headers=admin,
            )
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = (await client.get(EVENTS, headers=admin, params=params)).json()
            seen += [e["id"] for e in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == 5
        everything = await events(client, admin)
        assert [e["id"] for e in everything] == seen  # newest first, no gaps
        newest = everything[0]["created_at"]
        assert await events(client, admin, since="2999-01-01T00:00:00Z") == []
        assert len(await events(client, admin, until=newest)) == 4

    @pytest.mark.parametrize(
        "params",
        [{"cursor": "not-a-cursor"}, {"limit": 0}, {"limit": 201}, {"type": "nonsense"},
         {"since": "2024-01-01T00:00:00"}],
    )  # fmt: skip
    async def test_bad_parameters_are_422(
        self, client: httpx.AsyncClient, make_tenant: Any, params: dict[str, Any]
    ) -> None:
        tenant: Tenant = await make_tenant()
        response = await client.get(
            EVENTS, headers=tenant.headers[Role.ADMINISTRATOR], params=params
        )
        assert response.status_code == 422
        assert response.json()["code"] == "validation_error"
