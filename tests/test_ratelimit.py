"""Rate limits on the public routes, counted where every replica sees them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st

from sso_broker.database import utcnow
from sso_broker.deps import AppContext
from sso_broker.main import create_app
from sso_broker.ratelimit import (
    MAX_LEASE,
    WINDOW_SECONDS,
    DatabaseCounters,
    Leases,
    Limit,
    client_key,
)
from sso_broker.redis_client import RedisClient, RedisError
from tests.conftest import (
    PUBLIC_URL,
    Database,
    Factory,
    _empty_tables,
    clear_of_a_window_edge,
    make_settings,
)
from tests.fixtures.entra import CLIENT_ID, CLIENT_SECRET, TENANT_ID, EntraUser, FakeEntra
from tests.pkce import PKCE, code_grant

REDIS_URL = "redis://127.0.0.1:6379/15"


@asynccontextmanager
async def limited_app(database: Database, **overrides: Any) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        database.url,
        rate_limit_enabled=True,
        rate_limit_sign_in_per_ip=3,
        rate_limit_sign_in_per_provider=5,
        rate_limit_token_per_ip=2,
        **overrides,
    )
    app = create_app(settings)
    await clear_of_a_window_edge()
    try:
        async with app.router.lifespan_context(app):
            yield app
    finally:
        await _empty_tables(database.url)


def client_from(app: FastAPI, ip: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL)


def unique_ip() -> str:
    raw = uuid.uuid4().bytes
    return f"10.{raw[0]}.{raw[1]}.{raw[2]}"


class TestSignInRoutes:
    async def test_per_ip_limit_answers_429_with_retry_after(self, database: Database) -> None:
        async with limited_app(database) as app, client_from(app, unique_ip()) as client:
            provider = uuid.uuid4()
            answers = [
                (await client.get(f"/sso/{provider}/initiate", params=PKCE)) for _ in range(4)
            ]
        assert [a.status_code for a in answers[:3]] == [302, 302, 302]
        limited = answers[3]
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= WINDOW_SECONDS
        assert limited.headers["content-type"].startswith("text/html")
        assert "Too many sign-in attempts" in limited.text

    @pytest.mark.parametrize("segment", ["x" * 65, "y" * 5000, "not-an-id"])
    async def test_a_segment_no_route_accepts_is_counted_too(
        self, database: Database, segment: str
    ) -> None:
        """A path the sign-in routes refuse (a provider segment too long to be an id) costs
        the client its budget like any other: a hostile browser cannot step around it."""
        async with limited_app(database) as app, client_from(app, unique_ip()) as client:
            answers = [
                (await client.get(f"/sso/{segment}/{route}", params=PKCE)).status_code
                for route in ("initiate", "callback", "initiate", "callback")
            ]
        assert answers == [302, 302, 302, 429]

    async def test_initiates_count_per_address_only(self, database: Database) -> None:
        """No shared bucket that anonymous requests fill stops a real sign-in: many
        addresses initiating do not exhaust the provider (README, *Rate limits*)."""
        provider = uuid.uuid4()
        async with limited_app(database) as app:
            statuses = []
            for _ in range(12):
                async with client_from(app, unique_ip()) as client:
                    statuses.append(
                        (await client.get(f"/sso/{provider}/initiate", params=PKCE)).status_code
                    )
        assert statuses == [302] * 12

    async def test_callbacks_without_a_login_state_fill_the_provider_bucket(
        self, database: Database
    ) -> None:
        provider = uuid.uuid4()
        async with limited_app(database) as app:
            statuses = []
            for _ in range(6):
                async with client_from(app, unique_ip()) as client:
                    answer = await client.get(f"/sso/{provider}/callback", params={"state": "x"})
                    statuses.append(answer.status_code)
            async with client_from(app, unique_ip()) as client:
                other = await client.get(f"/sso/{uuid.uuid4()}/callback")
        assert statuses == [302] * 5 + [429]
        assert other.status_code == 302  # another provider has its own budget

    async def test_replicas_share_the_counters(self, database: Database) -> None:
        ip, provider = unique_ip(), uuid.uuid4()
        async with limited_app(database) as first:
            settings = first.state.context.settings
            second = create_app(settings)
            async with (
                second.router.lifespan_context(second),
                client_from(first, ip) as a,
                client_from(second, ip) as b,
            ):
                statuses = [
                    (await client.get(f"/sso/{provider}/initiate", params=PKCE)).status_code
                    for client in (a, b, a, b)
                ]
        assert statuses == [302, 302, 302, 429]


class TestTokenRoute:
    async def test_per_ip_limit_is_a_problem_document(self, database: Database) -> None:
        body = code_grant("not-a-code")
        async with limited_app(database) as app, client_from(app, unique_ip()) as client:
            answers = [await client.post("/api/v1/auth/token", json=body) for _ in range(3)]
        assert [a.status_code for a in answers] == [400, 400, 429]
        problem = answers[2].json()
        assert problem["code"] == "rate_limited"
        assert answers[2].headers["content-type"] == "application/problem+json"
        assert int(answers[2].headers["retry-after"]) >= 1

    async def test_admin_routes_are_not_counted(self, database: Database) -> None:
        async with limited_app(database) as app, client_from(app, unique_ip()) as client:
            statuses = {(await client.get("/api/v1/users")).status_code for _ in range(10)}
        assert statuses == {401}


class TestDatabaseCounters:
    """The counters' statement on the hot paths' connections (fastpath.py,
    fastpath_sqlite.py), on each database."""

    async def test_hits_add_up_per_key_and_expired_counters_are_purged(
        self, database: Database
    ) -> None:
        async with limited_app(database) as app:
            store = DatabaseCounters(app.state.context.fast)
            window_end = time.time() + WINDOW_SECONDS
            first = await store.hit({"b": 2, "a": 3}, window_end)
            second = await store.hit({"a": 1, "c": 5}, window_end)
            assert first == {"a": 3, "b": 2}
            assert second == {"a": 4, "c": 5}
            # A purge removes counters of windows that ended; the live ones stay.
            fast = app.state.context.fast
            later = utcnow() + timedelta(seconds=WINDOW_SECONDS + 10)
            await fast.count_hits({"d": 1}, later + timedelta(minutes=5), purge_before=later)
            assert await store.hit({"a": 1, "d": 1}, window_end) == {"a": 1, "d": 2}

    async def test_concurrent_hits_are_all_counted(self, database: Database) -> None:
        async with limited_app(database) as app:
            store = DatabaseCounters(app.state.context.fast)
            window_end = time.time() + WINDOW_SECONDS
            await asyncio.gather(*(store.hit({"x": 1, "y": 2}, window_end) for _ in range(20)))
            assert await store.hit({"x": 0, "y": 0}, window_end) == {"x": 20, "y": 40}


class TestFailures:
    async def test_a_failing_counter_store_lets_requests_through(
        self, database: Database, caplog: pytest.LogCaptureFixture
    ) -> None:
        class Broken:
            async def hit(self, increments: dict[str, int], window_end: float) -> dict[str, int]:
                raise RedisError("down")

        async with limited_app(database) as app, client_from(app, unique_ip()) as client:
            context: AppContext = app.state.context
            context.counters.store = Broken()
            statuses = {(await client.get(f"/sso/{uuid.uuid4()}/initiate", params=PKCE)).status_code
                        for _ in range(5)}  # fmt: skip
        assert statuses == {302}
        assert any("rate limiter unavailable" in r.getMessage() for r in caplog.records)


async def _redis_reachable() -> bool:
    redis = RedisClient(REDIS_URL, timeout=1)
    try:
        return await redis.execute(("PING",)) == ["PONG"]
    except RedisError:
        return False
    finally:
        await redis.aclose()


class TestRedisCounters:
    async def test_counters_in_redis_when_a_url_names_one(
        self, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        if not await _redis_reachable():
            pytest.skip(f"no Redis at {REDIS_URL}")
        ip, provider = unique_ip(), uuid.uuid4()
        seen: list[str] = []
        original: Callable[..., Any] = RedisClient.execute

        def spy(self: RedisClient, *args: Any, **kwargs: Any) -> Any:
            seen.append("round trip")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(RedisClient, "execute", spy)
        async with (
            limited_app(database, redis_url=REDIS_URL) as app,
            client_from(app, ip) as client,
        ):
            statuses = [
                (await client.get(f"/sso/{provider}/initiate", params=PKCE)).status_code
                for _ in range(4)
            ]
        assert statuses == [302, 302, 302, 429]
        # Near the limit every hit is a round trip to Redis; the fourth is refused from the
        # total the third learned there, without asking again.
        assert len(seen) == 3


class MemoryStore:
    """The shared counter store, in memory: what every replica's Leases talk to."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.calls = 0

    async def hit(self, increments: dict[str, int], window_end: float) -> dict[str, int]:
        self.calls += 1
        for key, count in increments.items():
            self.totals[key] = self.totals.get(key, 0) + count
        return {key: self.totals[key] for key in increments}


class TestLeases:
    async def test_far_from_the_limit_one_round_trip_serves_many_requests(self) -> None:
        store = MemoryStore()
        leases = Leases(store)
        limit = [Limit("sso:ip:10.0.0.1", 1_000_000)]
        served = [await leases.allow(limit, 1, 60.0) for _ in range(1000)]
        assert all(served)
        assert store.calls <= 1000 // MAX_LEASE + 2

    async def test_near_the_limit_every_hit_is_counted_in_the_store(self) -> None:
        store = MemoryStore()
        leases = Leases(store)
        limit = [Limit("token:ip:10.0.0.2", 5)]
        served = [await leases.allow(limit, 1, 60.0) for _ in range(7)]
        assert served == [True] * 5 + [False] * 2
        assert store.totals["token:ip:10.0.0.2"] == 5  # a spent limit asks no more

    async def test_a_new_window_starts_afresh(self) -> None:
        leases = Leases(MemoryStore())
        assert [await leases.allow([Limit("k:1", 1)], 1, 60.0) for _ in range(2)] == [True, False]
        assert await leases.allow([Limit("k:2", 1)], 2, 120.0)

    @settings(max_examples=60, deadline=None)
    @given(
        limit=st.integers(min_value=1, max_value=400),
        order=st.lists(st.integers(min_value=0, max_value=2), min_size=1, max_size=600),
    )
    async def test_replicas_together_never_serve_more_than_the_limit(
        self, limit: int, order: list[int]
    ) -> None:
        store = MemoryStore()
        replicas = [Leases(store) for _ in range(3)]
        served = 0
        for replica in order:
            served += await replicas[replica].allow([Limit("sso:provider:p", limit)], 1, 60.0)
        assert served <= limit
        # Hits held unused by the other replicas stop a replica early by a small share at most.
        if len(order) >= 2 * limit:
            assert served >= limit - 2 * max(1, limit // 8)


async def test_concurrent_requests_keep_every_hit_they_reserved() -> None:
    """Ten requests find the lease empty at once and each reserves a lease: all of them are
    served later without asking the store again."""
    store = MemoryStore()
    gate = asyncio.Event()
    original = store.hit

    async def slow_hit(increments: dict[str, int], window_end: float) -> dict[str, int]:
        await gate.wait()
        return await original(increments, window_end)

    store.hit = slow_hit  # type: ignore[method-assign]
    leases = Leases(store)
    limit = [Limit("sso:ip:10.0.0.3", 1_000_000)]
    herd = [asyncio.create_task(leases.allow(limit, 1, 60.0)) for _ in range(10)]
    await asyncio.sleep(0)
    gate.set()
    assert all(await asyncio.gather(*herd))
    calls = store.calls
    served = [await leases.allow(limit, 1, 60.0) for _ in range(10 * MAX_LEASE - 10)]
    assert all(served)
    assert store.calls == calls  # every reserved hit was still there


class TestClientAddresses:
    @pytest.mark.parametrize(
        ("host", "key"),
        [
            ("203.0.113.7", "203.0.113.7"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
            ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
            ("::ffff:203.0.113.7", "203.0.113.7"),
            ("not-an-address", "invalid"),
            ("203.0.113.7, 10.0.0.1", "invalid"),
            ("", "invalid"),
        ],
    )
    def test_the_bucket_of_an_address(self, host: str, key: str) -> None:
        assert client_key(host) == key

    async def test_one_ipv6_subscriber_is_one_bucket(self, database: Database) -> None:
        """Every address of a /64 counts against one limit; another /64 has its own."""
        provider = uuid.uuid4()
        async with limited_app(database) as app:
            statuses = []
            for host in range(1, 5):
                async with client_from(app, f"2001:db8:7:7::{host:x}") as client:
                    statuses.append(
                        (await client.get(f"/sso/{provider}/initiate", params=PKCE)).status_code
                    )
            async with client_from(app, "2001:db8:7:8::1") as client:
                neighbour = await client.get(f"/sso/{provider}/initiate", params=PKCE)
        assert statuses == [302, 302, 302, 429]
        assert neighbour.status_code == 302


async def test_a_flood_from_thirty_addresses_does_not_stop_a_real_sign_in(
    database: Database, entra: FakeEntra, factory: Factory
) -> None:
    """With a provider bucket of five, thirty other addresses flooding initiate and the
    callback do not stop a browser at a fresh address from signing in."""
    company = await factory.company()
    provider = await factory.provider(
        company, base_url=TENANT_ID, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, enabled=True
    )
    person = EntraUser.make()
    await factory.user(company, email=str(person.email), provider=provider)
    async with limited_app(database) as app:
        for _ in range(30):
            async with client_from(app, unique_ip()) as flood:
                await flood.get(f"/sso/{provider.id}/initiate", params=PKCE)
                await flood.get(f"/sso/{provider.id}/callback", params={"state": "x", "code": "y"})
        async with client_from(app, unique_ip()) as browser:
            started = await browser.get(f"/sso/{provider.id}/initiate", params=PKCE)
            assert started.status_code == 302, started.text
            back = await browser.get(entra.authorize(started.headers["location"], user=person))
    assert back.status_code == 302, back.text
    assert "/sso/complete?code=" in back.headers["location"], back.headers["location"]


async def test_a_callback_with_a_login_state_counts_per_address_only(
    database: Database, entra: FakeEntra, factory: Factory
) -> None:
    """A callback whose sealed state opens skips the provider bucket but not its address's:
    a copied cookie replayed from one address stops at that address's limit."""
    company = await factory.company()
    provider = await factory.provider(
        company, base_url=TENANT_ID, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, enabled=True
    )
    async with limited_app(database) as app:
        async with client_from(app, unique_ip()) as browser:
            started = await browser.get(f"/sso/{provider.id}/initiate", params=PKCE)
            ((name, value),) = browser.cookies.items()
        state = dict(
            pair.split("=", 1) for pair in started.headers["location"].split("?", 1)[1].split("&")
        )["state"]
        # Anonymous callbacks fill the provider bucket (five) from many addresses ...
        for _ in range(6):
            async with client_from(app, unique_ip()) as noise:
                await noise.get(f"/sso/{provider.id}/callback", params={"state": "x"})
        # ... which the copied cookie's callbacks never meet: only their address's (three).
        async with client_from(app, unique_ip()) as replay:
            statuses = [
                (
                    await replay.get(
                        f"/sso/{provider.id}/callback",
                        params={"state": state, "code": "stolen"},
                        headers={"Cookie": f"{name}={value}"},
                    )
                ).status_code
                for _ in range(4)
            ]
    assert statuses == [302, 302, 302, 429]


async def test_a_callback_opens_its_login_state_once_with_the_limiter_on(
    database: Database, entra: FakeEntra, factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limiter opens the login-state cookie to choose a bucket; the callback takes that
    opened state instead of opening it again (README, *Performance*), and still signs in."""
    from sso_broker.sealing import Sealer

    company = await factory.company()
    provider = await factory.provider(
        company, base_url=TENANT_ID, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, enabled=True
    )
    person = EntraUser.make()
    await factory.user(company, email=str(person.email), provider=provider)
    async with limited_app(database) as app, client_from(app, unique_ip()) as browser:
        started = await browser.get(f"/sso/{provider.id}/initiate", params=PKCE)
        sealed = next(iter(browser.cookies.values()))
        opened: list[str] = []
        decrypt = Sealer.decrypt

        def counting(self: Sealer, token: str) -> str:
            if token == sealed:
                opened.append(token)
            return decrypt(self, token)

        monkeypatch.setattr(Sealer, "decrypt", counting)
        back = await browser.get(entra.authorize(started.headers["location"], user=person))
    assert "/sso/complete?code=" in back.headers["location"], back.headers["location"]
    assert len(opened) == 1
