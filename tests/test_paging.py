"""What every paged list shares (``sso_broker/paging.py``, README *The admin API in short*):
``limit`` 1 to 200 (default 50), an opaque ``cursor``, ``{"items", "next_cursor"}``, and
``422 validation_error`` for a cursor the service did not make, saying what to do.

Each list's own order, filters and behaviour under concurrent inserts are in
``tests/users/test_paging.py`` and ``tests/providers/test_paging.py``.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from sso_broker.audit import service as audit
from sso_broker.audit.service import EventType
from sso_broker.database import session_scope
from sso_broker.deps import AppContext
from sso_broker.models import SSOProvider, User
from sso_broker.paging import CURSOR_MAX, Keyset, read_text, read_time_and_id, text
from sso_broker.users.models import Role
from sso_broker.users.repository import normalize_email
from tests.conftest import Tenant
from tests.problems import assert_problem

USERS = "/api/v1/users"
PROVIDERS = "/api/v1/sso-providers"
AUDIT = "/api/v1/audit-events"
LISTS = [USERS, PROVIDERS, AUDIT]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def forged(*parts: Any) -> str:
    return b64(json.dumps(list(parts)).encode())


async def fill(context: AppContext, tenant: Tenant, count: int) -> None:
    """``count`` more users, providers (all created at the same instant: the id orders
    them) and audit events, in one transaction."""
    now = datetime.now(UTC)
    async with session_scope(context.sessionmaker) as session:
        for n in range(count):
            email = f"fill-{n:04d}@example.com"
            user = User(
                id=uuid.uuid4(), company_id=tenant.company.id, email=email,
                email_normalized=normalize_email(email), name="Filler", role=Role.USER,
            )  # fmt: skip
            session.add(user)
            audit.record(session, tenant.company.id, EventType.USER_CREATED, user_id=user.id)
            session.add(
                SSOProvider(
                    id=uuid.uuid4(), company_id=tenant.company.id, type="entra",
                    name=f"P{n}", base_url=f"t{n}.onmicrosoft.com", enabled=False,
                    created_at=now, updated_at=now,
                )
            )  # fmt: skip


async def cursor_of(client: httpx.AsyncClient, admin: dict[str, str], path: str) -> str:
    page = (await client.get(path, headers=admin, params={"limit": 1})).json()
    assert page["next_cursor"], page
    cursor: str = page["next_cursor"]
    return cursor


class TestLimit:
    @pytest.mark.parametrize("path", LISTS)
    async def test_default_is_50_and_bounds_are_1_and_200(
        self, client: httpx.AsyncClient, make_tenant: Any, context: AppContext, path: str
    ) -> None:
        tenant: Tenant = await make_tenant()
        admin = tenant.headers[Role.ADMINISTRATOR]
        await fill(context, tenant, 210)

        default = (await client.get(path, headers=admin)).json()
        assert len(default["items"]) == 50
        assert default["next_cursor"]
        one = (await client.get(path, headers=admin, params={"limit": 1})).json()
        assert len(one["items"]) == 1
        assert one["next_cursor"]
        assert one["items"][0] == default["items"][0]
        most = (await client.get(path, headers=admin, params={"limit": 200})).json()
        assert len(most["items"]) == 200
        assert most["next_cursor"]
        assert most["items"][:50] == default["items"]

    @pytest.mark.parametrize("path", LISTS)
    @pytest.mark.parametrize("limit", ["0", "201", "-1", "1.5", "many", ""])
    async def test_out_of_bounds_is_422(
        self, client: httpx.AsyncClient, make_tenant: Any, path: str, limit: str
    ) -> None:
        tenant: Tenant = await make_tenant()
        response = await client.get(
            path, headers=tenant.headers[Role.ADMINISTRATOR], params={"limit": limit}
        )
        body = assert_problem(response, 422, "validation_error")
        assert body["errors"][0]["loc"] == ["query", "limit"]

    @pytest.mark.parametrize("path", LISTS)
    async def test_a_page_exactly_full_is_the_last_one(
        self, client: httpx.AsyncClient, make_tenant: Any, context: AppContext, path: str
    ) -> None:
        tenant: Tenant = await make_tenant()
        admin = tenant.headers[Role.ADMINISTRATOR]
        await fill(context, tenant, 3)
        everything = (await client.get(path, headers=admin, params={"limit": 200})).json()
        count = len(everything["items"])
        assert count
        assert everything["next_cursor"] is None
        exact = (await client.get(path, headers=admin, params={"limit": count})).json()
        assert exact == everything
        if count > 1:
            short = (await client.get(path, headers=admin, params={"limit": count - 1})).json()
            assert short["next_cursor"]
            rest = await client.get(
                path, headers=admin, params={"limit": count, "cursor": short["next_cursor"]}
            )
            assert rest.json() == {"items": everything["items"][-1:], "next_cursor": None}


# Cursors the service never gave out, whatever the list.
GARBAGE = {
    "not base64": "not-a-cursor!",
    "empty": "",
    "padding only": "====",
    "not JSON": b64(b"\xff\xfe garbage"),
    "JSON object": b64(b'{"users": 1}'),
    "JSON number": b64(b"42"),
    "empty list": forged(),
    "no key": forged("users"),
    "numbers in it": forged("users", 1, 2),
    "unknown list": forged("companies", "x"),
    "deeply nested": b64(b"[" * 1100),
    "not ASCII": "ü" + forged("users", "a@example.com"),
    "too long": "A" * (CURSOR_MAX + 1),
}


class TestCursor:
    @pytest.mark.parametrize("path", LISTS)
    @pytest.mark.parametrize("cursor", list(GARBAGE.values()), ids=list(GARBAGE))
    async def test_a_cursor_the_service_did_not_make_is_422(
        self, client: httpx.AsyncClient, make_tenant: Any, path: str, cursor: str
    ) -> None:
        tenant: Tenant = await make_tenant()
        response = await client.get(
            path, headers=tenant.headers[Role.ADMINISTRATOR], params={"cursor": cursor}
        )
        body = assert_problem(response, 422, "validation_error")
        assert "next_cursor" in body["detail"], body
        assert "without a cursor" in body["detail"], body
        assert cursor not in body["detail"] or not cursor  # never echoed

    @pytest.mark.parametrize(
        ("path", "cursor"),
        [
            (USERS, forged("users", "a@example.com", "b@example.com")),
            (PROVIDERS, forged("sso-providers", "2026-01-01T00:00:00+00:00")),
            (PROVIDERS, forged("sso-providers", "2026-01-01T00:00:00", str(uuid.uuid4()))),
            (PROVIDERS, forged("sso-providers", "yesterday", str(uuid.uuid4()))),
            (PROVIDERS, forged("sso-providers", "2026-01-01T00:00:00+00:00", "not-a-uuid")),
            (AUDIT, forged("audit-events", "2026-01-01T00:00:00", str(uuid.uuid4()))),
            # Text no stored key holds; PostgreSQL cannot even compare with NUL (was a 500).
            # Aware, but its UTC is before the calendar: overflowed at the query (was a 500).
            (PROVIDERS, forged("sso-providers", "0001-01-01T00:00:00+14:00", str(uuid.uuid4()))),
            (AUDIT, forged("audit-events", "0001-01-01T00:00:00+14:00", str(uuid.uuid4()))),
            (USERS, forged("users", "a\u0000@example.com")),
            (USERS, b64(b'["users", "\\ud800@example.com"]')),
        ],
        ids=[
            "users-extra",
            "providers-short",
            "naive",
            "not-a-time",
            "not-an-id",
            "audit-naive",
            "providers-before-the-calendar",
            "audit-before-the-calendar",
            "users-nul",
            "users-lone-surrogate",
        ],
    )
    async def test_a_key_of_the_wrong_shape_is_422(
        self, client: httpx.AsyncClient, make_tenant: Any, path: str, cursor: str
    ) -> None:
        tenant: Tenant = await make_tenant()
        response = await client.get(
            path, headers=tenant.headers[Role.ADMINISTRATOR], params={"cursor": cursor}
        )
        assert_problem(response, 422, "validation_error")

    @pytest.mark.parametrize("source", LISTS)
    @pytest.mark.parametrize("target", LISTS)
    async def test_another_lists_cursor_is_422(
        self,
        client: httpx.AsyncClient,
        make_tenant: Any,
        context: AppContext,
        source: str,
        target: str,
    ) -> None:
        tenant: Tenant = await make_tenant()
        admin = tenant.headers[Role.ADMINISTRATOR]
        await fill(context, tenant, 2)
        cursor = await cursor_of(client, admin, source)
        response = await client.get(target, headers=admin, params={"cursor": cursor})
        if source == target:
            assert response.status_code == 200, response.text
        else:
            body = assert_problem(response, 422, "validation_error")
            assert target.removeprefix("/api/v1/") in body["detail"]

    async def test_the_longest_cursor_fits(
        self, client: httpx.AsyncClient, make_tenant: Any
    ) -> None:
        """The limit leaves room for a users cursor of a 254-character, 4-byte-per-character
        email; a cursor at the limit is read, not refused for its length."""
        tenant: Tenant = await make_tenant()
        longest = USERS_KEYSET.cursor("\U0001f600" * 254)
        assert len(longest) <= CURSOR_MAX
        response = await client.get(
            USERS, headers=tenant.headers[Role.ADMINISTRATOR], params={"cursor": longest}
        )
        assert response.json() == {"items": [], "next_cursor": None}


USERS_KEYSET = Keyset[str]("users", text, read_text)


def test_cursors_are_opaque_url_safe_and_round_trip() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    row_id = uuid.uuid4()
    keyset = Keyset("sso-providers", lambda k: [k[0].isoformat(), str(k[1])], read_time_and_id)
    cursor = keyset.cursor((at, row_id))
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert keyset.after(cursor) == (at, row_id)
    assert keyset.after(None) is None
    odd = "o'brien+tag/ü@Exämple.com"
    assert USERS_KEYSET.after(USERS_KEYSET.cursor(odd)) == odd
