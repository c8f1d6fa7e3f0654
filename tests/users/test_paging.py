"""The users list a page at a time (README, *The admin API in short*): by email, the
``email`` and ``sso_provider_id`` filters, no duplicates and no gaps while users are added,
and query plans that stay one index range at a million users.

The cursor and limit rules every list shares are ``tests/test_paging.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx
import pytest
from sqlalchemy import ClauseElement, text
from sqlalchemy.ext.asyncio import AsyncConnection

from sso_broker.database import session_scope
from sso_broker.deps import AppContext
from sso_broker.models import Company, SSOProvider, User
from sso_broker.users import repository
from sso_broker.users.models import Role
from sso_broker.users.repository import normalize_email
from tests.conftest import Database, Factory, Tenant
from tests.problems import assert_problem

MakeTenant = Callable[[str], Awaitable[Tenant]]
USERS = "/api/v1/users"


async def add_users(
    context: AppContext,
    company: Company,
    emails: Sequence[str],
    provider: SSOProvider | None = None,
) -> list[User]:
    """Users with these emails, in one transaction."""
    users = [
        User(
            id=uuid.uuid4(), company_id=company.id, email=email,
            email_normalized=normalize_email(email), name="Listed", role=Role.USER,
            sso_provider_id=provider.id if provider else None,
        )
        for email in emails
    ]  # fmt: skip
    async with session_scope(context.sessionmaker) as session:
        session.add_all(users)
    return users


async def walk(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    limit: int,
    between: Callable[[list[dict[str, Any]]], Awaitable[None]] | None = None,
    **filters: str,
) -> list[dict[str, Any]]:
    """Every item of every page, in order; ``between`` runs after each page but the last."""
    seen: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit, **filters}
    for _ in range(1000):
        response = await client.get(USERS, headers=headers, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"items", "next_cursor"}
        assert len(page["items"]) <= limit
        seen += page["items"]
        if page["next_cursor"] is None:
            return seen
        assert len(page["items"]) == limit  # only the last page is short
        params["cursor"] = page["next_cursor"]
        if between is not None:
            await between(page["items"])
    raise AssertionError("the pages never ended")


def emails(items: list[dict[str, Any]]) -> list[str]:
    return [item["email"] for item in items]


async def in_one_page(client: httpx.AsyncClient, headers: dict[str, str]) -> list[str]:
    """The ids of every user in the database's order, read in one page (no cursor)."""
    page = (await client.get(USERS, headers=headers, params={"limit": 200})).json()
    assert page["next_cursor"] is None
    return [item["id"] for item in page["items"]]


def assert_once_in_order(seen: list[dict[str, Any]], everyone: list[str]) -> None:
    """Every user seen once, in the order of ``everyone`` (the database's collation decides
    the order of punctuation, so it is not re-sorted here)."""
    ids = [item["id"] for item in seen]
    assert len(ids) == len(set(ids)), "a user was listed twice"
    assert [i for i in everyone if i in set(ids)] == ids, "pages out of order"


class TestWalk:
    @pytest.mark.parametrize("limit", [1, 2, 3, 7, 50, 200])
    async def test_every_user_once_in_email_order(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, context: AppContext, limit: int
    ) -> None:
        tenant = await make_tenant("Contoso")
        other = await make_tenant("Fabrikam")
        # Mixed case: addresses that sort differently raw and folded.
        addresses = [f"{c}{n}@example.com" for c in "aBcZy" for n in range(9)]
        await add_users(context, tenant.company, addresses)
        await add_users(context, other.company, [f"other{n}@example.com" for n in range(5)])
        admin = tenant.headers[Role.ADMINISTRATOR]

        seen = await walk(client, admin, limit)
        assert_once_in_order(seen, await in_one_page(client, admin))
        expected = {*addresses, *(u.email for u in tenant.users.values())}
        assert set(emails(seen)) == expected
        assert len(seen) == len(expected)
        # By email as stored (ASCII letters folded); these letters and digits sort alike in
        # every collation.
        listed = [normalize_email(e) for e in emails(seen) if e in addresses]
        assert listed == sorted(normalize_email(e) for e in addresses)

    async def test_managers_page_too(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, context: AppContext
    ) -> None:
        tenant = await make_tenant("Contoso")
        await add_users(context, tenant.company, [f"m{n}@example.com" for n in range(5)])
        seen = await walk(client, tenant.headers[Role.MANAGER], 2)
        assert len(seen) == 9
        assert_once_in_order(seen, await in_one_page(client, tenant.headers[Role.MANAGER]))

    @pytest.mark.parametrize("role", [Role.USER, Role.READ_ONLY])
    async def test_others_are_refused_before_the_cursor_is_read(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, role: Role
    ) -> None:
        tenant = await make_tenant("Contoso")
        response = await client.get(
            USERS, headers=tenant.headers[role], params={"cursor": "garbage"}
        )
        assert_problem(response, 403, "forbidden")

    async def test_a_cursor_of_another_company_shows_only_your_own_users(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, context: AppContext
    ) -> None:
        """A cursor is a position, not a permission: the list stays the caller's company's."""
        a = await make_tenant("Contoso")
        b = await make_tenant("Fabrikam")
        await add_users(context, a.company, [f"a{n}@example.com" for n in range(4)])
        await add_users(context, b.company, [f"b{n}@example.com" for n in range(4)])
        first = await client.get(USERS, headers=a.headers[Role.ADMINISTRATOR], params={"limit": 1})
        cursor = first.json()["next_cursor"]
        answer = await client.get(
            USERS, headers=b.headers[Role.ADMINISTRATOR], params={"cursor": cursor}
        )
        assert answer.status_code == 200
        listed = {item["id"] for item in answer.json()["items"]}
        assert listed
        assert listed <= {
            item["id"] for item in await walk(client, b.headers[Role.ADMINISTRATOR], 200)
        }
        assert listed.isdisjoint(
            item["id"] for item in await walk(client, a.headers[Role.ADMINISTRATOR], 200)
        )


class TestFilters:
    async def test_email_is_exact_and_compared_as_emails_are(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, context: AppContext
    ) -> None:
        tenant = await make_tenant("Contoso")
        other = await make_tenant("Fabrikam")
        (alice,) = await add_users(context, tenant.company, ["Alice@Example.com"])
        await add_users(context, tenant.company, ["alice@example.co", "xalice@example.com"])
        await add_users(context, other.company, ["bob@example.com"])
        admin = tenant.headers[Role.ADMINISTRATOR]

        for asked in ("Alice@Example.com", "alice@example.com", "ALICE@EXAMPLE.COM"):
            answer = await client.get(USERS, headers=admin, params={"email": asked})
            assert answer.status_code == 200
            assert [i["id"] for i in answer.json()["items"]] == [str(alice.id)], asked
            assert answer.json()["next_cursor"] is None
        for asked in ("alice@", "lice@example.com", "bob@example.com"):  # bob: other company
            answer = await client.get(USERS, headers=admin, params={"email": asked})
            assert answer.json() == {"items": [], "next_cursor": None}, asked
        # ASCII folding only, as stored: the Kelvin sign is not a "k".
        await add_users(context, tenant.company, ["kim@example.com"])
        answer = await client.get(USERS, headers=admin, params={"email": "\u212aim@example.com"})
        assert answer.json()["items"] == []

    # NUL reached PostgreSQL as a 500; no email holds a control character.
    @pytest.mark.parametrize(
        "email", ["", "a" * 255 + "@example.com", "\x00", "a\x00@example.com", "a\n@example.com"]
    )
    async def test_an_empty_overlong_or_control_character_email_is_422(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, email: str
    ) -> None:
        tenant = await make_tenant("Contoso")
        response = await client.get(
            USERS, headers=tenant.headers[Role.ADMINISTRATOR], params={"email": email}
        )
        body = assert_problem(response, 422, "validation_error")
        assert body["errors"][0]["loc"] == ["query", "email"]

    async def test_provider_lists_its_users_page_by_page(
        self,
        client: httpx.AsyncClient,
        make_tenant: MakeTenant,
        context: AppContext,
        factory: Factory,
    ) -> None:
        tenant = await make_tenant("Contoso")
        entra = await factory.provider(tenant.company)
        okta = await factory.provider(tenant.company, type="okta", base_url="x.okta.com")
        linked = await add_users(
            context, tenant.company, [f"e{n}@example.com" for n in range(7)], entra
        )
        await add_users(context, tenant.company, [f"o{n}@example.com" for n in range(3)], okta)
        await add_users(context, tenant.company, [f"n{n}@example.com" for n in range(3)])
        admin = tenant.headers[Role.ADMINISTRATOR]

        seen = await walk(client, admin, 2, sso_provider_id=str(entra.id))
        assert [item["id"] for item in seen] == [str(u.id) for u in linked]
        assert {item["sso_provider_id"] for item in seen} == {str(entra.id)}
        both = await client.get(
            USERS,
            headers=admin,
            params={"sso_provider_id": str(okta.id), "email": "O1@example.com"},
        )
        assert emails(both.json()["items"]) == ["o1@example.com"]
        nobody = await client.get(
            USERS,
            headers=admin,
            params={"sso_provider_id": str(okta.id), "email": "e1@example.com"},
        )
        assert nobody.json() == {"items": [], "next_cursor": None}

    async def test_another_companys_provider_answers_as_one_that_does_not_exist(
        self,
        client: httpx.AsyncClient,
        make_tenant: MakeTenant,
        context: AppContext,
        factory: Factory,
    ) -> None:
        """As a request body naming it does (README, *The admin API in short*): ``422
        sso_provider_not_found``, word for word the same, and nothing of its users."""
        tenant = await make_tenant("Contoso")
        other = await make_tenant("Fabrikam")
        theirs = await factory.provider(other.company)
        await add_users(context, other.company, ["secret@fabrikam.com"], theirs)
        admin = tenant.headers[Role.ADMINISTRATOR]

        foreign = await client.get(USERS, headers=admin, params={"sso_provider_id": str(theirs.id)})
        unknown = await client.get(
            USERS, headers=admin, params={"sso_provider_id": str(uuid.uuid4())}
        )
        body = assert_problem(foreign, 422, "sso_provider_not_found")
        assert body == assert_problem(unknown, 422, "sso_provider_not_found")
        assert "fabrikam" not in foreign.text.lower()
        malformed = await client.get(USERS, headers=admin, params={"sso_provider_id": "nope"})
        assert_problem(malformed, 422, "validation_error")


class TestConcurrentInserts:
    async def test_inserts_before_and_after_the_cursor_neither_repeat_nor_skip(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, context: AppContext
    ) -> None:
        """After every page, a user is added before the position reached and one after it:
        every user that existed at the start is listed exactly once, those added behind
        are not listed, those added ahead are, in order."""
        tenant = await make_tenant("Contoso")
        admin = tenant.headers[Role.ADMINISTRATOR]
        # u0100, u0200, …: room for new addresses between any two. Letters and digits only,
        # so that they sort alike in every collation.
        await add_users(
            context, tenant.company, [f"u{n:04d}@example.com" for n in range(100, 4000, 100)]
        )
        at_start = set(await in_one_page(client, admin))
        behind: list[str] = []
        ahead: list[str] = []
        counter = itertools.count(1)

        async def insert(page: list[dict[str, Any]]) -> None:
            reached = re.match(r"u(\d{4})", page[-1]["email"])
            if reached is None:
                return  # the tenant's own users
            n, last = next(counter), reached[0]  # say u0200 or u0200a1
            before = f"u{int(last[1:]) - 1:04d}b{n}@example.com"  # u0199b1: behind the cursor
            after = f"{last}a{n}@example.com"  # u0200a1, u0200a1a2: next after the cursor
            for email, into in ((before, behind), (after, ahead)):
                body = {"email": email, "name": "Newcomer", "role": "user"}
                created = await client.post(USERS, headers=admin, json=body)
                assert created.status_code == 201, created.text
                into.append(created.json()["id"])

        seen = await walk(client, admin, 3, between=insert)
        ids = [item["id"] for item in seen]
        assert_once_in_order(seen, await in_one_page(client, admin))
        assert at_start <= set(ids), "a user that existed at the start was skipped"
        assert not set(behind) & set(ids), "a user added behind the cursor showed up"
        assert set(ahead) <= set(ids), "a user added ahead of the cursor was skipped"
        assert len(behind) >= 10  # the walk did insert

    async def test_a_walk_racing_a_writer_sees_every_user_once(
        self, client: httpx.AsyncClient, make_tenant: MakeTenant, context: AppContext
    ) -> None:
        """The same, with the writer really running alongside (its own requests, as fast as
        they go), and addresses spread all over the order."""
        tenant = await make_tenant("Contoso")
        admin = tenant.headers[Role.ADMINISTRATOR]
        await add_users(
            context, tenant.company, [f"{c}{n}@example.com" for c in "bdfhj" for n in range(8)]
        )
        at_start = set(await in_one_page(client, admin))
        walking = True

        async def writer() -> int:
            written = 0
            while walking and written < 100:
                email = f"{'acegik'[written % 6]}{written}@example.com"
                body = {"email": email, "name": "Newcomer", "role": "user"}
                assert (await client.post(USERS, headers=admin, json=body)).status_code == 201
                written += 1
                await asyncio.sleep(0)
            return written

        async def walker() -> list[dict[str, Any]]:
            nonlocal walking
            try:
                return await walk(client, admin, 2, between=lambda _: asyncio.sleep(0))
            finally:
                walking = False

        written, seen = await asyncio.gather(writer(), walker())
        assert written > 0
        assert_once_in_order(seen, await in_one_page(client, admin))
        assert at_start <= {item["id"] for item in seen}, "a user there from the start was skipped"


class TestPlans:
    """At a million users a list must read one index range: never the whole table, never
    a sort of all of a company's (or a provider's) users. The planner is asked about the
    very queries the list runs, on a table big enough for its statistics to matter."""

    VARIANTS: dict[str, dict[str, Any]] = {
        "company": {},
        "company-after": {"after": "u5000@example.com"},
        "email": {"email": "U5000@example.com"},
        "provider": {"provider": True},
        "provider-after": {"provider": True, "after": "u5000@example.com"},
    }

    async def test_each_page_is_one_index_range(
        self, database: Database, context: AppContext, factory: Factory
    ) -> None:
        company = await factory.company()
        provider = await factory.provider(company)
        plans: dict[str, str] = {}
        async with context.engine.connect() as connection, connection.begin() as transaction:
            if database.backend == "postgres":
                await _fill_postgres(connection, company.id, provider.id)
            for variant, spec in self.VARIANTS.items():
                query = repository.page_query(
                    company.id,
                    email=spec.get("email"),
                    sso_provider_id=provider.id if spec.get("provider") else None,
                    after=spec.get("after"),
                    limit=51,
                )
                plans[variant] = await explain(connection, query)
            await transaction.rollback()
        # The unique constraint's index is sqlite_autoindex_users_2 on SQLite.
        unique = "uq_users_company_id" if database.backend == "postgres" else "autoindex_users"
        for variant, plan in plans.items():
            assert "seq scan" not in plan, (variant, plan)  # PostgreSQL: the whole table
            assert "sort" not in plan, (variant, plan)  # PostgreSQL: every row, then a sort
            assert "temp b-tree" not in plan, (variant, plan)  # SQLite: a sort
            assert "scan users" not in plan, (variant, plan)  # SQLite: the whole table
            index = "ix_users_provider_email" if "provider" in variant else unique
            assert index in plan, (variant, plan)


async def _fill_postgres(
    connection: AsyncConnection, company_id: uuid.UUID, provider_id: uuid.UUID
) -> None:
    """20,000 users of the company, one in fifty with the provider, and 5,000 of another
    company; then fresh statistics (a test transaction: rolled back afterwards)."""
    other = uuid.uuid4()
    await connection.execute(
        text("INSERT INTO companies (id, name, created_at, updated_at)"
             " VALUES (:id, 'Other', now(), now())"),
        {"id": other},
    )  # fmt: skip
    for company, share, count in ((company_id, provider_id, 20000), (other, None, 5000)):
        await connection.execute(
            text(
                "INSERT INTO users (id, company_id, email, email_normalized, name, role,"
                " sso_provider_id, created_at, updated_at)"
                " SELECT gen_random_uuid(), :company, 'u' || g || '@example.com',"
                " 'u' || g || '@example.com', 'U', 'user',"
                " CASE WHEN g % 50 = 0 THEN CAST(:provider AS uuid) END, now(), now()"
                " FROM generate_series(1, :count) AS g"
            ),
            {"company": company, "provider": share, "count": count},
        )
    await connection.execute(text("ANALYZE users"))


async def explain(connection: AsyncConnection, query: ClauseElement) -> str:
    """The database's plan for ``query``, lower-cased (PostgreSQL's EXPLAIN, SQLite's
    EXPLAIN QUERY PLAN)."""
    sql = str(query.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))
    explain = "EXPLAIN " if connection.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
    rows = await connection.exec_driver_sql(explain + sql)
    return "\n".join(str(row[-1]) for row in rows).lower()
