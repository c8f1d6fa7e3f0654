"""The hot paths' caches: a local change is seen at once, any other within a second."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
from sqlalchemy import update

from sso_broker.caches import ENTRY_TTL, MAX_STALENESS, StaleBoundedCache
from sso_broker.database import create_engine, utcnow
from sso_broker.deps import AppContext
from sso_broker.models import SignInSession
from sso_broker.users.models import Role
from tests.conftest import Factory, make_settings
from tests.fixtures.entra import CLIENT_ID, CLIENT_SECRET, TENANT_ID, FakeEntra

ME = "/api/v1/auth/me"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestStaleBoundedCache:
    async def test_an_entry_expires_within_the_bound_counted_from_before_its_read(self) -> None:
        clock = FakeClock()
        cache: StaleBoundedCache[str] = StaleBoundedCache(clock=clock)
        reads: list[str] = []

        async def slow_read() -> str:
            clock.now += 0.5  # the database took half a second
            reads.append("read")
            return "row"

        assert await cache.get("k", slow_read) == "row"
        clock.now += ENTRY_TTL - 0.5 - 0.01
        assert await cache.get("k", slow_read) == "row"
        assert reads == ["read"]
        clock.now += 0.02  # ENTRY_TTL after the read began, however long it took
        await cache.get("k", slow_read)
        assert reads == ["read", "read"]
        assert ENTRY_TTL < MAX_STALENESS <= 1.0

    async def test_a_read_in_flight_while_a_change_commits_is_not_stored(self) -> None:
        cache: StaleBoundedCache[str] = StaleBoundedCache()
        started, release = asyncio.Event(), asyncio.Event()

        async def read_before_the_change() -> str:
            started.set()
            await release.wait()
            return "old"

        pending = asyncio.create_task(cache.get("k", read_before_the_change))
        await started.wait()
        cache.clear()  # a change committed here, after the read began
        release.set()
        assert await pending == "old"

        async def read_after() -> str:
            return "new"

        assert await cache.get("k", read_after) == "new"


class TestLocalChangesAreSeenAtOnce:
    async def test_logout_ends_a_cached_session(
        self, client: httpx.AsyncClient, factory: Factory
    ) -> None:
        headers = await factory.headers(await factory.user(await factory.company()))
        assert (await client.get(ME, headers=headers)).status_code == 200
        assert (await client.post("/api/v1/auth/logout", headers=headers)).status_code == 200
        after = await client.get(ME, headers=headers)
        assert after.status_code == 401
        assert after.json()["code"] == "session_expired"

    async def test_a_role_change_reaches_a_cached_caller(
        self, client: httpx.AsyncClient, factory: Factory
    ) -> None:
        company = await factory.company()
        admin = await factory.headers(await factory.user(company, Role.ADMINISTRATOR))
        user = await factory.user(company, Role.MANAGER)
        headers = await factory.headers(user)
        assert (await client.get("/api/v1/users", headers=headers)).status_code == 200
        changed = await client.patch(
            f"/api/v1/users/{user.id}", headers=admin, json={"role": "read_only"}
        )
        assert changed.status_code == 200, changed.text
        assert (await client.get("/api/v1/users", headers=headers)).status_code == 403
        assert (await client.get(ME, headers=headers)).json()["user"]["role"] == "read_only"

    async def test_a_deleted_user_is_signed_out_at_once(
        self, client: httpx.AsyncClient, factory: Factory
    ) -> None:
        company = await factory.company()
        admin = await factory.headers(await factory.user(company, Role.ADMINISTRATOR))
        user = await factory.user(company)
        headers = await factory.headers(user)
        assert (await client.get(ME, headers=headers)).status_code == 200
        assert (await client.delete(f"/api/v1/users/{user.id}", headers=admin)).status_code == 204
        assert (await client.get(ME, headers=headers)).status_code == 401

    async def test_disabling_a_provider_stops_its_cached_initiate(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        company = await factory.company()
        admin = await factory.headers(await factory.user(company, Role.ADMINISTRATOR))
        provider = await factory.provider(
            company, base_url=TENANT_ID, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
            enabled=True,
        )  # fmt: skip
        before = await client.get(f"/sso/{provider.id}/initiate")
        assert before.headers["location"].startswith(entra.authorization_endpoint)
        disabled = await client.patch(
            f"/api/v1/sso-providers/{provider.id}", headers=admin, json={"enabled": False}
        )
        assert disabled.status_code == 200
        after = await client.get(f"/sso/{provider.id}/initiate")
        assert after.headers["location"].endswith("error=provider_disabled")

    async def test_a_new_provider_replaces_a_cached_absence(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        company = await factory.company()
        admin = await factory.headers(await factory.user(company, Role.ADMINISTRATOR))
        created = await client.post(
            "/api/v1/sso-providers", headers=admin, json={"type": "entra", "base_url": TENANT_ID}
        )
        provider_id = created.json()["id"]
        first = await client.get(f"/sso/{provider_id}/initiate")
        assert first.headers["location"].endswith("error=provider_disabled")
        enabled = await client.patch(
            f"/api/v1/sso-providers/{provider_id}",
            headers=admin,
            json={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "enabled": True},
        )
        assert enabled.status_code == 200
        after = await client.get(f"/sso/{provider_id}/initiate")
        assert after.headers["location"].startswith(entra.authorization_endpoint)


class TestOtherProcessesChanges:
    async def test_a_revocation_by_another_process_is_seen_within_the_bound(
        self, client: httpx.AsyncClient, factory: Factory, context: AppContext
    ) -> None:
        """Another replica (here: another engine, which this process's events never see)
        revokes the session; the cached one answers 401 within MAX_STALENESS."""
        user = await factory.user(await factory.company())
        headers = await factory.headers(user)
        assert (await client.get(ME, headers=headers)).status_code == 200
        other = create_engine(make_settings(context.settings.database_url))
        try:
            async with other.begin() as connection:
                await connection.execute(
                    update(SignInSession)
                    .where(SignInSession.user_id == user.id)
                    .values(revoked_at=utcnow() - timedelta(seconds=1))
                )
        finally:
            await other.dispose()
        revoked_at = asyncio.get_running_loop().time()
        while (await client.get(ME, headers=headers)).status_code == 200:
            assert asyncio.get_running_loop().time() - revoked_at < MAX_STALENESS
            await asyncio.sleep(0.02)
