"""The hot paths make no needless database round trips: counted, statement by statement."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlalchemy import event

from sso_broker.deps import AppContext
from sso_broker.users.models import Role
from tests.conftest import Factory
from tests.fixtures.entra import CLIENT_ID, CLIENT_SECRET, TENANT_ID, FakeEntra


@contextmanager
def statements(context: AppContext) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(str(args[2]).split()[0].upper())

    engine = context.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def test_me_is_one_query(
    client: httpx.AsyncClient, factory: Factory, context: AppContext
) -> None:
    user = await factory.user(await factory.company(), Role.USER)
    headers = await factory.headers(user)
    await client.get("/api/v1/auth/me", headers=headers)  # warm: nothing is lazily loaded
    with statements(context) as seen:
        response = await client.get("/api/v1/auth/me", headers=headers)
    assert response.status_code == 200
    assert seen == ["SELECT"], seen


async def test_initiate_reads_one_row_and_writes_nothing(
    client: httpx.AsyncClient, factory: Factory, context: AppContext, entra: FakeEntra
) -> None:
    provider = await factory.provider(
        await factory.company(),
        base_url=TENANT_ID,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        enabled=True,
    )
    await client.get(f"/sso/{provider.id}/initiate")  # warm the discovery cache
    with statements(context) as seen:
        response = await client.get(f"/sso/{provider.id}/initiate")
    assert response.status_code == 302
    assert response.headers["location"].startswith(entra.authorization_endpoint)
    assert seen == ["SELECT"], seen
    assert entra.discovery_calls == 1
