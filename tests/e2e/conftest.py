"""The end-to-end tier: a real OpenID Provider, the broker as real processes on PostgreSQL,
the example frontend, and headless Chromium driven by Playwright.

Nothing here reaches beyond this machine. Without ``SSO_BROKER_REQUIRE_E2E=1`` the tier skips
(with one line saying what to install) when Node, the OP's packages, Chromium, Playwright or a
PostgreSQL are missing; with it, a missing piece fails the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from tests.conftest import POSTGRES_URL, _create_postgres_database, _drop_postgres_database
from tests.e2e.stack import (
    REPO,
    TENANT_ID,
    Broker,
    free_port,
    in_thread,
    seed,
    start_frontend,
    stop,
)

ARTIFACTS = REPO / "artifacts" / "e2e"
CHROMIUM = Path("/usr/bin/chromium")
REQUIRED = os.environ.get("SSO_BROKER_REQUIRE_E2E") == "1"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing() -> list[str]:
    from tests.e2e.op_process import node_available

    missing = []
    if not node_available():
        missing.append("Node.js and the OP's packages (`npm ci` in tests/e2e/op)")
    if not CHROMIUM.exists():
        missing.append("Chromium (`apt-get install chromium`)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("Playwright for Python (`make test` installs it)")
    if not POSTGRES_URL and _pg_bin("initdb") is None:
        missing.append("PostgreSQL (set SSO_BROKER_TEST_POSTGRES_URL or install initdb)")
    return missing


def _pg_bin(name: str) -> Path | None:
    found = shutil.which(name)
    if found:
        return Path(found)
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def skip_unless_ready() -> None:
    """Skips the calling test module, in one line, when a prerequisite is missing."""
    missing = _missing()
    if missing and not REQUIRED:
        pytest.skip("e2e tier needs: " + "; ".join(missing), allow_module_level=True)


@pytest.fixture(scope="session")
def e2e_ready() -> None:
    missing = _missing()
    if missing:
        message = "e2e tier needs: " + "; ".join(missing)
        if REQUIRED:
            pytest.fail(message + " (SSO_BROKER_REQUIRE_E2E=1)")
        pytest.skip(message)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)


class ThrowawayPostgres:
    """A PostgreSQL cluster in a temporary folder, for machines where none is configured."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.data = root / "data"

    def _run(self, *argv: str) -> None:
        command = list(argv)
        if os.geteuid() == 0:  # initdb refuses to run as root
            shutil.chown(self.root, "postgres", "postgres")
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            command = [runuser, "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)  # noqa: S603

    def start(self) -> str:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        assert initdb is not None and pg_ctl is not None  # noqa: PT018 - checked by _missing
        self._run(str(initdb), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._run(
            str(pg_ctl), "-D", str(self.data), "-w", "-l", str(self.root / "pg.log"),
            "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1", "start",
        )  # fmt: skip
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        pg_ctl = _pg_bin("pg_ctl")
        if pg_ctl is not None:
            self._run(str(pg_ctl), "-D", str(self.data), "-m", "immediate", "stop")


@pytest.fixture(scope="session")
def e2e_database(e2e_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh database: on the configured PostgreSQL, or on a throwaway cluster."""
    if POSTGRES_URL:
        url = in_thread(_create_postgres_database)
        yield url
        in_thread(lambda: _drop_postgres_database(url))
        return
    # Not under pytest's temp folder: that is private to our user, and initdb runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="sso-broker-e2e-pg-"))
    cluster = ThrowawayPostgres(root)
    url = cluster.start()
    try:
        yield url
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


# The OP's look-alikes of the other provider types, and what their administrator pastes
# (README, *Setting up Okta*, *Setting up PingOne*, *Any OpenID Provider*).
PROFILES = ("okta", "pingone", "oidc")


@dataclass
class Typed:
    """One company whose provider is of another type than Entra, at an OP of that profile."""

    op: Any
    provider: dict[str, Any]
    users: dict[str, dict[str, Any]]
    admin_headers: dict[str, str] = field(default_factory=dict)


def _pasted(kind: str, op: Any) -> str:
    if kind == "okta":
        return f"{op.issuer}/.well-known/openid-configuration"  # forgiven
    if kind == "pingone":
        return TENANT_ID  # the environment ID: SSO_BROKER_PINGONE_AUTHORITY names the OP
    return f"{op.issuer}/"


@dataclass
class World:
    """Everything the stories need, set up once for the session."""

    op: Any
    broker: Broker
    second_broker: Broker
    frontend_url: str
    admin_headers: dict[str, str]
    company_id: str
    provider: dict[str, Any]
    client_id: str
    client_secret: str
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The same story's other provider types: one company, OP and provider each.
    typed: dict[str, Typed] = field(default_factory=dict)

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.broker.url, headers=self.admin_headers, timeout=10)

    def patch_provider(self, **body: Any) -> dict[str, Any]:
        with self.api() as api:
            response = api.patch(f"/api/v1/sso-providers/{self.provider['id']}", json=body)
            assert response.status_code == 200, response.text
            result: dict[str, Any] = response.json()
            return result


@pytest.fixture(scope="session")
def world(e2e_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from tests.e2e.op_process import OpenIDProvider

    workdir = tmp_path_factory.mktemp("e2e")
    op = OpenIDProvider(workdir / "op", TENANT_ID)
    op.start()
    others = {
        kind: OpenIDProvider(workdir / f"op-{kind}", TENANT_ID, profile=kind) for kind in PROFILES
    }
    for other in others.values():
        other.start()
    public_port, second_port, frontend_port = free_port(), free_port(), free_port()
    public_url = f"http://127.0.0.1:{public_port}"
    frontend_url = f"http://127.0.0.1:{frontend_port}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("SSO_BROKER_")}
    env.update(
        {
            "SSO_BROKER_DATABASE_URL": e2e_database,
            "SSO_BROKER_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "SSO_BROKER_PUBLIC_URL": public_url,
            "SSO_BROKER_FRONTEND_URL": frontend_url,
            "SSO_BROKER_ENTRA_AUTHORITY": op.authority,
            "SSO_BROKER_RATE_LIMIT_ENABLED": "false",
            # The OPs serve plain http on loopback; a bare PingOne environment ID names theirs.
            "SSO_BROKER_ALLOW_HTTP_ISSUERS": "true",
            "SSO_BROKER_PINGONE_AUTHORITY": others["pingone"].authority,
        }
    )
    broker = Broker(env, public_port, ARTIFACTS / "broker.log")
    # A second replica: same database, keys and public URL, listening elsewhere.
    second = Broker(env, second_port, ARTIFACTS / "broker-2.log")
    frontend: subprocess.Popen[bytes] | None = None
    try:
        broker.start()
        second.start()
        frontend = start_frontend(frontend_port, public_url, ARTIFACTS / "frontend.log")
        seeded = seed(broker, op, "Contoso e2e")
        typed = {}
        for kind, other in others.items():
            made = seed(broker, other, f"{kind} e2e", kind=kind, base_url=_pasted(kind, other))
            typed[kind] = Typed(
                op=other,
                provider=made.provider,
                users=made.users,
                admin_headers={"Authorization": f"Bearer {made.admin_token}"},
            )
        yield World(
            op=op,
            broker=broker,
            second_broker=second,
            frontend_url=frontend_url,
            admin_headers={"Authorization": f"Bearer {seeded.admin_token}"},
            company_id=seeded.company_id,
            provider=seeded.provider,
            client_id=seeded.client_id,
            client_secret=seeded.client_secret,
            users=seeded.users,
            typed=typed,
        )
    finally:
        if frontend is not None:
            stop(frontend)
        second.stop()
        broker.stop()
        op.stop()
        for other in others.values():
            other.stop()


@pytest.fixture(scope="module")
def browser(e2e_ready: None) -> Iterator[Any]:
    """Chromium for one test module. Playwright's sync API runs an event loop of its own in
    this thread while open, so it must be closed before the suite's asyncio tests run."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context per test; the final page is kept as a screenshot."""
    context = browser.new_context()
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    name = request.node.name.replace("/", "_").replace("[", "_").replace("]", "")
    try:
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    finally:
        context.close()
