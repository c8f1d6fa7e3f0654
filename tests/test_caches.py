"""The hot paths' caches: a local change is seen at once, any other within a second."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx
from sqlalchemy import update

from sso_broker.caches import ENTRY_TTL, MAX_STALENESS, StaleBoundedCache, TokenCache
from sso_broker.database import create_engine, utcnow
from sso_broker.deps import AppContext
from sso_broker.models import SignInSession
from sso_broker.sessions.tokens import PACKED_IDS, SessionClaims
from sso_broker.users.models import Role
from tests.conftest import Factory, make_settings
from tests.fixtures.entra import CLIENT_ID, CLIENT_SECRET, TENANT_ID, FakeEntra
from tests.pkce import PKCE

ME = "/api/v1/auth/me"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _claims(expires_at: int, issued_at: int = 900) -> SessionClaims:
    return SessionClaims(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), issued_at, expires_at)


class TestTokenCache:
    def test_claims_come_back_packed_with_the_ids_first(self) -> None:
        cache = TokenCache(clock=FakeClock())
        claims = _claims(2000)
        key = cache.key("a.b.c")
        assert len(key) == 32  # the token's SHA-256, not the token
        assert cache.put(key, claims) == cache.get(key) == claims.pack()
        packed = cache.get(key)
        assert packed is not None
        assert len(packed) == 64
        assert SessionClaims.unpack(packed) == claims
        assert packed[:PACKED_IDS] == (
            claims.user_id.bytes + claims.company_id.bytes + claims.session_id.bytes
        )
        assert cache.get(cache.key("a.b.d")) is None

    def test_a_token_is_kept_until_its_own_exp_and_then_dropped(self) -> None:
        clock = FakeClock()
        cache = TokenCache(clock=clock)
        early, late = cache.key("early"), cache.key("late")
        cache.put(late, _claims(3000))
        cache.put(early, _claims(1500))  # cut short: its session ends sooner
        clock.now = 1499.9
        assert cache.get(early) is not None
        clock.now = 1500.0  # at exp a token is expired, as PyJWT has it
        assert cache.get(early) is None
        assert cache.get(late) is not None
        clock.now = 3000.0
        cache.put(cache.key("next"), _claims(4000))  # expired entries leave as new ones come
        assert len(cache) == 1

    def test_an_expired_token_is_not_filed(self) -> None:
        cache = TokenCache(clock=FakeClock())
        claims = _claims(1000)
        assert cache.put(cache.key("t"), claims) == claims.pack()
        cache.remember(cache.key("u"), claims)
        assert len(cache) == 0

    def test_a_full_cache_drops_its_oldest(self) -> None:
        cache = TokenCache(maxsize=3, clock=FakeClock())
        keys = [cache.key(f"t{i}") for i in range(5)]
        for key in keys:
            cache.put(key, _claims(5000))
            cache.put(key, _claims(5000))  # the same token again takes no second place
        assert len(cache) == 3
        assert [cache.get(key) is not None for key in keys] == [False, False, True, True, True]

    def test_minted_tokens_wait_for_their_first_use_among_the_last_minted(self) -> None:
        cache = TokenCache(maxsize=10, minted=2, clock=FakeClock())
        used, unused, *later = [cache.key(f"t{i}") for i in range(5)]
        cache.remember(used, _claims(5000))
        cache.remember(unused, _claims(5000))
        assert cache.get(used) is not None  # its first use: it joins the verified tokens
        for key in later:  # more tokens minted than the minted ones keep
            cache.remember(key, _claims(5000))
        assert len(cache) == 3
        assert cache.get(used) is not None  # used once, it stays
        assert cache.get(unused) is None  # never used here, it made room
        assert [cache.get(key) is not None for key in later] == [False, True, True]

    def test_used_tokens_leave_no_trace_among_the_minted_ones(self) -> None:
        """Each first use takes a token out of the minted ones: behind one never used, those
        must not pile up for its whole lifetime (it leaves after ``minted`` more)."""
        cache = TokenCache(minted=4, clock=FakeClock())
        unused = cache.key("unused")
        cache.remember(unused, _claims(5000))
        for i in range(1000):
            key = cache.key(f"t{i}")
            cache.remember(key, _claims(5000))
            assert cache.get(key) is not None
        assert cache.get(unused) is None
        assert len(cache._minted.order) <= 4
        assert len(cache) == 1000  # the used ones, all verified now


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

    async def test_a_put_keeps_the_stamp_of_the_read_it_files(self) -> None:
        """What the token endpoint files for the caller (sessions/service.py, remember): the
        same bound and the same generation check as a read through get."""
        clock = FakeClock()
        cache: StaleBoundedCache[str] = StaleBoundedCache(clock=clock)

        async def never() -> str:
            raise AssertionError("served from the cache")

        read = cache.stamp()
        clock.now += 0.5
        cache.put("k", "row", read)
        assert await cache.get("k", never) == "row"
        clock.now += ENTRY_TTL - 0.5 + 0.01  # ENTRY_TTL after the read began

        async def again() -> str:
            return "read again"

        assert await cache.get("k", again) == "read again"
        stale = cache.stamp()
        cache.clear()  # a change committed while that read ran
        cache.put("j", "old", stale)
        assert await cache.get("j", again) == "read again"


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
        before = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)
        assert before.headers["location"].startswith(entra.authorization_endpoint)
        disabled = await client.patch(
            f"/api/v1/sso-providers/{provider.id}", headers=admin, json={"enabled": False}
        )
        assert disabled.status_code == 200
        after = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)
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
        first = await client.get(f"/sso/{provider_id}/initiate", params=PKCE)
        assert first.headers["location"].endswith("error=provider_disabled")
        enabled = await client.patch(
            f"/api/v1/sso-providers/{provider_id}",
            headers=admin,
            json={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "enabled": True},
        )
        assert enabled.status_code == 200
        after = await client.get(f"/sso/{provider_id}/initiate", params=PKCE)
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
