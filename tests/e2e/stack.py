"""The processes of the end-to-end tier and of `make demo`: broker replicas, the example
frontend, and the seed (a company, its administrator, an Entra provider registered at the
OpenID Provider, and users)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from tests.e2e.op_process import OpenIDProvider

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
FRONTEND_SERVER = REPO / "examples" / "frontend" / "serve.py"
TENANT_ID = "7c1f8a52-3d4e-4f60-9b1a-2c3d4e5f6a7b"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def in_thread(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Runs a coroutine to completion outside the test session's event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(work())).result()


def wait_for(
    url: str, *, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Broker:
    """One ``sso-broker serve`` process."""

    env: dict[str, str]
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None
    workers: int = 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own console script
            [
                str(Path(sys.executable).parent / "sso-broker"),
                *("serve", "--port", str(self.port), "--workers", str(self.workers)),
            ],
            env=self.env,
            stdout=handle,
            stderr=handle,
            cwd=REPO,
        )
        wait_for(f"{self.url}/readyz", process=self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def cli(self, *argv: str) -> str:
        result = subprocess.run(  # noqa: S603
            [str(Path(sys.executable).parent / "sso-broker"), *argv],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            cwd=REPO,
        )
        return result.stdout.strip()


def start_frontend(
    port: int, broker_url: str, log: Path, provider_id: str | None = None
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, str(FRONTEND_SERVER), "--port", str(port), "--broker-url", broker_url]
    if provider_id:
        argv += ["--provider-id", provider_id]
    process = subprocess.Popen(  # noqa: S603 - our own example server
        argv, stdout=subprocess.DEVNULL, stderr=log.open("ab")
    )
    wait_for(f"http://127.0.0.1:{port}/", process=process)
    return process


@dataclass
class Seed:
    company_id: str
    admin_token: str
    provider: dict[str, Any]
    client_id: str
    client_secret: str
    users: dict[str, dict[str, Any]]


def seed(
    broker: Broker,
    op: OpenIDProvider,
    company: str = "Contoso",
    *,
    kind: str = "entra",
    base_url: str = TENANT_ID,
) -> Seed:
    """What an operator and a company administrator do before anyone signs in.

    The CLI makes the company, its administrator and a token; the admin API creates the
    provider (``kind``, with ``base_url`` pasted as the administrator would), registers its
    callback at the OP, sets the credentials and enables it, and adds the OP's accounts as
    users: all associated with the provider but ``outsider``.
    """
    company_id = json.loads(broker.cli("create-company", company))["id"]
    broker.cli(
        "create-user", "--company", company_id, "--email", "admin@contoso.example",
        "--name", "Ada Admin", "--role", "administrator",
    )  # fmt: skip
    token = broker.cli(
        "issue-token", "--email", "admin@contoso.example", "--company", company_id,
        "--ttl", "86400",
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=broker.url, headers=headers, timeout=10) as api:
        created = api.post("/api/v1/sso-providers", json={"type": kind, "base_url": base_url})
        assert created.status_code == 201, created.text
        provider = created.json()
        client_id, secret = op.add_client(
            provider["urls"]["callback_url"], provider["urls"]["logout_url"]
        )
        enabled = api.patch(
            f"/api/v1/sso-providers/{provider['id']}",
            json={"client_id": client_id, "client_secret": secret, "enabled": True},
        )
        assert enabled.status_code == 200, enabled.text
        users = {}
        for login, account in op.ACCOUNTS.items():
            body = {
                "email": account["email"] or account["preferred_username"],
                "name": account["name"],
                "role": "user",
                "sso_provider_id": provider["id"] if login != "outsider" else None,
            }
            made = api.post("/api/v1/users", json=body)
            assert made.status_code == 201, made.text
            users[login] = made.json()
    return Seed(company_id, token, enabled.json(), client_id, secret, users)
