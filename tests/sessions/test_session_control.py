"""Session control (README, *Security model*): disabling a provider signs out everyone it
signed in, re-associating a user signs out what the old provider opened, and a user's live
sessions can be listed and ended — by the user, or by a role above theirs."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from sso_broker.users.models import Role
from tests.conftest import Factory
from tests.fixtures.entra import FakeEntra
from tests.pkce import code_grant
from tests.problems import assert_problem
from tests.sso.helpers import Setup, login_code, make_provider, setup, start

ME = "/api/v1/auth/me"
TOKEN = "/api/v1/auth/token"


async def signed_in(client: httpx.AsyncClient, entra: FakeEntra, s: Setup) -> dict[str, Any]:
    """A finished browser sign-in of ``s.person``: its tokens."""
    started = await start(client, s.provider)
    response = await client.get(entra.authorize(started.location, user=s.person))
    tokens = await client.post(TOKEN, json=code_grant(login_code(response)))
    assert tokens.status_code == 200, tokens.text
    result: dict[str, Any] = tokens.json()
    return result


async def me(client: httpx.AsyncClient, tokens: dict[str, Any]) -> int:
    answer = await client.get(ME, headers={"Authorization": f"Bearer {tokens['access_token']}"})
    return answer.status_code


async def refresh(client: httpx.AsyncClient, tokens: dict[str, Any]) -> int:
    answer = await client.post(
        TOKEN, json={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    return answer.status_code


async def revocations(
    client: httpx.AsyncClient, factory: Factory, s: Setup
) -> list[tuple[str | None, str]]:
    admin = await factory.user(s.company, Role.ADMINISTRATOR)
    events = await client.get(
        "/api/v1/audit-events",
        params={"type": "session.revoked"},
        headers=await factory.headers(admin),
    )
    assert events.status_code == 200, events.text
    return [(e["user_id"], e["details"]["reason"]) for e in events.json()["items"]]


async def test_disabling_a_provider_signs_out_everyone_it_signed_in(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
) -> None:
    s = await setup(factory)
    tokens = await signed_in(client, entra, s)
    other = await make_provider(factory, s.company)  # another provider of the company
    admin = await factory.user(s.company, Role.ADMINISTRATOR)
    headers = await factory.headers(admin)
    assert await me(client, tokens) == 200

    answer = await client.patch(
        f"/api/v1/sso-providers/{other.id}", json={"enabled": False}, headers=headers
    )
    assert answer.status_code == 200, answer.text
    assert await me(client, tokens) == 200, "another provider's sessions stay"

    answer = await client.patch(
        f"/api/v1/sso-providers/{s.provider.id}", json={"enabled": False}, headers=headers
    )
    assert answer.status_code == 200, answer.text
    assert await me(client, tokens) == 401
    assert await refresh(client, tokens) == 400
    assert (str(s.user.id), "provider_disabled") in await revocations(client, factory, s)


async def test_a_new_association_signs_out_what_the_old_provider_opened(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
) -> None:
    s = await setup(factory)
    tokens = await signed_in(client, entra, s)
    other = await make_provider(factory, s.company)
    admin = await factory.user(s.company, Role.ADMINISTRATOR)
    headers = await factory.headers(admin)
    url = f"/api/v1/users/{s.user.id}"

    same = await client.patch(url, json={"sso_provider_id": str(s.provider.id)}, headers=headers)
    assert same.status_code == 200, same.text
    assert await me(client, tokens) == 200, "no change, no sign-out"

    moved = await client.patch(url, json={"sso_provider_id": str(other.id)}, headers=headers)
    assert moved.status_code == 200, moved.text
    assert await me(client, tokens) == 401
    assert await refresh(client, tokens) == 400
    assert (str(s.user.id), "provider_changed") in await revocations(client, factory, s)


async def test_clearing_the_association_signs_out_too(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
) -> None:
    s = await setup(factory)
    tokens = await signed_in(client, entra, s)
    admin = await factory.user(s.company, Role.ADMINISTRATOR)
    cleared = await client.patch(
        f"/api/v1/users/{s.user.id}",
        json={"sso_provider_id": None},
        headers=await factory.headers(admin),
    )
    assert cleared.status_code == 200, cleared.text
    assert await me(client, tokens) == 401


async def test_a_users_sessions_are_listed_and_ended(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
) -> None:
    s = await setup(factory)
    first = await signed_in(client, entra, s)
    second = await signed_in(client, entra, s)
    admin = await factory.user(s.company, Role.ADMINISTRATOR)
    headers = await factory.headers(admin)
    url = f"/api/v1/users/{s.user.id}/sessions"

    listed = await client.get(url, headers=headers)
    assert listed.status_code == 200, listed.text
    items = listed.json()["items"]
    assert len(items) == 2
    assert {item["provider_id"] for item in items} == {str(s.provider.id)}
    assert set(items[0]) == {"id", "provider_id", "created_at", "expires_at"}

    ended = await client.delete(url, headers=headers)
    assert ended.status_code == 204, ended.text
    assert [await me(client, t) for t in (first, second)] == [401, 401]
    assert (await client.get(url, headers=headers)).json()["items"] == []
    assert (str(s.user.id), "revoked_by_user") in await revocations(client, factory, s)


async def test_anyone_may_end_their_own_sessions(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
) -> None:
    s = await setup(factory)
    tokens = await signed_in(client, entra, s)
    mine = {"Authorization": f"Bearer {tokens['access_token']}"}
    url = f"/api/v1/users/{s.user.id}/sessions"
    listed = await client.get(url, headers=mine)
    assert listed.status_code == 200, listed.text
    assert len(listed.json()["items"]) == 1
    assert (await client.delete(url, headers=mine)).status_code == 204
    assert await me(client, tokens) == 401


# Who may list (GET) and end (DELETE) whose sessions: the owner, a role above the owner's;
# an administrator may also end, but not list, another administrator's.
MATRIX = [
    (Role.ADMINISTRATOR, Role.MANAGER, 200, 204),
    (Role.ADMINISTRATOR, Role.USER, 200, 204),
    (Role.ADMINISTRATOR, Role.ADMINISTRATOR, 403, 204),
    (Role.MANAGER, Role.USER, 200, 204),
    (Role.MANAGER, Role.READ_ONLY, 200, 204),
    (Role.MANAGER, Role.MANAGER, 403, 403),
    (Role.MANAGER, Role.ADMINISTRATOR, 403, 403),
    (Role.USER, Role.USER, 403, 403),
    (Role.USER, Role.READ_ONLY, 403, 403),
    (Role.READ_ONLY, Role.USER, 403, 403),
]


@pytest.mark.parametrize(("actor_role", "target_role", "get", "delete"), MATRIX)
async def test_who_may_see_and_end_whose_sessions(
    client: httpx.AsyncClient,
    factory: Factory,
    actor_role: Role,
    target_role: Role,
    get: int,
    delete: int,
) -> None:
    company = await factory.company()
    actor = await factory.user(company, actor_role)
    target = await factory.user(company, target_role)
    target_headers = await factory.headers(target)  # a live session of the target's
    headers = await factory.headers(actor)
    url = f"/api/v1/users/{target.id}/sessions"

    listed = await client.get(url, headers=headers)
    if get == 200:
        assert listed.status_code == 200, listed.text
    else:
        assert_problem(listed, 403, "forbidden")
    ended = await client.delete(url, headers=headers)
    if delete == 204:
        assert ended.status_code == 204, ended.text
        assert (await client.get(ME, headers=target_headers)).status_code == 401
    else:
        assert_problem(ended, 403, "forbidden")
        assert (await client.get(ME, headers=target_headers)).status_code == 200


async def test_another_companys_user_is_not_found(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    home, away = await factory.company(), await factory.company()
    admin = await factory.user(home, Role.ADMINISTRATOR)
    stranger = await factory.user(away, Role.USER)
    headers = await factory.headers(admin)
    for method in ("GET", "DELETE"):
        answer = await client.request(
            method, f"/api/v1/users/{stranger.id}/sessions", headers=headers
        )
        assert_problem(answer, 404, "not_found")
