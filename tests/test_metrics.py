"""``GET /metrics`` (README, *Operating sso-broker*): the families an ops team graphs and
alerts on, with values that follow what happened, and labels that never name a person, a
provider, a token or an address.

The instruments are the process's own, shared by every app a test process builds, so each
test compares a scrape after with a scrape before."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from sso_broker.database import session_scope, utcnow
from sso_broker.deps import AppContext
from sso_broker.models import SSOProvider
from sso_broker.providers.models import ProviderCertificate
from tests.conftest import Database, Factory, _empty_tables, make_settings
from tests.e2e.stack import Broker, free_port, in_thread
from tests.fixtures.entra import FakeEntra
from tests.pkce import PKCE, code_grant
from tests.served import broker_env, login_code_of, seed, to_the_callback
from tests.sso.helpers import login_code, setup, sign_in

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def label_values(samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float]) -> set[str]:
    return {v for _, labels in samples for _, v in labels}


class TestSignIns:
    async def test_a_sign_in_is_counted_with_its_steps_and_provider_calls(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        before = await scrape(client)
        arranged = await setup(factory)
        finished = await sign_in(client, entra, arranged.provider, arranged.person)
        tokens = await client.post("/api/v1/auth/token", json=code_grant(login_code(finished)))
        assert tokens.status_code == 200, tokens.text
        after = await scrape(client)

        total = "sso_broker_sign_ins_total"
        assert grew(before, after, total, type="entra", outcome="succeeded") == 1
        callback = {"route": "/sso/{provider_id}/callback", "method": "GET", "status": "302"}
        histogram = "sso_broker_http_request_duration_seconds"
        assert grew(before, after, f"{histogram}_count", **callback) == 1
        assert grew(before, after, f"{histogram}_sum", **callback) > 0
        token = {"route": "/api/v1/auth/token", "method": "POST", "status": "200"}
        assert grew(before, after, f"{histogram}_count", **token) == 1
        idp = "sso_broker_idp_request_duration_seconds_count"
        assert grew(before, after, idp, type="entra", endpoint="token") == 1
        # The directory is the app's: this test's first sign-in fetched both documents.
        assert grew(before, after, idp, type="entra", endpoint="metadata") == 1
        assert grew(before, after, idp, type="entra", endpoint="keys") == 1
        cache = "sso_broker_cache_requests_total"
        assert grew(before, after, cache, cache="metadata", result="miss") >= 1
        assert grew(before, after, cache, cache="keys", result="miss") == 1

        # A second sign-in is served from the caches.
        again = await scrape(client)
        await sign_in(client, entra, arranged.provider, arranged.person)
        last = await scrape(client)
        assert grew(again, last, total, type="entra", outcome="succeeded") == 1
        assert grew(again, last, cache, cache="metadata", result="hit") == 2  # initiate, callback
        assert grew(again, last, cache, cache="keys", result="hit") == 1
        assert grew(again, last, idp, type="entra", endpoint="metadata") == 0

    async def test_failures_are_counted_by_their_error_code_and_type(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        arranged = await setup(factory)
        before = await scrape(client)
        unknown = await client.get(f"/sso/{uuid.uuid4()}/initiate", params=PKCE)
        assert unknown.status_code == 302
        malformed = await client.get("/sso/not-an-id/initiate", params=PKCE)
        assert malformed.status_code == 302
        bad_state = await client.get(
            f"/sso/{arranged.provider.id}/callback", params={"state": "x", "code": "y"}
        )
        assert bad_state.status_code == 302
        after = await scrape(client)
        total = "sso_broker_sign_ins_total"
        assert grew(before, after, total, type="unknown", outcome="provider_not_found") == 2
        assert grew(before, after, total, type="entra", outcome="invalid_state") == 1
        assert grew(before, after, total, type="entra", outcome="succeeded") == 0

    async def test_the_tile_path_to_the_start_page_is_not_a_sign_in(
        self, client: httpx.AsyncClient, factory: Factory
    ) -> None:
        arranged = await setup(factory)
        before = await scrape(client)
        bounced = await client.get(f"/sso/{arranged.provider.id}/initiate")
        assert bounced.status_code == 302
        after = await scrape(client)
        counted = {
            key: v - before.get(key, 0.0)
            for key, v in after.items()
            if key[0] == "sso_broker_sign_ins_total" and v != before.get(key, 0.0)
        }
        assert counted == {}


class TestLabels:
    async def test_no_label_holds_an_id_an_email_a_token_or_an_address(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        arranged = await setup(factory)
        await sign_in(client, entra, arranged.provider, arranged.person)
        await client.get(f"/sso/{uuid.uuid4()}/callback", params={"state": "s", "code": "c"})
        await client.get("/no/such/path/" + str(uuid.uuid4()))
        await client.get(f"/api/v1/users/{arranged.user.id}")
        values = label_values(await scrape(client))
        assert not [v for v in values if UUID.search(v)]
        assert not [v for v in values if "@" in v or "127.0.0.1" in v or "testclient" in v]
        assert "unmatched" in values  # the unknown path, never its text

    async def test_a_route_is_labelled_by_its_template(
        self, client: httpx.AsyncClient, factory: Factory
    ) -> None:
        arranged = await setup(factory)
        await client.get(f"/sso/{arranged.provider.id}/initiate")
        values = label_values(await scrape(client))
        assert "/sso/{provider_id}/initiate" in values


class TestRateLimits:
    async def test_a_refusal_is_counted_by_its_limit(self, database: Database) -> None:
        from sso_broker.main import create_app

        settings = make_settings(database.url, rate_limit_enabled=True, rate_limit_token_per_ip=1)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                before = await scrape(client)
                answers = [
                    (await client.post("/api/v1/auth/token", json=code_grant("x"))).status_code
                    for _ in range(3)
                ]
                assert 429 in answers
                after = await scrape(client)
        assert grew(before, after, "sso_broker_rate_limited_total", limit="token") == answers.count(
            429
        )


class TestExpiry:
    async def test_the_soonest_expiry_of_enabled_providers_by_type(
        self, client: httpx.AsyncClient, factory: Factory, context: AppContext
    ) -> None:
        company = await factory.company()
        now = utcnow()
        soon, later = now + timedelta(days=3), now + timedelta(days=40)
        await factory.provider(
            company, client_secret="s", client_secret_expires_at=later, enabled=True
        )
        await factory.provider(
            company, client_secret="s", client_secret_expires_at=soon, enabled=True
        )
        # Neither a disabled provider nor one signing in with a certificate counts.
        await factory.provider(
            company,
            client_secret="s",
            client_secret_expires_at=now - timedelta(days=1),
            enabled=False,
        )
        keyed = await factory.provider(
            company,
            type="okta",
            base_url="https://example.okta.com",
            client_secret="s",
            client_secret_expires_at=now - timedelta(days=9),
            enabled=True,
        )
        async with session_scope(context.sessionmaker) as session:
            await session.execute(
                update(SSOProvider)
                .where(SSOProvider.id == keyed.id)
                .values(client_auth_method="private_key_jwt")
            )
            for days in (5, 60):
                session.add(
                    ProviderCertificate(
                        id=uuid.uuid4(),
                        provider_id=keyed.id,
                        thumbprint_sha256=uuid.uuid4().hex * 2,
                        certificate_pem="-",
                        private_key_encrypted="-",
                        not_after=now + timedelta(days=days),
                    )
                )
        samples = await scrape(client)
        secret = value(samples, "sso_broker_client_secret_expiry_seconds", type="entra")
        assert abs(secret - timedelta(days=3).total_seconds()) < 120
        assert ("sso_broker_client_secret_expiry_seconds", frozenset({("type", "okta")})) not in (
            samples
        )
        # The provider's longest-lived certificate is what it signs in with.
        certificate = value(samples, "sso_broker_certificate_expiry_seconds", type="okta")
        assert abs(certificate - timedelta(days=60).total_seconds()) < 120

        # Read at most every EXPIRY_READ_SECONDS, however often scraped (no credentials).
        await factory.provider(
            company, client_secret="s", client_secret_expires_at=now + timedelta(days=1),
            enabled=True,
        )  # fmt: skip
        cached = value(
            await scrape(client), "sso_broker_client_secret_expiry_seconds", type="entra"
        )
        assert abs(cached - timedelta(days=3).total_seconds()) < 120
        assert context.expiry_read is not None
        context.expiry_read = (context.expiry_read[0] - 31, *context.expiry_read[1:])
        fresh = value(await scrape(client), "sso_broker_client_secret_expiry_seconds", type="entra")
        assert abs(fresh - timedelta(days=1).total_seconds()) < 120


class TestSwitchedOff:
    async def test_no_route_and_no_timing_when_disabled(
        self, client: httpx.AsyncClient, database: Database
    ) -> None:
        from sso_broker.main import create_app

        before = await scrape(client)
        app = create_app(make_settings(database.url, metrics_enabled=False))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as off:
                answer = await off.get("/metrics")
                assert answer.status_code == 404
                assert answer.json()["code"] == "not_found"
                assert (await off.get("/healthz")).status_code == 200
        after = await scrape(client)
        healthz = {"route": "/healthz", "method": "GET", "status": "200"}
        assert grew(before, after, "sso_broker_http_request_duration_seconds_count", **healthz) == 0


class TestSeveralWorkers:
    def test_any_worker_reports_every_worker(
        self, database: Database, identity_provider: str, tmp_path: Path
    ) -> None:
        """``serve --workers 2``: the kernel spreads requests over both workers, and whichever
        answers the scrape counts all of them (multiprocess mode)."""
        port = free_port()
        broker = Broker(
            env=broker_env(database, identity_provider, port),
            port=port,
            log=tmp_path / "broker.log",
            workers=2,
        )
        broker.start()
        try:
            seeded = seed(broker)
            with httpx.Client(base_url=broker.url, timeout=10) as browser:
                login_code_of(browser.get(to_the_callback(browser, seeded.provider, seeded.email)))
            # New connections each, so both workers answer some of them.
            for _ in range(40):
                assert httpx.get(f"{broker.url}/healthz").status_code == 200
            totals = set()
            for _ in range(6):
                text = httpx.get(f"{broker.url}/metrics").text
                samples = {
                    (sample.name, frozenset(sample.labels.items())): sample.value
                    for family in text_string_to_metric_families(text)
                    for sample in family.samples
                }
                healthz = {"route": "/healthz", "method": "GET", "status": "200"}
                totals.add(
                    (
                        value(samples, "sso_broker_http_request_duration_seconds_count", **healthz),
                        value(
                            samples, "sso_broker_sign_ins_total", type="entra", outcome="succeeded"
                        ),
                    )
                )
                assert ("sso_broker_db_connections_in_use", frozenset()) in samples
            assert totals == {(40.0, 1.0)}, totals
            started = broker.log.read_text().count("Application startup complete.")
            assert started == 2, started
        finally:
            broker.stop()
            in_thread(lambda: _empty_tables(database.url))


class TestMethods:
    async def test_an_unusual_method_is_other_and_mints_nothing(
        self, client: httpx.AsyncClient
    ) -> None:
        for name in ("FROB", "PURGE1", "PURGE2"):
            await client.request(name, "/healthz")
        values = label_values(await scrape(client))
        assert "OTHER" in values
        assert not values & {"FROB", "PURGE1", "PURGE2"}
