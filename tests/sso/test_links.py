"""Identity links: made at a first sign-in (audited as ``identity.linked``) and removed,
audited as ``identity.unlinked``, when what they were made under changes — the provider's
``base_url`` or ``client_id``, the user's email or provider (README, *Identities and first
sign-in*)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sso_broker.database import session_scope
from sso_broker.deps import AppContext
from sso_broker.models import IdentityLink, SignInSession
from sso_broker.providers.models import SSOProvider
from sso_broker.users.models import Role, User
from tests.conftest import Factory
from tests.fixtures.entra import TENANT_ID, FakeEntra
from tests.pkce import code_grant
from tests.sso.helpers import (
    Setup,
    assert_error,
    count,
    disable_after_the_code_exchange,
    last_error,
    make_provider,
    set_enabled,
    setup,
    sign_in,
    signed_in_user,
)

OTHER_TENANT = "0d2e1c3b-5a4f-4e6d-8c7b-1a2b3c4d5e6f"
OTHER_CLIENT = "f1e2d3c4-b5a6-4978-8a6b-5c4d3e2f1a0b"


async def links(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    async with session_scope(sessionmaker) as session:
        return len((await session.scalars(select(IdentityLink))).all())


async def events(
    client: httpx.AsyncClient, factory: Factory, s: Setup, kind: str
) -> list[dict[str, Any]]:
    admin = await factory.user(s.company, Role.ADMINISTRATOR)
    answer = await client.get(
        "/api/v1/audit-events", params={"type": kind}, headers=await factory.headers(admin)
    )
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def linked(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, s: Setup
) -> dict[str, str]:
    """Signs ``s.person`` in once (a first sign-in: linked); the admin's headers."""
    assert await signed_in_user(client, await sign_in(client, entra, s.provider, s.person)) == (
        str(s.user.id)
    )
    admin = await factory.user(s.company, Role.ADMINISTRATOR)
    return await factory.headers(admin)


async def test_a_first_sign_in_is_audited_as_identity_linked(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
) -> None:
    s = await setup(factory)
    await linked(client, factory, entra, s)
    await linked(client, factory, entra, s)  # a later sign-in links nothing new
    (event,) = await events(client, factory, s, "identity.linked")
    assert (event["user_id"], event["provider_id"]) == (str(s.user.id), str(s.provider.id))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"base_url": OTHER_TENANT}, "provider_base_url_changed"),
        ({"client_id": OTHER_CLIENT}, "provider_client_id_changed"),
        (
            {"base_url": OTHER_TENANT, "client_id": OTHER_CLIENT},
            "provider_base_url_and_client_id_changed",
        ),
    ],
)
async def test_re_pointing_a_provider_removes_its_links(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    sessionmaker: async_sessionmaker[AsyncSession],
    change: dict[str, str],
    reason: str,
) -> None:
    s = await setup(factory)
    headers = await linked(client, factory, entra, s)
    assert await links(sessionmaker) == 1
    answer = await client.patch(
        f"/api/v1/sso-providers/{s.provider.id}", json=change, headers=headers
    )
    assert answer.status_code == 200, answer.text
    assert await links(sessionmaker) == 0
    (event,) = await events(client, factory, s, "identity.unlinked")
    assert event["details"] == {"reason": reason}
    assert event["user_id"] == str(s.user.id)


async def test_the_same_values_again_keep_the_links(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    s = await setup(factory)
    headers = await linked(client, factory, entra, s)
    same = {"base_url": TENANT_ID.upper(), "client_id": s.provider.client_id, "name": "Renamed"}
    answer = await client.patch(
        f"/api/v1/sso-providers/{s.provider.id}", json=same, headers=headers
    )
    assert answer.status_code == 200, answer.text
    assert await links(sessionmaker) == 1
    assert await events(client, factory, s, "identity.unlinked") == []


@pytest.mark.parametrize(
    ("field", "reason"),
    [("email", "user_email_changed"), ("sso_provider_id", "user_provider_changed")],
)
async def test_changing_a_users_email_or_provider_removes_their_link(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    sessionmaker: async_sessionmaker[AsyncSession],
    field: str,
    reason: str,
) -> None:
    s = await setup(factory)
    headers = await linked(client, factory, entra, s)
    other = await make_provider(factory, s.company)
    value = "renamed@contoso.com" if field == "email" else str(other.id)
    answer = await client.patch(f"/api/v1/users/{s.user.id}", json={field: value}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert await links(sessionmaker) == 0
    (event,) = await events(client, factory, s, "identity.unlinked")
    assert event["details"] == {"reason": reason}


async def test_an_email_change_in_letter_case_only_keeps_the_link(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    s = await setup(factory)
    headers = await linked(client, factory, entra, s)
    answer = await client.patch(
        f"/api/v1/users/{s.user.id}", json={"email": s.user.email.upper()}, headers=headers
    )
    assert answer.status_code == 200, answer.text
    assert await links(sessionmaker) == 1


async def test_re_pointing_a_provider_signs_out_who_it_signed_in(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
) -> None:
    s = await setup(factory)
    response = await sign_in(client, entra, s.provider, s.person)
    code = response.headers["location"].split("code=", 1)[1]
    tokens = (await client.post("/api/v1/auth/token", json=code_grant(code))).json()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert (await client.get("/api/v1/auth/me", headers=bearer)).status_code == 200
    admin = await factory.user(s.company, Role.ADMINISTRATOR)
    answer = await client.patch(
        f"/api/v1/sso-providers/{s.provider.id}",
        json={"client_id": OTHER_CLIENT},
        headers=await factory.headers(admin),
    )
    assert answer.status_code == 200, answer.text
    assert (await client.get("/api/v1/auth/me", headers=bearer)).status_code == 401


async def test_the_same_pingone_environment_pasted_another_way_is_no_re_pointing(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    env = "5c6e7f80-91a2-4b3c-8d4e-5f60718293a4"
    company = await factory.company()
    provider = await factory.provider(company, type="pingone", base_url=env)
    user = await factory.user(company, provider=provider)
    async with session_scope(sessionmaker) as session:
        session.add(
            IdentityLink(
                id=uuid.uuid4(), provider_id=provider.id, namespace="x", subject="y",
                user_id=user.id,
            )
        )  # fmt: skip
    admin = await factory.user(company, Role.ADMINISTRATOR)
    answer = await client.patch(
        f"/api/v1/sso-providers/{provider.id}",
        json={"base_url": f"https://auth.pingone.com/{env}/as"},
        headers=await factory.headers(admin),
    )
    assert answer.status_code == 200, answer.text
    assert await links(sessionmaker) == 1


# A linked identity's sign-in resolves and writes in one statement (one transaction on
# SQLite), which writes only when the link is still good: ``identity.choose_account``'s rule,
# written again in SQL (``fastpath.py``, ``fastpath_sqlite.py``). These hold the two to the
# same answer for the changes the API's own unlinking would have made first.


async def sessions_and_successes(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession],
    s: Setup,
) -> tuple[int, int]:  # fmt: skip
    opened = await count(sessionmaker, SignInSession, SignInSession.provider_id == s.provider.id)
    return opened, len(await events(client, factory, s, "sign_in.succeeded"))


@pytest.mark.parametrize("moved", ["provider", "company"])
async def test_a_link_whose_user_moved_behind_its_back_signs_no_one_in(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    sessionmaker: async_sessionmaker[AsyncSession],
    moved: str,
) -> None:
    """The user was moved by hand in the database, so the link is still there: the link no
    longer counts, and the statement that would have used it writes nothing."""
    s = await setup(factory)
    await linked(client, factory, entra, s)
    before = await sessions_and_successes(client, factory, sessionmaker, s)
    change: dict[str, Any] = {"sso_provider_id": None}
    if moved == "company":
        change = {"company_id": (await factory.company("Elsewhere")).id}
    async with session_scope(sessionmaker) as session:
        await session.execute(update(User).where(User.id == s.user.id).values(**change))
    assert await links(sessionmaker) == 1

    response = await sign_in(client, entra, s.provider, s.person)

    assert_error(response, "user_not_provisioned")
    assert await sessions_and_successes(client, factory, sessionmaker, s) == before


async def test_a_provider_disabled_during_a_linked_sign_in_signs_no_one_in(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    sessionmaker: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = await setup(factory)
    await linked(client, factory, entra, s)
    before = await sessions_and_successes(client, factory, sessionmaker, s)
    disable_after_the_code_exchange(monkeypatch, sessionmaker, s.provider)
    response = await sign_in(client, entra, s.provider, s.person)

    assert_error(response, "provider_disabled")
    await set_enabled(sessionmaker, s.provider, True)  # so that the audit log can be read
    assert await sessions_and_successes(client, factory, sessionmaker, s) == before


async def test_a_linked_sign_in_makes_the_providers_last_error_history(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    s = await setup(factory)
    await linked(client, factory, entra, s)
    async with session_scope(sessionmaker) as session:
        await session.execute(
            update(SSOProvider)
            .where(SSOProvider.id == s.provider.id)
            .values(
                last_error={"code": "idp_error", "message": "earlier", "at": "2026-01-01T00:00:00Z"}
            )
        )
    assert await last_error(client, factory, s) is not None

    await linked(client, factory, entra, s)

    assert await last_error(client, factory, s) is None


# A first sign-in resolves in one statement and, once Python has chosen the account, writes
# in another: the write checks again, in its own statement or transaction, that the provider
# is enabled and the account still associated with it (``hotpath.HotPath.write_sign_in``).


def change_after_the_resolution(
    monkeypatch: pytest.MonkeyPatch, context: AppContext, change: Callable[[], Awaitable[None]]
) -> None:
    """``change`` lands the moment the callback's resolution has answered: before a first
    sign-in's write."""
    resolve = context.fast.sign_in

    async def resolve_then_change(*args: Any, **kwargs: Any) -> Any:
        found = await resolve(*args, **kwargs)
        await change()
        return found

    monkeypatch.setattr(context.fast, "sign_in", resolve_then_change)


@pytest.mark.parametrize("change", ["provider_disabled", "user_moved_off"])
async def test_a_change_between_a_first_sign_ins_resolution_and_its_write_signs_no_one_in(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    sessionmaker: async_sessionmaker[AsyncSession],
    context: AppContext,
    monkeypatch: pytest.MonkeyPatch,
    change: str,
) -> None:
    s = await setup(factory)
    before = await sessions_and_successes(client, factory, sessionmaker, s)

    async def apply() -> None:
        if change == "provider_disabled":
            await set_enabled(sessionmaker, s.provider, False)
        else:
            async with session_scope(sessionmaker) as session:
                await session.execute(
                    update(User).where(User.id == s.user.id).values(sso_provider_id=None)
                )

    change_after_the_resolution(monkeypatch, context, apply)
    response = await sign_in(client, entra, s.provider, s.person)

    assert_error(response, "provider_disabled" if change == "provider_disabled" else (
        "user_not_provisioned"
    ))  # fmt: skip
    await set_enabled(sessionmaker, s.provider, True)  # so that the audit log can be read
    assert await links(sessionmaker) == 0
    assert await sessions_and_successes(client, factory, sessionmaker, s) == before


@asynccontextmanager
async def other_connection(context: AppContext) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own to the test's PostgreSQL database, as another replica's or
    an administrator's request would have; SQLite runs one write transaction at a time, so
    these races are PostgreSQL's alone."""
    if context.engine.dialect.name != "postgresql":
        pytest.skip("SQLite runs one write transaction at a time")
    url = make_url(context.settings.database_url).set(drivername="postgresql")
    connection = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        yield connection
    finally:
        await connection.close()


async def wait_until_blocked_by(holder: asyncpg.Connection, task: asyncio.Task[Any]) -> None:
    """Returns once some statement of the app waits for a lock ``holder`` holds (the task has
    reached it); fails if the task finishes, or nothing waits within five seconds."""
    for _ in range(500):
        waiting = await holder.fetchval(
            "SELECT count(*) FROM pg_locks l"
            " WHERE NOT l.granted AND pg_backend_pid() = ANY (pg_blocking_pids(l.pid))"
        )
        if waiting:
            return
        assert not task.done(), "it finished without waiting"
        await asyncio.sleep(0.01)
    pytest.fail("nothing waited for the lock")


async def test_on_postgresql_a_sign_in_waits_for_a_disable_in_flight_and_signs_no_one_in(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    sessionmaker: async_sessionmaker[AsyncSession],
    context: AppContext,
) -> None:
    """Under READ COMMITTED a sign-in statement that ran while a disable was being committed
    read the provider still enabled, and the disabling transaction's revocation could not see
    the session it wrote: the session outlived the kill switch. The statement now holds the
    provider's row, so it waits for the disable and reads the provider disabled."""
    async with other_connection(context) as admin:
        s = await setup(factory)
        await linked(client, factory, entra, s)
        before = await sessions_and_successes(client, factory, sessionmaker, s)
        disabling = admin.transaction()
        await disabling.start()
        await admin.execute("UPDATE sso_providers SET enabled = false WHERE id = $1", s.provider.id)
        attempt = asyncio.create_task(sign_in(client, entra, s.provider, s.person))
        await wait_until_blocked_by(admin, attempt)
        await disabling.commit()
        response = await attempt

    assert_error(response, "provider_disabled")
    await set_enabled(sessionmaker, s.provider, True)
    assert await sessions_and_successes(client, factory, sessionmaker, s) == before


async def test_on_postgresql_sign_ins_at_once_never_wait_for_each_other_while_they_write(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    sessionmaker: async_sessionmaker[AsyncSession],
    context: AppContext,
) -> None:
    """Each sign-in holds the provider's row FOR SHARE while it writes; when its statement
    also cleared the provider's last_error, it waited for every other sign-in's hold, and two
    at once waited for each other (a deadlock: one of them a server_error). Another
    sign-in's hold, played here by a connection of its own, must not stop the writing: the
    session is there while the hold lasts, and last_error is cleared once it ends."""
    async with other_connection(context) as other:
        s = await setup(factory)
        await linked(client, factory, entra, s)
        async with session_scope(sessionmaker) as session:
            await session.execute(
                update(SSOProvider)
                .where(SSOProvider.id == s.provider.id)
                .values(last_error={"code": "idp_error", "message": "earlier", "at": "2026"})
            )
        opened = await count(
            sessionmaker, SignInSession, SignInSession.provider_id == s.provider.id
        )
        holding = other.transaction()
        await holding.start()
        await other.execute("SELECT 1 FROM sso_providers WHERE id = $1 FOR SHARE", s.provider.id)
        attempt = asyncio.create_task(sign_in(client, entra, s.provider, s.person))
        await wait_until_blocked_by(other, attempt)
        written = await other.fetchval(
            "SELECT count(*) FROM sign_in_sessions WHERE provider_id = $1", s.provider.id
        )
        await holding.commit()
        response = await attempt

    assert written == opened + 1, "the sign-in's own statement waited for the other's hold"
    assert await signed_in_user(client, response) == str(s.user.id)
    assert await last_error(client, factory, s) is None


async def test_on_postgresql_a_provider_deleted_during_a_sign_in_ends_its_session(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    sessionmaker: async_sessionmaker[AsyncSession],
    context: AppContext,
) -> None:
    """A sign-in being written (its hold on the provider and its session, played by a
    connection of its own) while the provider is deleted: the deletion waits for it, then ends
    its session with the others. It used to end the others first, then wait, and the
    session committed meanwhile only lost its provider_id."""
    async with other_connection(context) as signing_in:
        s = await setup(factory)
        admin = await factory.headers(await factory.user(s.company, Role.ADMINISTRATOR))
        session_id = uuid.uuid4()
        writing = signing_in.transaction()
        await writing.start()
        await signing_in.execute(
            "SELECT 1 FROM sso_providers WHERE id = $1 FOR SHARE", s.provider.id
        )
        await signing_in.execute(
            "INSERT INTO sign_in_sessions (id, user_id, company_id, provider_id, created_at,"
            " expires_at) VALUES ($1, $2, $3, $4, now(), now() + interval '1 hour')",
            session_id, s.user.id, s.company.id, s.provider.id,
        )  # fmt: skip
        deleting = asyncio.create_task(
            client.delete(f"/api/v1/sso-providers/{s.provider.id}", headers=admin)
        )
        await wait_until_blocked_by(signing_in, deleting)
        await writing.commit()
        deleted = await deleting

    assert deleted.status_code == 204, deleted.text
    async with session_scope(sessionmaker) as session:
        ended = await session.get(SignInSession, session_id)
    assert ended is not None
    assert ended.revoked_at is not None, "the session written meanwhile outlived the deletion"
