"""Company isolation on every admin route (README, *The admin API in short*).

Two companies, Contoso (A) and Fabrikam (B). Whatever B's staff send, A's users and SSO
providers are never listed, read, changed or deleted: by-id routes answer ``404`` exactly as
for an id that exists nowhere (never ``403``, which would confirm the id), and A's rows read
the same through A's own administrator afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from sso_broker.models import SSOProvider, User
from sso_broker.users.models import Role
from tests.conftest import Factory, Tenant
from tests.problems import assert_problem

MakeTenant = Callable[[str], Awaitable[Tenant]]

USERS = "/api/v1/users"
PROVIDERS = "/api/v1/sso-providers"

# Who in B may use each collection at all (README, *The admin API in short*).
USER_STAFF = (Role.ADMINISTRATOR, Role.MANAGER)
PROVIDER_STAFF = (Role.ADMINISTRATOR,)

# Bodies B sends at A's resources: each would succeed on a resource of B's own.
USER_PATCH = {"name": "Hijacked", "email": "hijacked@fabrikam.com", "sso_provider_id": None}
PROVIDER_PATCH = {"name": "Hijacked", "base_url": "fabrikam.onmicrosoft.com"}


@dataclass
class World:
    a: Tenant
    b: Tenant
    a_provider: SSOProvider
    b_provider: SSOProvider
    a_linked: User  # an extra user of A, linked to A's provider


@pytest.fixture
async def world(make_tenant: MakeTenant, factory: Factory) -> World:
    a = await make_tenant("Contoso")
    b = await make_tenant("Fabrikam")
    a_provider = await factory.provider(a.company, base_url="contoso.onmicrosoft.com")
    b_provider = await factory.provider(b.company, base_url="fabrikam.onmicrosoft.com")
    # Link one of A's users, so a cross-company provider delete would show in A's user rows.
    a_linked = await factory.user(
        a.company, Role.USER, email="linked@contoso.com", provider=a_provider
    )
    return World(a=a, b=b, a_provider=a_provider, b_provider=b_provider, a_linked=a_linked)


async def snapshot(client: httpx.AsyncClient, tenant: Tenant) -> dict[str, Any]:
    """Everything the tenant's administrator sees: users and providers, each list and by id."""
    headers = tenant.headers[Role.ADMINISTRATOR]
    users = await client.get(USERS, headers=headers)
    providers = await client.get(PROVIDERS, headers=headers)
    assert users.status_code == 200
    assert providers.status_code == 200
    state: dict[str, Any] = {
        "users": sorted(users.json()["items"], key=lambda item: item["id"]),
        "providers": sorted(providers.json()["items"], key=lambda item: item["id"]),
    }
    for item in state["users"]:
        one = await client.get(f"{USERS}/{item['id']}", headers=headers)
        assert one.json() == item
    for item in state["providers"]:
        one = await client.get(f"{PROVIDERS}/{item['id']}", headers=headers)
        assert one.json() == item
    return state


async def call(
    client: httpx.AsyncClient, method: str, url: str, headers: dict[str, str]
) -> httpx.Response:
    if method == "PATCH":
        body = USER_PATCH if url.startswith(USERS) else PROVIDER_PATCH
        return await client.patch(url, json=body, headers=headers)
    return await client.request(method, url, headers=headers)


BY_ID_METHODS = ("GET", "PATCH", "DELETE")


class TestUsersAcrossCompanies:
    @pytest.mark.parametrize("method", BY_ID_METHODS)
    @pytest.mark.parametrize("target", list(Role), ids=lambda r: r.value)
    @pytest.mark.parametrize("actor", USER_STAFF, ids=lambda r: f"b-{r.value}")
    async def test_by_id_routes_answer_404_and_leave_a_unchanged(
        self,
        client: httpx.AsyncClient,
        world: World,
        actor: Role,
        target: Role,
        method: str,
    ) -> None:
        before = await snapshot(client, world.a)
        url = f"{USERS}/{world.a.users[target].id}"
        response = await call(client, method, url, world.b.headers[actor])
        assert_problem(response, 404, "not_found")
        assert await snapshot(client, world.a) == before

    @pytest.mark.parametrize("method", BY_ID_METHODS)
    @pytest.mark.parametrize("actor", list(Role), ids=lambda r: f"b-{r.value}")
    async def test_a_foreign_user_id_answers_exactly_like_an_unknown_id(
        self, client: httpx.AsyncClient, world: World, actor: Role, method: str
    ) -> None:
        headers = world.b.headers[actor]
        foreign = await call(client, method, f"{USERS}/{world.a.users[Role.USER].id}", headers)
        unknown = await call(client, method, f"{USERS}/{uuid.uuid4()}", headers)
        assert foreign.status_code == unknown.status_code
        assert foreign.status_code == (404 if actor in USER_STAFF else 403)
        assert foreign.json() == unknown.json()

    async def test_linked_foreign_user_is_404_for_every_by_id_route(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        linked = world.a_linked
        before = await snapshot(client, world.a)
        for method in BY_ID_METHODS:
            response = await call(
                client, method, f"{USERS}/{linked.id}", world.b.headers[Role.ADMINISTRATOR]
            )
            assert_problem(response, 404, "not_found")
        assert await snapshot(client, world.a) == before

    @pytest.mark.parametrize("actor", USER_STAFF, ids=lambda r: f"b-{r.value}")
    async def test_list_holds_only_the_callers_company(
        self, client: httpx.AsyncClient, world: World, actor: Role
    ) -> None:
        response = await client.get(USERS, headers=world.b.headers[actor])
        assert response.status_code == 200
        ids = {item["id"] for item in response.json()["items"]}
        assert ids == {str(user.id) for user in world.b.users.values()}
        a_ids = {str(user.id) for user in world.a.users.values()}
        a_ids.add(str(world.a_linked.id))
        assert not ids & a_ids

    @pytest.mark.parametrize("actor", USER_STAFF, ids=lambda r: f"b-{r.value}")
    async def test_create_lands_in_the_callers_company_only(
        self, client: httpx.AsyncClient, world: World, actor: Role
    ) -> None:
        before = await snapshot(client, world.a)
        # The same email as one of A's users is no conflict: uniqueness is per company.
        response = await client.post(
            USERS,
            json={"email": "LINKED@contoso.com", "name": "B's own", "role": "read_only"},
            headers=world.b.headers[actor],
        )
        assert response.status_code == 201, response.text
        created = response.json()
        assert await snapshot(client, world.a) == before
        b_list = await client.get(USERS, headers=world.b.headers[Role.ADMINISTRATOR])
        assert created["id"] in {item["id"] for item in b_list.json()["items"]}
        from_a = await client.get(
            f"{USERS}/{created['id']}", headers=world.a.headers[Role.ADMINISTRATOR]
        )
        assert_problem(from_a, 404, "not_found")

    async def test_create_cannot_name_another_company(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        before = await snapshot(client, world.a)
        response = await client.post(
            USERS,
            json={
                "email": "planted@contoso.com",
                "name": "Planted",
                "role": "user",
                "company_id": str(world.a.company.id),
            },
            headers=world.b.headers[Role.ADMINISTRATOR],
        )
        assert_problem(response, 422, "validation_error")
        assert await snapshot(client, world.a) == before

    @pytest.mark.parametrize("actor", USER_STAFF, ids=lambda r: f"b-{r.value}")
    async def test_creating_a_user_linked_to_a_foreign_provider_is_422(
        self, client: httpx.AsyncClient, world: World, actor: Role
    ) -> None:
        before_a = await snapshot(client, world.a)
        before_b = await snapshot(client, world.b)
        response = await client.post(
            USERS,
            json={
                "email": "sneaky@fabrikam.com",
                "name": "Sneaky",
                "role": "user",
                "sso_provider_id": str(world.a_provider.id),
            },
            headers=world.b.headers[actor],
        )
        assert_problem(response, 422, "sso_provider_not_found")
        assert await snapshot(client, world.a) == before_a
        assert await snapshot(client, world.b) == before_b

    @pytest.mark.parametrize("actor", USER_STAFF, ids=lambda r: f"b-{r.value}")
    async def test_linking_an_own_user_to_a_foreign_provider_is_422(
        self, client: httpx.AsyncClient, world: World, actor: Role
    ) -> None:
        target = world.b.users[Role.READ_ONLY]
        before_a = await snapshot(client, world.a)
        before_b = await snapshot(client, world.b)
        response = await client.patch(
            f"{USERS}/{target.id}",
            json={"sso_provider_id": str(world.a_provider.id)},
            headers=world.b.headers[actor],
        )
        assert_problem(response, 422, "sso_provider_not_found")
        assert await snapshot(client, world.a) == before_a
        assert await snapshot(client, world.b) == before_b

    async def test_own_user_can_take_an_email_used_in_another_company(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        before = await snapshot(client, world.a)
        a_email = world.a.users[Role.MANAGER].email
        response = await client.patch(
            f"{USERS}/{world.b.users[Role.USER].id}",
            json={"email": a_email},
            headers=world.b.headers[Role.ADMINISTRATOR],
        )
        assert response.status_code == 200, response.text
        assert await snapshot(client, world.a) == before


class TestProvidersAcrossCompanies:
    @pytest.mark.parametrize("method", BY_ID_METHODS)
    async def test_by_id_routes_answer_404_and_leave_a_unchanged(
        self, client: httpx.AsyncClient, world: World, method: str
    ) -> None:
        before = await snapshot(client, world.a)
        url = f"{PROVIDERS}/{world.a_provider.id}"
        response = await call(client, method, url, world.b.headers[Role.ADMINISTRATOR])
        assert_problem(response, 404, "not_found")
        after = await snapshot(client, world.a)
        assert after == before
        # Not even detached: A's linked user still points at A's provider.
        linked = world.a_linked
        linked_row = next(u for u in after["users"] if u["id"] == str(linked.id))
        assert linked_row["sso_provider_id"] == str(world.a_provider.id)

    @pytest.mark.parametrize("method", BY_ID_METHODS)
    @pytest.mark.parametrize("actor", list(Role), ids=lambda r: f"b-{r.value}")
    async def test_a_foreign_provider_id_answers_exactly_like_an_unknown_id(
        self, client: httpx.AsyncClient, world: World, actor: Role, method: str
    ) -> None:
        headers = world.b.headers[actor]
        foreign = await call(client, method, f"{PROVIDERS}/{world.a_provider.id}", headers)
        unknown = await call(client, method, f"{PROVIDERS}/{uuid.uuid4()}", headers)
        assert foreign.status_code == unknown.status_code
        assert foreign.status_code == (404 if actor in PROVIDER_STAFF else 403)
        assert foreign.json() == unknown.json()

    async def test_enabling_a_foreign_provider_is_404(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        before = await snapshot(client, world.a)
        response = await client.patch(
            f"{PROVIDERS}/{world.a_provider.id}",
            json={"client_id": str(uuid.uuid4()), "client_secret": "s3cret~", "enabled": True},
            headers=world.b.headers[Role.ADMINISTRATOR],
        )
        assert_problem(response, 404, "not_found")
        assert await snapshot(client, world.a) == before

    async def test_list_holds_only_the_callers_company(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        response = await client.get(PROVIDERS, headers=world.b.headers[Role.ADMINISTRATOR])
        assert response.status_code == 200
        assert [item["id"] for item in response.json()["items"]] == [str(world.b_provider.id)]

    async def test_create_lands_in_the_callers_company_only(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        before = await snapshot(client, world.a)
        response = await client.post(
            PROVIDERS,
            json={"type": "entra", "base_url": "contoso.onmicrosoft.com"},
            headers=world.b.headers[Role.ADMINISTRATOR],
        )
        assert response.status_code == 201, response.text
        created = response.json()
        assert await snapshot(client, world.a) == before
        from_a = await client.get(
            f"{PROVIDERS}/{created['id']}", headers=world.a.headers[Role.ADMINISTRATOR]
        )
        assert_problem(from_a, 404, "not_found")
        # And A cannot link its users to B's new provider either.
        response = await client.patch(
            f"{USERS}/{world.a.users[Role.USER].id}",
            json={"sso_provider_id": created["id"]},
            headers=world.a.headers[Role.ADMINISTRATOR],
        )
        assert_problem(response, 422, "sso_provider_not_found")

    async def test_create_cannot_name_another_company(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        before = await snapshot(client, world.a)
        response = await client.post(
            PROVIDERS,
            json={
                "type": "entra",
                "base_url": "fabrikam.onmicrosoft.com",
                "company_id": str(world.a.company.id),
            },
            headers=world.b.headers[Role.ADMINISTRATOR],
        )
        assert_problem(response, 422, "validation_error")
        assert await snapshot(client, world.a) == before

    async def test_deleting_an_own_provider_leaves_a_foreign_link_alone(
        self, client: httpx.AsyncClient, world: World
    ) -> None:
        before = await snapshot(client, world.a)
        response = await client.delete(
            f"{PROVIDERS}/{world.b_provider.id}", headers=world.b.headers[Role.ADMINISTRATOR]
        )
        assert response.status_code == 204, response.text
        assert await snapshot(client, world.a) == before
