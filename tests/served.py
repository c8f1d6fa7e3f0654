"""Tests against real ``sso-broker serve`` processes: the bench's light Entra stand-in as a
process of its own (``identity_provider``), the broker's environment for it, and the seed a
browser sign-in needs (a company, an administrator, an enabled provider and a user)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from bench.common import CLIENT_SECRET

from tests.conftest import TEST_KEY, Database
from tests.e2e.stack import Broker, free_port, stop, wait_for
from tests.pkce import PKCE

REPO = Path(__file__).resolve().parents[1]
TENANT = "3f2b9c1e-8d47-4a6b-9e21-5c0d7f4a1b28"
CLIENT = "0c6e8a51-2b3d-4f7e-9a1c-6d5e4f3a2b10"


@contextmanager
def running_identity_provider(logs: Path) -> Iterator[str]:
    """The bench's light Entra stand-in (``bench/fake_idp.py``) as a process of its own, its
    log in ``logs``: its authority, once it answers."""
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - our own module
        [sys.executable, "-m", "bench.fake_idp", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=(logs / "idp.log").open("ab"),
    )
    authority = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{authority}/{TENANT}/v2.0/.well-known/openid-configuration", process=process)
        yield authority
    finally:
        stop(process)


@pytest.fixture
def identity_provider(tmp_path: Path) -> Iterator[str]:
    with running_identity_provider(tmp_path) as authority:
        yield authority


def set_token_delay(authority: str, seconds: float, tenant: str | None = None) -> None:
    """How long the stand-in's token endpoint waits before it answers: for every tenant, or
    only for ``tenant``."""
    params: dict[str, str | float] = {"seconds": seconds}
    if tenant is not None:
        params["tenant"] = tenant
    answer = httpx.post(f"{authority}/_control/token-delay", params=params)
    assert answer.status_code == 204, answer.text


def broker_env(
    database: Database, authority: str, public_port: int, **extra: str
) -> dict[str, str]:
    return {
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
        "SSO_BROKER_DATABASE_URL": database.url,
        "SSO_BROKER_ENCRYPTION_KEYS": TEST_KEY,
        # Replicas behind one load balancer share one public URL (the session JWTs' iss).
        "SSO_BROKER_PUBLIC_URL": f"http://127.0.0.1:{public_port}",
        "SSO_BROKER_FRONTEND_URL": "http://127.0.0.1:3000",
        "SSO_BROKER_ENTRA_AUTHORITY": authority,
        "SSO_BROKER_RATE_LIMIT_ENABLED": "false",
        "SSO_BROKER_ACCESS_LOG": "false",
        **extra,
    }


@dataclass
class Seeded:
    company: str
    admin: dict[str, str]
    provider: str
    email: str  # the user who signs in


def seed(broker: Broker, signs_in: str = "grace@contoso.example") -> Seeded:
    """A company, its administrator (``admin``: their bearer header), an enabled Entra
    provider, and a user ``signs_in`` who signs in through it."""
    email = "ada@contoso.example"
    company = json.loads(broker.cli("create-company", "Contoso"))["id"]
    broker.cli(
        "create-user", "--company", company, "--email", email, "--name", "Ada",
        "--role", "administrator",
    )  # fmt: skip
    admin = {"Authorization": "Bearer " + broker.cli(
        "issue-token", "--email", email, "--company", company,
    )}  # fmt: skip
    with httpx.Client(base_url=broker.url, timeout=10) as client:
        created = client.post(
            "/api/v1/sso-providers", headers=admin, json={"type": "entra", "base_url": TENANT}
        )
        assert created.status_code == 201, created.text
        provider = created.json()["id"]
        enabled = client.patch(
            f"/api/v1/sso-providers/{provider}",
            headers=admin,
            json={"client_id": CLIENT, "client_secret": CLIENT_SECRET, "enabled": True},
        )
        assert enabled.status_code == 200, enabled.text
        user = {"email": signs_in, "name": "Grace", "role": "user", "sso_provider_id": provider}
        created = client.post("/api/v1/users", headers=admin, json=user)
        assert created.status_code == 201, created.text
    return Seeded(company=company, admin=admin, provider=provider, email=signs_in)


def to_the_callback(client: httpx.Client, provider: str, email: str) -> str:
    """A browser's sign-in up to its return from the provider: the callback URL to follow
    (the login-state cookie is in ``client``'s jar)."""
    started = client.get(f"/sso/{provider}/initiate", params={**PKCE, "login_hint": email})
    assert started.status_code == 302, started.text
    signed_in = client.get(started.headers["location"])  # an absolute URL: the provider
    assert signed_in.status_code == 302, signed_in.text
    return signed_in.headers["location"]


def login_code_of(callback: httpx.Response) -> str:
    assert callback.status_code == 302, callback.text
    query = parse_qs(urlsplit(callback.headers["location"]).query)
    assert "code" in query, callback.headers["location"]
    return query["code"][0]
