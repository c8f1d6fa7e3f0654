"""The SSO providers list a page at a time (README, *The admin API in short*): oldest first,
the id breaking ties, no duplicates and no gaps while providers are added, and a query plan
that reads one index range.

The cursor and limit rules every list shares are ``tests/test_paging.py``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from sso_broker.database import session_scope
from sso_broker.deps import AppContext
from sso_broker.models import Company, SSOProvider
from sso_broker.providers import repository
from tests.conftest import Database, Factory, Tenant
from tests.providers.helpers import BASE
from tests.users.test_paging import explain


async def add_providers(
    context: AppContext, company: Company, times: list[datetime]
) -> list[SSOProvider]:
    """Providers created at these times, in one transaction."""
    providers = [
        SSOProvider(
            id=uuid.uuid4(), company_id=company.id, type="entra", name=f"P{n}",
            base_url=f"t{n}.onmicrosoft.com", enabled=False, created_at=at, updated_at=at,
        )
        for n, at in enumerate(times)
    ]  # fmt: skip
    async with session_scope(context.sessionmaker) as session:
        session.add_all(providers)
    return providers


def creation_order(providers: list[SSOProvider]) -> list[str]:
    return [str(p.id) for p in sorted(providers, key=lambda p: (p.created_at, p.id))]


async def walk(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    limit: int,
    between: Callable[[], Awaitable[None]] | None = None,
) -> list[str]:
    """The ids of every page's providers, in order; ``between`` runs after each page but the
    last."""
    seen: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    for _ in range(1000):
        response = await client.get(BASE, headers=admin, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        seen += [item["id"] for item in page["items"]]
        if page["next_cursor"] is None:
            return seen
        assert len(page["items"]) == limit
        params["cursor"] = page["next_cursor"]
        if between is not None:
            await between()
    raise AssertionError("the pages never ended")


class TestWalk:
    @pytest.mark.parametrize("limit", [1, 2, 5, 200])
    async def test_every_provider_once_oldest_first_ties_by_id(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        tenant: Tenant,
        other_tenant: Tenant,
        admin: dict[str, str],
        limit: int,
    ) -> None:
        start = datetime(2020, 1, 1, tzinfo=UTC)
        # Three created in the same microsecond, and ids that run against the times.
        times = [start + timedelta(minutes=m) for m in (3, 1, 1, 1, 0, 2, 5, 4)]
        mine = await add_providers(context, tenant.company, times)
        await add_providers(context, other_tenant.company, times[:3])
        seen = await walk(client, admin, limit)
        assert seen == creation_order(mine)

    async def test_the_certificate_warnings_of_each_page_are_its_own(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        factory: Factory,
        tenant: Tenant,
        admin: dict[str, str],
    ) -> None:
        """Each page reads the certificates of its own providers only, and still reads them."""
        providers = [await factory.provider(tenant.company) for _ in range(3)]
        first = (await client.get(BASE, headers=admin, params={"limit": 2})).json()
        rest = await client.get(BASE, headers=admin, params={"cursor": first["next_cursor"]})
        assert [p["id"] for p in first["items"] + rest.json()["items"]] == creation_order(providers)


class TestConcurrentInserts:
    async def test_providers_added_while_walking_neither_repeat_nor_skip(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        tenant: Tenant,
        admin: dict[str, str],
    ) -> None:
        """After each page one provider is created through the API (newest: ahead of the
        cursor) and one is backdated into the part already read (behind it)."""
        start = datetime(2020, 1, 1, tzinfo=UTC)
        existing = await add_providers(
            context, tenant.company, [start + timedelta(hours=h) for h in range(12)]
        )
        ahead: list[str] = []
        behind: list[str] = []

        async def insert() -> None:
            body = {"type": "entra", "base_url": f"new{len(ahead)}.onmicrosoft.com"}
            created = await client.post(BASE, headers=admin, json=body)
            assert created.status_code == 201, created.text
            ahead.append(created.json()["id"])
            (old,) = await add_providers(
                context, tenant.company, [start + timedelta(minutes=len(behind))]
            )
            behind.append(str(old.id))

        seen = await walk(client, admin, 2, between=insert)
        assert len(seen) == len(set(seen)), "a provider was listed twice"
        assert seen == [str(p.id) for p in existing] + ahead  # oldest first, all of them
        assert not set(behind) & set(seen)
        assert len(behind) >= 6

    async def test_a_walk_racing_a_writer_sees_every_provider_once(
        self,
        client: httpx.AsyncClient,
        context: AppContext,
        tenant: Tenant,
        admin: dict[str, str],
    ) -> None:
        start = datetime(2020, 1, 1, tzinfo=UTC)
        existing = await add_providers(
            context, tenant.company, [start + timedelta(seconds=s) for s in range(15)]
        )
        walking = True

        async def writer() -> int:
            written = 0
            while walking and written < 50:
                body = {"type": "entra", "base_url": f"race{written}.onmicrosoft.com"}
                assert (await client.post(BASE, headers=admin, json=body)).status_code == 201
                written += 1
                await asyncio.sleep(0)
            return written

        async def walker() -> list[str]:
            nonlocal walking
            try:
                return await walk(client, admin, 2, between=lambda: asyncio.sleep(0))
            finally:
                walking = False

        written, seen = await asyncio.gather(writer(), walker())
        assert written > 0
        assert len(seen) == len(set(seen)), "a provider was listed twice"
        assert seen[:15] == [str(p.id) for p in existing]
        everyone = (await client.get(BASE, headers=admin, params={"limit": 200})).json()
        assert seen == [p["id"] for p in everyone["items"]][: len(seen)]


async def test_a_page_is_one_index_range(
    database: Database, context: AppContext, factory: Factory
) -> None:
    """Providers do not grow with users, but a page must not read all of them either."""
    company = await factory.company()
    after = (datetime(2026, 1, 1, tzinfo=UTC), uuid.uuid4())
    async with context.engine.connect() as connection, connection.begin() as transaction:
        if database.backend == "postgres":
            await connection.exec_driver_sql(
                "INSERT INTO sso_providers (id, company_id, type, name, base_url, enabled,"
                " client_auth_method, created_at, updated_at)"
                " SELECT gen_random_uuid(), c.id, 'entra', 'P', 'x.onmicrosoft.com', false,"
                " 'client_secret', now() - g * interval '1 second', now()"
                " FROM companies AS c, generate_series(1, 5000) AS g"
            )
            await connection.exec_driver_sql("ANALYZE sso_providers")
        plans = [
            await explain(connection, repository.page_query(company.id, after=key, limit=51))
            for key in (None, after)
        ]
        await transaction.rollback()
    for plan in plans:
        assert "seq scan" not in plan, plan
        assert "sort" not in plan, plan
        assert "temp b-tree" not in plan, plan
        assert "scan sso_providers" not in plan, plan
        assert "ix_sso_providers_company_created" in plan, plan
