"""The users admin API: who may read, create, change and delete whom (README, *The admin API
in short*).

The expected permissions are written out here from the README's rules, not imported from the
service, so a change to the service's rules fails these tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import httpx
import pytest

from sso_broker.users.models import Role
from tests.conftest import Factory, Tenant
from tests.problems import assert_problem

MakeTenant = Callable[[str], Awaitable[Tenant]]

USERS = "/api/v1/users"
USER_FIELDS = {"id", "email", "name", "role", "sso_provider_id", "created_at", "updated_at"}

# The admin API (README, *The admin API in short*): an administrator may grant up to manager,
# a manager up to user, and (being able to grant a role) may manage users of that role.
# Everyone else may do nothing.
MANAGING_ROLES = (Role.ADMINISTRATOR, Role.MANAGER)
NON_MANAGING_ROLES = (Role.USER, Role.READ_ONLY)
GRANTS: dict[Role, frozenset[Role]] = {
    Role.ADMINISTRATOR: frozenset({Role.MANAGER, Role.USER, Role.READ_ONLY}),
    Role.MANAGER: frozenset({Role.USER, Role.READ_ONLY}),
}

ACTOR_ROLE_MATRIX = [
    pytest.param(
        actor,
        other,
        other in GRANTS[actor],
        id=f"{actor.value}-{other.value}-{'allowed' if other in GRANTS[actor] else 'forbidden'}",
    )
    for actor in MANAGING_ROLES
    for other in Role
]


def user_url(user_id: uuid.UUID | str) -> str:
    return f"{USERS}/{user_id}"


def new_user_body(role: Role | str | None = Role.USER, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "email": f"new-{uuid.uuid4().hex[:8]}@example.com",
        "name": "New Person",
        "role": role.value if isinstance(role, Role) else role,
    }
    body.update(overrides)
    return body


async def read_user(
    client: httpx.AsyncClient, tenant: Tenant, user_id: uuid.UUID | str
) -> httpx.Response:
    """Reads a user as the tenant's administrator (the ground truth after a refused write)."""
    return await client.get(user_url(user_id), headers=tenant.headers[Role.ADMINISTRATOR])


async def list_ids(client: httpx.AsyncClient, tenant: Tenant) -> set[str]:
    response = await client.get(USERS, headers=tenant.headers[Role.ADMINISTRATOR])
    assert response.status_code == 200
    return {item["id"] for item in response.json()["items"]}


class TestCreate:
    async def test_anonymous_gets_401_not_authenticated(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant
    ) -> None:
        tenant = await make_tenant("Contoso")
        response = await client.post(USERS, json=new_user_body())
        assert_problem(response, 401, "not_authenticated")
        assert response.headers["www-authenticate"] == "Bearer"
        assert len(await list_ids(client, tenant)) == len(Role)

    async def test_garbage_token_gets_401_invalid_token(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            USERS, json=new_user_body(), headers={"Authorization": "Bearer not.a.jwt"}
        )
        assert_problem(response, 401, "invalid_token")

    @pytest.mark.parametrize("role", NON_MANAGING_ROLES, ids=lambda r: r.value)
    async def test_user_and_read_only_get_403_forbidden_and_nothing_is_created(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, role: Role
    ) -> None:
        tenant = await make_tenant("Contoso")
        response = await client.post(
            USERS, json=new_user_body(Role.READ_ONLY), headers=tenant.headers[role]
        )
        assert_problem(response, 403, "forbidden")
        assert len(await list_ids(client, tenant)) == len(Role)

    @pytest.mark.parametrize(("actor", "granted", "allowed"), ACTOR_ROLE_MATRIX)
    async def test_role_ceiling_on_create(
        self,
        client: httpx.AsyncClient,
        make_tenant: MakeTenant,
        actor: Role,
        granted: Role,
        allowed: bool,
    ) -> None:
        tenant = await make_tenant("Contoso")
        body = new_user_body(granted)
        response = await client.post(USERS, json=body, headers=tenant.headers[actor])
        if allowed:
            assert response.status_code == 201, response.text
            assert response.json()["role"] == granted.value
            assert response.json()["id"] in await list_ids(client, tenant)
        else:
            assert_problem(response, 403, "forbidden")
            assert len(await list_ids(client, tenant)) == len(Role)

    @pytest.mark.parametrize("actor", MANAGING_ROLES, ids=lambda r: r.value)
    async def test_valid_create_returns_the_user_linked_to_an_own_provider(
        self,
        client: httpx.AsyncClient,
        make_tenant: MakeTenant,
        factory: Factory,
        actor: Role,
    ) -> None:
        tenant = await make_tenant("Contoso")
        provider = await factory.provider(tenant.company)
        response = await client.post(
            USERS,
            json={
                "email": "alice@contoso.com",
                "name": "  Alice Example  ",
                "role": "read_only",
                "sso_provider_id": str(provider.id),
            },
            headers=tenant.headers[actor],
        )
        assert response.status_code == 201, response.text
        created = response.json()
        assert set(created) == USER_FIELDS
        assert created["email"] == "alice@contoso.com"
        assert created["name"] == "Alice Example"
        assert created["role"] == "read_only"
        assert created["sso_provider_id"] == str(provider.id)
        uuid.UUID(created["id"])
        fetched = await read_user(client, tenant, created["id"])
        assert fetched.status_code == 200
        assert fetched.json() == created

    async def test_sso_provider_id_defaults_to_null(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant
    ) -> None:
        tenant = await make_tenant("Contoso")
        response = await client.post(
            USERS, json=new_user_body(), headers=tenant.headers[Role.MANAGER]
        )
        assert response.status_code == 201
        assert response.json()["sso_provider_id"] is None

    @pytest.mark.parametrize(
        "email", ["taken@contoso.com", "TAKEN@CONTOSO.COM", "Taken@Contoso.com"]
    )
    async def test_email_already_in_the_company_is_409_email_taken_in_any_case(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, factory: Factory, email: str
    ) -> None:
        tenant = await make_tenant("Contoso")
        await factory.user(tenant.company, Role.USER, email="taken@contoso.com")
        before = await list_ids(client, tenant)
        response = await client.post(
            USERS, json=new_user_body(email=email), headers=tenant.headers[Role.ADMINISTRATOR]
        )
        assert_problem(response, 409, "email_taken")
        assert await list_ids(client, tenant) == before

    async def test_same_email_in_another_company_is_fine(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, factory: Factory
    ) -> None:
        contoso = await make_tenant("Contoso")
        fabrikam = await make_tenant("Fabrikam")
        await factory.user(fabrikam.company, Role.USER, email="shared@example.com")
        response = await client.post(
            USERS,
            json=new_user_body(email="Shared@example.com"),
            headers=contoso.headers[Role.ADMINISTRATOR],
        )
        assert response.status_code == 201, response.text

    async def test_provider_of_another_company_is_422_like_an_unknown_id(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, factory: Factory
    ) -> None:
        contoso = await make_tenant("Contoso")
        fabrikam = await make_tenant("Fabrikam")
        foreign = await factory.provider(fabrikam.company)
        answers = []
        for provider_id in (foreign.id, uuid.uuid4()):
            response = await client.post(
                USERS,
                json=new_user_body(sso_provider_id=str(provider_id)),
                headers=contoso.headers[Role.ADMINISTRATOR],
            )
            body = assert_problem(response, 422, "sso_provider_not_found")
            answers.append((body["title"], body["detail"]))
        assert answers[0] == answers[1]
        assert len(await list_ids(client, contoso)) == len(Role)

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param(new_user_body(company_id=str(uuid.uuid4())), id="unknown-company_id"),
            pytest.param(new_user_body(password="hunter2"), id="unknown-password"),
            pytest.param(new_user_body(email="not-an-email"), id="invalid-email"),
            pytest.param(new_user_body(email=""), id="empty-email"),
            pytest.param(new_user_body(name=""), id="empty-name"),
            pytest.param(new_user_body(name="   "), id="blank-name"),
            pytest.param(new_user_body(name="x" * 201), id="long-name"),
            pytest.param(new_user_body(role="owner"), id="unknown-role"),
            pytest.param(new_user_body(role=None), id="null-role"),
            pytest.param(new_user_body(email=None), id="null-email"),
            pytest.param(new_user_body(sso_provider_id="nope"), id="malformed-provider-id"),
            pytest.param({"name": "No Email", "role": "user"}, id="missing-email"),
            pytest.param({"email": "a@example.com", "role": "user"}, id="missing-name"),
            pytest.param({"email": "a@example.com", "name": "No Role"}, id="missing-role"),
            pytest.param([], id="not-an-object"),
        ],
    )
    async def test_invalid_body_is_422_validation_error(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, body: Any
    ) -> None:
        tenant = await make_tenant("Contoso")
        response = await client.post(USERS, json=body, headers=tenant.headers[Role.ADMINISTRATOR])
        problem = assert_problem(response, 422, "validation_error")
        assert problem["errors"]
        assert len(await list_ids(client, tenant)) == len(Role)


class TestList:
    async def test_anonymous_gets_401_not_authenticated(self, client: httpx.AsyncClient) -> None:
        assert_problem(await client.get(USERS), 401, "not_authenticated")

    @pytest.mark.parametrize("role", NON_MANAGING_ROLES, ids=lambda r: r.value)
    async def test_user_and_read_only_get_403_forbidden(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, role: Role
    ) -> None:
        tenant = await make_tenant("Contoso")
        assert_problem(await client.get(USERS, headers=tenant.headers[role]), 403, "forbidden")

    @pytest.mark.parametrize("actor", MANAGING_ROLES, ids=lambda r: r.value)
    async def test_lists_every_user_of_the_company_and_only_those(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, actor: Role
    ) -> None:
        tenant = await make_tenant("Contoso")
        await make_tenant("Fabrikam")
        response = await client.get(USERS, headers=tenant.headers[actor])
        assert response.status_code == 200
        body = response.json()
        assert body["next_cursor"] is None  # one page: paging is tests/users/test_paging.py
        by_id = {item["id"]: item for item in body["items"]}
        assert len(by_id) == len(body["items"])
        assert set(by_id) == {str(user.id) for user in tenant.users.values()}
        for role, user in tenant.users.items():
            item = by_id[str(user.id)]
            assert set(item) == USER_FIELDS
            assert item["role"] == role.value
            assert item["email"] == user.email


class TestGet:
    async def test_anonymous_gets_401_not_authenticated(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant
    ) -> None:
        tenant = await make_tenant("Contoso")
        response = await client.get(user_url(tenant.users[Role.USER].id))
        assert_problem(response, 401, "not_authenticated")

    @pytest.mark.parametrize("role", NON_MANAGING_ROLES, ids=lambda r: r.value)
    async def test_user_and_read_only_get_403_even_for_themselves(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, role: Role
    ) -> None:
        tenant = await make_tenant("Contoso")
        for target in (tenant.users[role], tenant.users[Role.READ_ONLY]):
            response = await client.get(user_url(target.id), headers=tenant.headers[role])
            assert_problem(response, 403, "forbidden")

    @pytest.mark.parametrize("actor", MANAGING_ROLES, ids=lambda r: r.value)
    @pytest.mark.parametrize("target", list(Role), ids=lambda r: r.value)
    async def test_administrators_and_managers_read_any_user_of_the_company(
        self,
        client: httpx.AsyncClient,
        make_tenant: MakeTenant,
        factory: Factory,
        actor: Role,
        target: Role,
    ) -> None:
        tenant = await make_tenant("Contoso")
        provider = await factory.provider(tenant.company)
        user = await factory.user(
            tenant.company, target, email="target@contoso.com", name="Tar Get", provider=provider
        )
        response = await client.get(user_url(user.id), headers=tenant.headers[actor])
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == USER_FIELDS
        assert body["id"] == str(user.id)
        assert body["email"] == "target@contoso.com"
        assert body["name"] == "Tar Get"
        assert body["role"] == target.value
        assert body["sso_provider_id"] == str(provider.id)

    async def test_unknown_id_is_404_not_found(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant
    ) -> None:
        tenant = await make_tenant("Contoso")
        response = await client.get(
            user_url(uuid.uuid4()), headers=tenant.headers[Role.ADMINISTRATOR]
        )
        assert_problem(response, 404, "not_found")

    async def test_malformed_id_is_422_validation_error(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant
    ) -> None:
        tenant = await make_tenant("Contoso")
        response = await client.get(user_url("42"), headers=tenant.headers[Role.ADMINISTRATOR])
        assert_problem(response, 422, "validation_error")


class TestUpdate:
    async def test_anonymous_gets_401_and_nothing_changes(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant
    ) -> None:
        tenant = await make_tenant("Contoso")
        target = tenant.users[Role.USER]
        before = (await read_user(client, tenant, target.id)).json()
        response = await client.patch(user_url(target.id), json={"name": "Changed"})
        assert_problem(response, 401, "not_authenticated")
        assert (await read_user(client, tenant, target.id)).json() == before

    @pytest.mark.parametrize("role", NON_MANAGING_ROLES, ids=lambda r: r.value)
    async def test_user_and_read_only_get_403_and_nothing_changes(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, role: Role
    ) -> None:
        tenant = await make_tenant("Contoso")
        target = tenant.users[Role.READ_ONLY]
        before = (await read_user(client, tenant, target.id)).json()
        response = await client.patch(
            user_url(target.id), json={"name": "Changed"}, headers=tenant.headers[role]
        )
        assert_problem(response, 403, "forbidden")
        assert (await read_user(client, tenant, target.id)).json() == before

    @pytest.mark.parametrize(("actor", "target_role", "allowed"), ACTOR_ROLE_MATRIX)
    async def test_may_change_only_users_below_own_level(
        self,
        client: httpx.AsyncClient,
        make_tenant: MakeTenant,
        factory: Factory,
        actor: Role,
        target_role: Role,
        allowed: bool,
    ) -> None:
        tenant = await make_tenant("Contoso")
        # A second user of the role, so the actor never targets themselves here.
        target = await factory.user(tenant.company, target_role, name="Before")
        before = (await read_user(client, tenant, target.id)).json()
        response = await client.patch(
            user_url(target.id), json={"name": "After"}, headers=tenant.headers[actor]
        )
        after = (await read_user(client, tenant, target.id)).json()
        if allowed:
            assert response.status_code == 200, response.text
            assert response.json()["name"] == "After"
            assert after == response.json()
            assert after["role"] == target_role.value
        else:
            assert_problem(response, 403, "forbidden")
            assert after == before

    @pytest.mark.parametrize(("actor", "granted", "allowed"), ACTOR_ROLE_MATRIX)
    async def test_role_ceiling_on_change(
        self,
        client: httpx.AsyncClient,
        make_tenant: MakeTenant,
        actor: Role,
        granted: Role,
        allowed: bool,
    ) -> None:
        tenant = await make_tenant("Contoso")
        target = tenant.users[Role.READ_ONLY]  # manageable by both administrator and manager
        before = (await read_user(client, tenant, target.id)).json()
        response = await client.patch(
            user_url(target.id), json={"role": granted.value}, headers=tenant.headers[actor]
        )
        after = (await read_user(client, tenant, target.id)).json()
        if allowed:
            assert response.status_code == 200, response.text
            assert after["role"] == granted.value
        else:
            assert_problem(response, 403, "forbidden")
            assert after == before

    @pytest.mark.parametrize(
        ("actor", "target_role"),
        [
            (Role.ADMINISTRATOR, Role.ADMINISTRATOR),
            (Role.MANAGER, Role.MANAGER),
            (Role.MANAGER, Role.ADMINISTRATOR),
        ],
        ids=lambda r: r.value,
    )
    async def test_cannot_demote_a_user_at_or_above_own_level(
        self,
        client: httpx.AsyncClient,
        make_tenant: MakeTenant,
        factory: Factory,
        actor: Role,
        target_role: Role,
    ) -> None:
        tenant = await make_tenant("Contoso")
        target = await factory.user(tenant.company, target_role)
        response = await client.patch(
            user_url(target.id), json={"role": "read_only"}, headers=tenant.headers[actor]
        )
        assert_problem(response, 403, "forbidden")
        assert (await read_user(client, tenant, target.id)).json()["role"] == target_role.value

    @pytest.mark.parametrize("actor", MANAGING_ROLES, ids=lambda r: r.value)
    @pytest.mark.parametrize(
        "body",
        [{"name": "Me Myself"}, {"role": "read_only"}, {"email": "me@contoso.com"}, {}],
        ids=["name", "role", "email", "empty"],
    )
    async def test_nobody_changes_themselves(
        self,
        client: httpx.AsyncClient,
        make_tenant: MakeTenant,
        actor: Role,
        body: dict[str, Any],
    ) -> None:
        tenant = await make_tenant("Contoso")
        me = tenant.users[actor]
        before = (await read_user(client, tenant, me.id)).json()
        response = await client.patch(user_url(me.id), json=body, headers=tenant.headers[actor])
        assert_problem(response, 403, "forbidden")
        assert (await read_user(client, tenant, me.id)).json() == before

    async def test_changes_only_the_fields_sent(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, factory: Factory
    ) -> None:
        tenant = await make_tenant("Contoso")
        provider = await factory.provider(tenant.company)
        target = await factory.user(
            tenant.company, Role.USER, email="bob@contoso.com", name="Bob", provider=provider
        )
        before = (await read_user(client, tenant, target.id)).json()
        response = await client.patch(
            user_url(target.id), json={"name": "Robert"}, headers=tenant.headers[Role.MANAGER]
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == USER_FIELDS
        assert body["name"] == "Robert"
        unchanged = ("id", "email", "role", "sso_provider_id", "created_at")
        assert {k: body[k] for k in unchanged} == {k: before[k] for k in unchanged}
        updated, previous = (datetime.fromisoformat(b["updated_at"]) for b in (body, before))
        assert updated >= previous
        assert (await read_user(client, tenant, target.id)).json() == body

    async def test_changes_email_name_role_and_provider_together(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, factory: Factory
    ) -> None:
        tenant = await make_tenant("Contoso")
        provider = await factory.provider(tenant.company)
        target = tenant.users[Role.READ_ONLY]
        response = await client.patch(
            user_url(target.id),
            json={
                "email": "carol@contoso.com",
                "name": "Carol",
                "role": "manager",
                "sso_provider_id": str(provider.id),
            },
            headers=tenant.headers[Role.ADMINISTRATOR],
        )
        assert response.status_code == 200, response.text
        body = (await read_user(client, tenant, target.id)).json()
        assert body["email"] == "carol@contoso.com"
        assert body["name"] == "Carol"
        assert body["role"] == "manager"
        assert body["sso_provider_id"] == str(provider.id)

    async def test_null_provider_unlinks_the_user(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, factory: Factory
    ) -> None:
        tenant = await make_tenant("Contoso")
        provider = await factory.provider(tenant.company)
        target = await factory.user(tenant.company, Role.USER, provider=provider)
        response = await client.patch(
            user_url(target.id),
            json={"sso_provider_id": None},
            headers=tenant.headers[Role.MANAGER],
        )
        assert response.status_code == 200, response.text
        assert (await read_user(client, tenant, target.id)).json()["sso_provider_id"] is None

    async def test_provider_of_another_company_is_422_and_nothing_changes(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, factory: Factory
    ) -> None:
        contoso = await make_tenant("Contoso")
        fabrikam = await make_tenant("Fabrikam")
        own = await factory.provider(contoso.company)
        foreign = await factory.provider(fabrikam.company)
        target = await factory.user(contoso.company, Role.USER, provider=own)
        before = (await read_user(client, contoso, target.id)).json()
        for provider_id in (foreign.id, uuid.uuid4()):
            response = await client.patch(
                user_url(target.id),
                json={"sso_provider_id": str(provider_id), "name": "Changed"},
                headers=contoso.headers[Role.ADMINISTRATOR],
            )
            assert_problem(response, 422, "sso_provider_not_found")
        assert (await read_user(client, contoso, target.id)).json() == before

    @pytest.mark.parametrize("email", ["taken@contoso.com", "TAKEN@contoso.com"])
    async def test_email_of_another_user_in_the_company_is_409_email_taken(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, factory: Factory, email: str
    ) -> None:
        tenant = await make_tenant("Contoso")
        await factory.user(tenant.company, Role.USER, email="taken@contoso.com")
        target = tenant.users[Role.READ_ONLY]
        before = (await read_user(client, tenant, target.id)).json()
        response = await client.patch(
            user_url(target.id),
            json={"email": email, "name": "Changed"},
            headers=tenant.headers[Role.ADMINISTRATOR],
        )
        assert_problem(response, 409, "email_taken")
        assert (await read_user(client, tenant, target.id)).json() == before

    async def test_changing_the_case_of_own_email_is_not_a_conflict(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, factory: Factory
    ) -> None:
        tenant = await make_tenant("Contoso")
        target = await factory.user(tenant.company, Role.USER, email="dave@contoso.com")
        response = await client.patch(
            user_url(target.id),
            json={"email": "Dave@contoso.com"},
            headers=tenant.headers[Role.MANAGER],
        )
        assert response.status_code == 200, response.text
        assert response.json()["email"] == "Dave@contoso.com"

    async def test_email_used_in_another_company_is_fine(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, factory: Factory
    ) -> None:
        contoso = await make_tenant("Contoso")
        fabrikam = await make_tenant("Fabrikam")
        await factory.user(fabrikam.company, Role.USER, email="shared@example.com")
        target = contoso.users[Role.USER]
        response = await client.patch(
            user_url(target.id),
            json={"email": "shared@example.com"},
            headers=contoso.headers[Role.ADMINISTRATOR],
        )
        assert response.status_code == 200, response.text

    async def test_the_old_email_is_free_after_a_change(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, factory: Factory
    ) -> None:
        tenant = await make_tenant("Contoso")
        target = await factory.user(tenant.company, Role.USER, email="old@contoso.com")
        headers = tenant.headers[Role.ADMINISTRATOR]
        moved = await client.patch(
            user_url(target.id), json={"email": "new@contoso.com"}, headers=headers
        )
        assert moved.status_code == 200, moved.text
        created = await client.post(
            USERS, json=new_user_body(email="OLD@contoso.com"), headers=headers
        )
        assert created.status_code == 201, created.text

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param({"name": None}, id="null-name"),
            pytest.param({"email": None}, id="null-email"),
            pytest.param({"role": None}, id="null-role"),
            pytest.param({"name": ""}, id="empty-name"),
            pytest.param({"email": "not-an-email"}, id="invalid-email"),
            pytest.param({"role": "owner"}, id="unknown-role"),
            pytest.param({"company_id": str(uuid.uuid4())}, id="unknown-company_id"),
            pytest.param({"id": str(uuid.uuid4())}, id="unknown-id"),
            pytest.param({"name": "Ok", "extra": 1}, id="unknown-extra"),
            pytest.param({"sso_provider_id": "nope"}, id="malformed-provider-id"),
        ],
    )
    async def test_invalid_body_is_422_validation_error_and_nothing_changes(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, body: dict[str, Any]
    ) -> None:
        tenant = await make_tenant("Contoso")
        target = tenant.users[Role.USER]
        before = (await read_user(client, tenant, target.id)).json()
        response = await client.patch(
            user_url(target.id), json=body, headers=tenant.headers[Role.ADMINISTRATOR]
        )
        assert_problem(response, 422, "validation_error")
        assert (await read_user(client, tenant, target.id)).json() == before

    async def test_unknown_id_is_404_not_found(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant
    ) -> None:
        tenant = await make_tenant("Contoso")
        response = await client.patch(
            user_url(uuid.uuid4()), json={"name": "X"}, headers=tenant.headers[Role.ADMINISTRATOR]
        )
        assert_problem(response, 404, "not_found")

    async def test_malformed_id_is_422_validation_error(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant
    ) -> None:
        tenant = await make_tenant("Contoso")
        response = await client.patch(
            user_url("not-a-uuid"), json={"name": "X"}, headers=tenant.headers[Role.ADMINISTRATOR]
        )
        assert_problem(response, 422, "validation_error")

    async def test_a_demoted_manager_loses_access_at_once_with_an_old_token(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant
    ) -> None:
        tenant = await make_tenant("Contoso")
        manager = tenant.users[Role.MANAGER]
        old_headers = tenant.headers[Role.MANAGER]
        assert (await client.get(USERS, headers=old_headers)).status_code == 200
        response = await client.patch(
            user_url(manager.id), json={"role": "user"}, headers=tenant.headers[Role.ADMINISTRATOR]
        )
        assert response.status_code == 200, response.text
        assert_problem(await client.get(USERS, headers=old_headers), 403, "forbidden")
        response = await client.post(USERS, json=new_user_body(), headers=old_headers)
        assert_problem(response, 403, "forbidden")
        response = await client.patch(
            user_url(tenant.users[Role.READ_ONLY].id), json={"name": "X"}, headers=old_headers
        )
        assert_problem(response, 403, "forbidden")

    async def test_a_promoted_user_gains_access_with_an_old_token(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant
    ) -> None:
        tenant = await make_tenant("Contoso")
        user = tenant.users[Role.USER]
        old_headers = tenant.headers[Role.USER]
        assert_problem(await client.get(USERS, headers=old_headers), 403, "forbidden")
        response = await client.patch(
            user_url(user.id), json={"role": "manager"}, headers=tenant.headers[Role.ADMINISTRATOR]
        )
        assert response.status_code == 200, response.text
        assert (await client.get(USERS, headers=old_headers)).status_code == 200


class TestDelete:
    async def test_anonymous_gets_401_and_the_user_stays(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant
    ) -> None:
        tenant = await make_tenant("Contoso")
        target = tenant.users[Role.USER]
        assert_problem(await client.delete(user_url(target.id)), 401, "not_authenticated")
        assert (await read_user(client, tenant, target.id)).status_code == 200

    @pytest.mark.parametrize("role", NON_MANAGING_ROLES, ids=lambda r: r.value)
    async def test_user_and_read_only_get_403_and_the_user_stays(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, role: Role
    ) -> None:
        tenant = await make_tenant("Contoso")
        target = tenant.users[Role.READ_ONLY]
        response = await client.delete(user_url(target.id), headers=tenant.headers[role])
        assert_problem(response, 403, "forbidden")
        assert (await read_user(client, tenant, target.id)).status_code == 200

    @pytest.mark.parametrize(("actor", "target_role", "allowed"), ACTOR_ROLE_MATRIX)
    async def test_may_delete_only_users_below_own_level(
        self,
        client: httpx.AsyncClient,
        make_tenant: MakeTenant,
        factory: Factory,
        actor: Role,
        target_role: Role,
        allowed: bool,
    ) -> None:
        tenant = await make_tenant("Contoso")
        target = await factory.user(tenant.company, target_role)
        response = await client.delete(user_url(target.id), headers=tenant.headers[actor])
        if allowed:
            assert response.status_code == 204, response.text
            assert response.content == b""
            assert_problem(await read_user(client, tenant, target.id), 404, "not_found")
            assert str(target.id) not in await list_ids(client, tenant)
        else:
            assert_problem(response, 403, "forbidden")
            assert (await read_user(client, tenant, target.id)).status_code == 200

    @pytest.mark.parametrize("actor", MANAGING_ROLES, ids=lambda r: r.value)
    async def test_nobody_deletes_themselves(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, actor: Role
    ) -> None:
        tenant = await make_tenant("Contoso")
        me = tenant.users[actor]
        response = await client.delete(user_url(me.id), headers=tenant.headers[actor])
        assert_problem(response, 403, "forbidden")
        assert (await read_user(client, tenant, me.id)).status_code == 200
        assert (await client.get(USERS, headers=tenant.headers[actor])).status_code == 200

    @pytest.mark.parametrize("target_role", [Role.MANAGER, Role.USER], ids=lambda r: r.value)
    async def test_a_deleted_users_tokens_fail_with_401(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, target_role: Role
    ) -> None:
        tenant = await make_tenant("Contoso")
        target = tenant.users[target_role]
        old_headers = tenant.headers[target_role]
        response = await client.delete(
            user_url(target.id), headers=tenant.headers[Role.ADMINISTRATOR]
        )
        assert response.status_code == 204, response.text
        assert_problem(await client.get(USERS, headers=old_headers), 401, "invalid_token")
        response = await client.delete(
            user_url(tenant.users[Role.READ_ONLY].id), headers=old_headers
        )
        assert_problem(response, 401, "invalid_token")
        assert (await read_user(client, tenant, tenant.users[Role.READ_ONLY].id)).status_code == 200

    async def test_deleting_leaves_the_other_users_and_frees_the_email(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, factory: Factory
    ) -> None:
        tenant = await make_tenant("Contoso")
        target = await factory.user(tenant.company, Role.USER, email="gone@contoso.com")
        before = await list_ids(client, tenant)
        headers = tenant.headers[Role.MANAGER]
        assert (await client.delete(user_url(target.id), headers=headers)).status_code == 204
        assert await list_ids(client, tenant) == before - {str(target.id)}
        response = await client.post(
            USERS, json=new_user_body(email="gone@contoso.com"), headers=headers
        )
        assert response.status_code == 201, response.text
        assert response.json()["id"] != str(target.id)

    async def test_deleting_twice_is_404_the_second_time(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant
    ) -> None:
        tenant = await make_tenant("Contoso")
        target = tenant.users[Role.USER]
        headers = tenant.headers[Role.ADMINISTRATOR]
        assert (await client.delete(user_url(target.id), headers=headers)).status_code == 204
        assert_problem(await client.delete(user_url(target.id), headers=headers), 404, "not_found")

    async def test_unknown_id_is_404_not_found(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant
    ) -> None:
        tenant = await make_tenant("Contoso")
        response = await client.delete(
            user_url(uuid.uuid4()), headers=tenant.headers[Role.ADMINISTRATOR]
        )
        assert_problem(response, 404, "not_found")

    async def test_malformed_id_is_422_validation_error(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant
    ) -> None:
        tenant = await make_tenant("Contoso")
        response = await client.delete(user_url("1"), headers=tenant.headers[Role.ADMINISTRATOR])
        assert_problem(response, 422, "validation_error")
