"""Two real replicas on one database: a change made through one reaches the other's caches
within the bound the README promises (one second), on both databases."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from sso_broker.caches import MAX_STALENESS
from tests.conftest import Database, _empty_tables
from tests.e2e.stack import Broker, free_port, in_thread
from tests.pkce import PKCE
from tests.served import CLIENT, TENANT, broker_env


@pytest.fixture
def replicas(
    database: Database, identity_provider: str, tmp_path: Path
) -> Iterator[tuple[Broker, Broker]]:
    first_port, second_port = free_port(), free_port()
    env = broker_env(database, identity_provider, first_port)
    brokers = (
        Broker(env=env, port=first_port, log=tmp_path / "first.log"),
        Broker(env=env, port=second_port, log=tmp_path / "second.log"),
    )
    try:
        for broker in brokers:
            broker.start()
        yield brokers
    finally:
        for broker in brokers:
            broker.stop()
        in_thread(lambda: _empty_tables(database.url))


def _poll(
    send: Callable[[], httpx.Response], done: Callable[[httpx.Response], bool], *, limit: float
) -> float:
    """Calls ``send`` until ``done(answer)``; the seconds that took (fails past ``limit``)."""
    began = time.monotonic()
    while True:
        answer = send()
        took = time.monotonic() - began
        if done(answer):
            return took
        assert took < limit, f"still {answer.status_code} after {took:.2f} s"
        time.sleep(0.01)


def test_a_change_through_one_replica_reaches_the_other_within_a_second(
    replicas: tuple[Broker, Broker],
) -> None:
    first, second = replicas
    company = json.loads(first.cli("create-company", "Contoso"))["id"]
    first.cli(
        "create-user", "--company", company, "--email", "ada@contoso.example",
        "--name", "Ada", "--role", "administrator",
    )  # fmt: skip
    admin = {"Authorization": "Bearer " + first.cli(
        "issue-token", "--email", "ada@contoso.example", "--company", company,
    )}  # fmt: skip
    user_token = {"Authorization": "Bearer " + first.cli(
        "issue-token", "--email", "ada@contoso.example", "--company", company,
    )}  # fmt: skip
    with (
        httpx.Client(base_url=first.url, timeout=10) as a,
        httpx.Client(base_url=second.url, timeout=10) as b,
    ):
        created = a.post(
            "/api/v1/sso-providers", headers=admin, json={"type": "entra", "base_url": TENANT}
        )
        provider = created.json()["id"]
        enabled = a.patch(
            f"/api/v1/sso-providers/{provider}",
            headers=admin,
            json={"client_id": CLIENT, "client_secret": "a secret value", "enabled": True},
        )
        assert enabled.status_code == 200, enabled.text

        # The second replica caches the caller and the provider.
        for _ in range(3):
            assert b.get("/api/v1/auth/me", headers=user_token).status_code == 200
            started = b.get(f"/sso/{provider}/initiate", params=PKCE)
            assert "/oauth2/v2.0/authorize" in started.headers["location"]

        assert a.post("/api/v1/auth/logout", headers=user_token).status_code == 200
        _poll(
            lambda: b.get("/api/v1/auth/me", headers=user_token),
            lambda answer: answer.status_code == 401,
            limit=MAX_STALENESS,
        )

        assert (
            a.patch(
                f"/api/v1/sso-providers/{provider}", headers=admin, json={"enabled": False}
            ).status_code
            == 200
        )
        _poll(
            lambda: b.get(f"/sso/{provider}/initiate", params=PKCE),
            lambda answer: answer.headers["location"].endswith("error=provider_disabled"),
            limit=MAX_STALENESS,
        )
