"""A hung identity provider against a real ``sso-broker serve`` process (README, *A provider
that does not answer*): the bench's identity provider with one tenant's token endpoint hung,
another tenant's answering, and browsers of both signing in at once and one after another.

A hung provider costs its own users about one HTTP timeout in all: once its breaker is open
its callbacks fail at once (``idp_error``) and its ``last_error`` says it is not answering,
while the other provider's sign-ins go on as if nothing happened; after the open time one
probe finds it answering again and sign-ins work."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from bench.common import CLIENT_SECRET

from tests.conftest import Database, _empty_tables
from tests.e2e.stack import Broker, free_port, in_thread
from tests.served import (
    CLIENT,
    TENANT,
    Seeded,
    broker_env,
    login_code_of,
    seed,
    set_token_delay,
    to_the_callback,
)

TIMEOUT = 1.0  # SSO_BROKER_HTTP_TIMEOUT
FAILURES = 3  # SSO_BROKER_IDP_BREAKER_FAILURES
OPEN_SECONDS = 3.0  # SSO_BROKER_IDP_BREAKER_OPEN_SECONDS
BROWSERS = 10
# Far past the timeout, and over before the stand-in is stopped (it lets hung requests end).
HANG = 5.0
# One TLS context for every browser (plain http here): making one per client costs 0.1 s.
_TLS = ssl.create_default_context()
HEALTHY_TENANT = "7a1c5e9b-3d2f-4b8a-9c6e-0f1e2d3c4b5a"


@pytest.fixture
def broker(database: Database, identity_provider: str, tmp_path: Path) -> Iterator[Broker]:
    port = free_port()
    env = broker_env(
        database, identity_provider, port,
        SSO_BROKER_HTTP_TIMEOUT=str(TIMEOUT),
        SSO_BROKER_IDP_BREAKER_FAILURES=str(FAILURES),
        SSO_BROKER_IDP_BREAKER_OPEN_SECONDS=str(OPEN_SECONDS),
    )  # fmt: skip
    process = Broker(env=env, port=port, log=tmp_path / "broker.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()
        set_token_delay(identity_provider, 0)
        in_thread(lambda: _empty_tables(database.url))


def _second_provider(broker: Broker, seeded: Seeded, email: str) -> str:
    """Another Entra provider of the company (another tenant of the same stand-in), with a
    user ``email``."""
    with httpx.Client(base_url=broker.url, timeout=10, headers=seeded.admin) as client:
        created = client.post(
            "/api/v1/sso-providers", json={"type": "entra", "base_url": HEALTHY_TENANT}
        )
        assert created.status_code == 201, created.text
        provider = str(created.json()["id"])
        enabled = client.patch(
            f"/api/v1/sso-providers/{provider}",
            json={"client_id": CLIENT, "client_secret": CLIENT_SECRET, "enabled": True},
        )
        assert enabled.status_code == 200, enabled.text
        user = {"email": email, "name": "Lin", "role": "user", "sso_provider_id": provider}
        assert client.post("/api/v1/users", json=user).status_code == 201
    return provider


class Browser:
    """One browser's sign-in, brought up to its return from the provider."""

    def __init__(self, broker: Broker, provider: str, email: str) -> None:
        self.client = httpx.Client(base_url=broker.url, timeout=60, verify=_TLS)
        self.callback = to_the_callback(self.client, provider, email)
        self.answer: httpx.Response | None = None
        self.took = 0.0

    def follow(self) -> None:
        began = time.perf_counter()
        try:
            self.answer = self.client.get(self.callback)
        finally:
            self.took = time.perf_counter() - began
            self.client.close()

    @property
    def error(self) -> str | None:
        """The error the sign-in ended with; None when it succeeded."""
        assert self.answer is not None
        location = self.answer.headers["location"]
        if "error=" in location:
            return location.rsplit("error=", 1)[1]
        assert login_code_of(self.answer)
        return None


def _at_once(browsers: list[Browser]) -> float:
    """Follows every browser's callback at the same time; the wall time."""
    threads = [threading.Thread(target=browser.follow) for browser in browsers]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return time.perf_counter() - began


def _one_after_another(browsers: list[Browser]) -> float:
    began = time.perf_counter()
    for browser in browsers:
        browser.follow()
    return time.perf_counter() - began


def _figures(label: str, wall: float, browsers: list[Browser]) -> str:
    errors = sorted({str(b.error) for b in browsers})
    took = " ".join(f"{b.took:.2f}" for b in browsers)
    return f"{label}: {wall:.2f} s wall, each {took} s, outcomes {errors}"


def test_a_hung_token_endpoint_costs_its_users_one_timeout_and_others_nothing(
    broker: Broker, identity_provider: str
) -> None:
    began = time.perf_counter()
    seeded = seed(broker)
    healthy = _second_provider(broker, seeded, "lin@contoso.example")
    # Lin's first sign-in links her identity: ten first sign-ins at once would race for it.
    first = Browser(broker, healthy, "lin@contoso.example")
    first.follow()
    assert first.error is None
    seeded_in = time.perf_counter() - began
    set_token_delay(identity_provider, HANG, tenant=TENANT)
    # Every browser is brought to its callback first, so the phases follow each other closely.
    hung = [Browser(broker, seeded.provider, seeded.email) for _ in range(BROWSERS)]
    fine = [Browser(broker, healthy, "lin@contoso.example") for _ in range(BROWSERS)]
    later = [Browser(broker, seeded.provider, seeded.email) for _ in range(BROWSERS)]
    after = [Browser(broker, healthy, "lin@contoso.example") for _ in range(BROWSERS)]
    back = [Browser(broker, seeded.provider, seeded.email) for _ in range(2)]
    prepared_in = time.perf_counter() - began - seeded_in

    # Ten browsers of each provider at once: the hung one's wait out one timeout together.
    wall = _at_once(hung + fine)
    # Ten more of each, one after another: the hung provider's fail at once now.
    hung_wall = _one_after_another(later)
    fine_wall = _one_after_another(after)
    figures = [
        f"seeded in {seeded_in:.1f} s, browsers prepared in {prepared_in:.1f} s",
        _figures("hung, at once", wall, hung),
        _figures("healthy, meanwhile", wall, fine),
        _figures("hung, one after another", hung_wall, later),
        _figures("healthy, one after another", fine_wall, after),
    ]
    print("\n" + "\n".join(figures))  # the report's figures (pytest -s)

    assert all(b.error is None for b in fine + after), figures
    assert max(b.took for b in fine + after) < TIMEOUT / 2, figures
    assert all(b.error == "token_exchange_failed" for b in hung), figures
    assert max(b.took for b in hung) < TIMEOUT + 1.0, figures
    assert all(b.error == "idp_error" for b in later), figures
    assert hung_wall < 1.0, figures  # ten callbacks, not ten timeouts

    with httpx.Client(base_url=broker.url, timeout=10, headers=seeded.admin) as client:
        provider = client.get(f"/api/v1/sso-providers/{seeded.provider}").json()
        assert provider["last_error"]["code"] == "idp_not_answering", provider
        other = client.get(f"/api/v1/sso-providers/{healthy}").json()
        assert other["last_error"] is None, other
        metrics = client.get("/metrics").text
    assert 'sso_broker_idp_circuit_open_total{type="entra"} 1.0' in metrics
    assert 'sso_broker_idp_circuits_open{type="entra"} 1.0' in metrics

    # The provider answers again: after the open time, one probe finds it and closes it.
    set_token_delay(identity_provider, 0)
    time.sleep(OPEN_SECONDS)
    _one_after_another(back)
    assert [b.error for b in back] == [None, None], [b.answer for b in back]
    with httpx.Client(base_url=broker.url, timeout=10, headers=seeded.admin) as client:
        provider = client.get(f"/api/v1/sso-providers/{seeded.provider}").json()
        assert provider["last_error"] is None, json.dumps(provider)
        metrics = client.get("/metrics").text
    assert 'sso_broker_idp_circuits_open{type="entra"} 0.0' in metrics
    assert CLIENT_SECRET not in broker.log.read_text()
