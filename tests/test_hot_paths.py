"""The hot paths make no needless database round trips: counted, statement by statement."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import event

from sso_broker.deps import AppContext
from sso_broker.fastpath import FastPath
from sso_broker.fastpath_sqlite import SQLiteFastPath
from sso_broker.users.models import Role
from tests.conftest import Factory
from tests.fixtures.entra import (
    CLIENT_ID,
    CLIENT_SECRET,
    TENANT_ID,
    FakeEntra,
    provider_and_person,
)
from tests.pkce import PKCE, code_grant


class CountingPool:
    """The lean asyncpg pool, noting each statement's first word on its way."""

    def __init__(self, pool: Any, seen: list[str]) -> None:
        self._pool, self._seen = pool, seen

    def __getattr__(self, name: str) -> Any:
        send = getattr(self._pool, name)
        if name not in ("execute", "fetch", "fetchrow", "fetchval"):
            return send

        def counted(query: str, *args: Any) -> Any:
            self._seen.append(query.split()[0].upper())
            return send(query, *args)

        return counted


@contextmanager
def statements(context: AppContext) -> Iterator[list[str]]:
    """Every statement sent, by its first word: through SQLAlchemy, and through the hot
    paths' own (fastpath.py: asyncpg's pool; fastpath_sqlite.py: its thread's connection)."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(str(args[2]).split()[0].upper())

    engine = context.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    patches = pytest.MonkeyPatch()
    fast = context.fast
    if isinstance(fast, FastPath):
        patches.setattr(fast, "pool", CountingPool(fast.pool, seen))
    else:
        assert isinstance(fast, SQLiteFastPath)
        fast.trace(lambda sql: seen.append(sql.split()[0].upper()))
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)
        patches.undo()
        if isinstance(fast, SQLiteFastPath):
            fast.trace(None)


async def test_me_is_one_query_then_none_while_cached(
    client: httpx.AsyncClient, factory: Factory, context: AppContext
) -> None:
    user = await factory.user(await factory.company(), Role.USER)
    headers = await factory.headers(user)
    with statements(context) as cold:
        first = await client.get("/api/v1/auth/me", headers=headers)
    with statements(context) as warm:
        second = await client.get("/api/v1/auth/me", headers=headers)
    assert first.status_code == second.status_code == 200
    assert cold == ["SELECT"], cold
    assert warm == [], warm
    assert second.json() == first.json()


async def test_initiate_reads_one_row_then_nothing_and_never_writes(
    client: httpx.AsyncClient, factory: Factory, context: AppContext, entra: FakeEntra
) -> None:
    provider = await factory.provider(
        await factory.company(),
        base_url=TENANT_ID,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        enabled=True,
    )
    with statements(context) as cold:
        first = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)
    with statements(context) as warm:
        second = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)
    assert first.status_code == second.status_code == 302
    assert second.headers["location"].startswith(entra.authorization_endpoint)
    assert cold == ["SELECT"], cold
    assert warm == [], warm
    assert entra.discovery_calls == 1


async def test_provider_list_is_one_query(
    client: httpx.AsyncClient, factory: Factory, context: AppContext
) -> None:
    company = await factory.company()
    admin = await factory.user(company, Role.ADMINISTRATOR)
    headers = await factory.headers(admin)
    await client.get("/api/v1/auth/me", headers=headers)  # the caller is cached
    with statements(context) as seen:
        response = await client.get("/api/v1/sso-providers", headers=headers)
    assert response.status_code == 200
    assert seen == ["SELECT"], seen


async def test_callback_and_token_statements(
    client: httpx.AsyncClient,
    factory: Factory,
    context: AppContext,
    entra: FakeEntra,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A first sign-in (links the identity) and a later one (uses the link), statement by
    statement: the callback consumes the state, then resolves the user and writes the
    session, its login code and the audit event; the token exchange spends the code and writes the
    first refresh token in one statement (one transaction on SQLite)."""
    provider, person = await provider_and_person(factory)
    seen: dict[str, list[str]] = {}
    for attempt in ("first", "again"):
        started = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)
        back = entra.authorize(started.headers["location"], user=person)
        with statements(context) as seen[f"callback {attempt}"]:
            finished = await client.get(back)
        assert finished.status_code == 302
        code = parse_qs(urlsplit(finished.headers["location"]).query)["code"][0]
        with statements(context) as seen[f"token {attempt}"]:
            tokens = await client.post("/api/v1/auth/token", json=code_grant(code))
        assert tokens.status_code == 200, tokens.text
        # The frontend's first /me: its token was minted here and its caller read by the
        # grant, so it asks the database nothing (sessions/service.py, remember).
        bearer = {"Authorization": f"Bearer {tokens.json()['access_token']}"}
        with statements(context) as seen[f"me {attempt}"]:
            me = await client.get("/api/v1/auth/me", headers=bearer)
        assert me.status_code == 200, me.text
    assert seen["me first"] == seen["me again"] == [], seen
    if context.engine.dialect.name == "postgresql":
        # One statement for the state, one that resolves the identity and, once it is
        # linked, writes the session, its code and the event (CTEs); a first sign-in writes
        # them with its link in a third, which checks the provider and account again.
        assert seen == {
            "callback first": ["INSERT", "WITH", "WITH"],
            "token first": ["WITH"],
            "me first": [],
            "callback again": ["INSERT", "WITH"],
            "token again": ["WITH"],
            "me again": [],
        }, seen
    else:
        # SQLite has no data-modifying CTEs; in-process, its statements cost no round trip,
        # and each write is one transaction on the hot paths' thread.
        writes = ["INSERT", "INSERT", "INSERT"]
        state = ["BEGIN", "INSERT", "COMMIT"]
        spend = ["BEGIN", "DELETE", "SELECT", "INSERT", "COMMIT"]
        resolved = ["BEGIN", "SELECT", "COMMIT"]  # linked to no one yet: nothing written
        assert seen == {
            # A first sign-in checks that the provider still serves the account it chose,
            # then writes the link and its identity.linked event with the rest.
            "callback first": [
                *state,
                *resolved,
                "BEGIN",
                "SELECT",
                "INSERT",
                "INSERT",
                *writes,
                "COMMIT",
            ],
            "token first": spend,
            "me first": [],
            "callback again": [*state, "BEGIN", "SELECT", *writes, "COMMIT"],
            "token again": spend,
            "me again": [],
        }, seen


async def test_refresh_is_one_statement(
    client: httpx.AsyncClient,
    factory: Factory,
    context: AppContext,
    entra: FakeEntra,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refresh marks the token used, reads its session and stores the next token at once."""
    provider, person = await provider_and_person(factory)
    started = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)
    finished = await client.get(entra.authorize(started.headers["location"], user=person))
    code = parse_qs(urlsplit(finished.headers["location"]).query)["code"][0]
    tokens = await client.post("/api/v1/auth/token", json=code_grant(code))
    with statements(context) as seen:
        refreshed = await client.post(
            "/api/v1/auth/token",
            json={"grant_type": "refresh_token", "refresh_token": tokens.json()["refresh_token"]},
        )
    assert refreshed.status_code == 200, refreshed.text
    if context.engine.dialect.name == "postgresql":
        assert seen == ["WITH"], seen
    else:
        assert seen == ["BEGIN", "UPDATE", "SELECT", "INSERT", "COMMIT"], seen
