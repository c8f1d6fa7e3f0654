from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from sso_broker.cli import main
from sso_broker.companies import service as companies_service
from sso_broker.crypto import SecretBox
from sso_broker.database import create_engine, create_sessionmaker, session_scope, utcnow
from sso_broker.main import create_app
from sso_broker.models import SSOProvider
from tests.conftest import TEST_KEY, Database, _empty_tables, make_settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli_env(
    database: Database, monkeypatch: pytest.MonkeyPatch, no_env: None
) -> Iterator[Database]:
    monkeypatch.setenv("SSO_BROKER_DATABASE_URL", database.url)
    monkeypatch.setenv("SSO_BROKER_ENCRYPTION_KEYS", TEST_KEY)
    monkeypatch.setenv("SSO_BROKER_PUBLIC_URL", "https://sso.example.com")
    yield database
    asyncio.run(_empty_tables(database.url))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    # The CLI points the root logger at this test's captured stderr; put the handlers back,
    # or later tests would log into a closed stream.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        status = main(list(argv))
    finally:
        root.handlers[:], root.level = handlers, level
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "alembic"):
            logging.getLogger(name).disabled = False
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _json(out: str) -> dict[str, object]:
    lines = out.splitlines()
    assert len(lines) == 1, f"stdout must hold exactly one JSON document: {out!r}"
    document: dict[str, object] = json.loads(lines[0])
    return document


def _setup(capsys: pytest.CaptureFixture[str], role: str = "administrator") -> tuple[str, str]:
    status, out, _ = run(capsys, "create-company", "Contoso")
    assert status == 0
    company = str(_json(out)["id"])
    status, out, _ = run(
        capsys, "create-user", "--company", company, "--email", "Ada@Example.com",
        "--name", "Ada", "--role", role,
    )  # fmt: skip
    assert status == 0, out
    return company, str(_json(out)["id"])


class TestMigrate:
    def test_migrate_reports_json(
        self, cli_env: Database, capsys: pytest.CaptureFixture[str]
    ) -> None:
        status, out, err = run(capsys, "migrate")
        assert status == 0
        assert _json(out) == {"status": "migrated"}
        for line in err.splitlines():
            json.loads(line)  # logs are JSON lines on stderr


class TestCreateCompany:
    def test_prints_the_company(
        self, cli_env: Database, capsys: pytest.CaptureFixture[str]
    ) -> None:
        status, out, _ = run(capsys, "create-company", "  Contoso Ltd  ")
        assert status == 0
        document = _json(out)
        assert document["name"] == "Contoso Ltd"
        assert set(document) == {"id", "name"}

    def test_refuses_an_empty_name(
        self, cli_env: Database, capsys: pytest.CaptureFixture[str]
    ) -> None:
        status, out, err = run(capsys, "create-company", "   ")
        assert status == 1
        assert out == ""
        assert json.loads(err.splitlines()[-1])["error"] == "validation_error"


class TestCreateUser:
    def test_prints_the_user(self, cli_env: Database, capsys: pytest.CaptureFixture[str]) -> None:
        company, _ = _setup(capsys)
        status, out, _ = run(
            capsys, "create-user", "--company", company, "--email", "bob@example.com",
            "--name", "Bob", "--role", "read_only",
        )  # fmt: skip
        assert status == 0
        user = _json(out)
        assert set(user) == {
            "id", "email", "name", "role", "sso_provider_id", "created_at", "updated_at",
        }  # fmt: skip
        assert user["role"] == "read_only"
        assert user["email"] == "bob@example.com"

    def test_duplicate_email_is_refused_case_insensitively(
        self, cli_env: Database, capsys: pytest.CaptureFixture[str]
    ) -> None:
        company, _ = _setup(capsys)
        status, out, err = run(
            capsys, "create-user", "--company", company, "--email", "ADA@example.COM",
            "--name", "Ada again", "--role", "user",
        )  # fmt: skip
        assert status == 1
        assert out == ""
        assert json.loads(err.splitlines()[-1])["error"] == "email_taken"

    def test_unknown_company_is_refused(
        self, cli_env: Database, capsys: pytest.CaptureFixture[str]
    ) -> None:
        status, out, err = run(
            capsys, "create-user", "--company", "00000000-0000-4000-8000-000000000000",
            "--email", "a@example.com", "--name", "A", "--role", "user",
        )  # fmt: skip
        assert status == 1
        assert out == ""
        assert json.loads(err.splitlines()[-1])["error"] == "not_found"

    def test_invalid_email_is_refused(
        self, cli_env: Database, capsys: pytest.CaptureFixture[str]
    ) -> None:
        company, _ = _setup(capsys)
        status, out, err = run(
            capsys, "create-user", "--company", company, "--email", "not-an-email",
            "--name", "A", "--role", "user",
        )  # fmt: skip
        assert status == 1
        assert out == ""
        assert "email" in json.loads(err.splitlines()[-1])["detail"]

    def test_unknown_role_is_a_usage_error(
        self, cli_env: Database, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as raised:
            main(["create-user", "--company", "x", "--email", "a@b.co", "--name", "A",
                  "--role", "root"])  # fmt: skip
        assert raised.value.code == 2


class TestIssueToken:
    def test_token_works_on_the_admin_api(
        self, cli_env: Database, capsys: pytest.CaptureFixture[str]
    ) -> None:
        company, user_id = _setup(capsys)
        status, out, _ = run(capsys, "issue-token", "--email", "ada@example.com",
                             "--company", company, "--ttl", "120")  # fmt: skip
        assert status == 0
        token = out.strip()
        assert out == token + "\n"
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["sub"] == user_id
        assert claims["company_id"] == company
        assert claims["exp"] - claims["iat"] == 120
        assert claims["iss"] == "https://sso.example.com"

        async def call() -> int:
            app = create_app(make_settings(cli_env.url))
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                    response = await http.get(
                        "/api/v1/sso-providers", headers={"Authorization": f"Bearer {token}"}
                    )
                    return response.status_code

        assert asyncio.run(call()) == 200

    def test_unknown_user_is_refused(
        self, cli_env: Database, capsys: pytest.CaptureFixture[str]
    ) -> None:
        company, _ = _setup(capsys)
        status, out, err = run(capsys, "issue-token", "--email", "nobody@example.com",
                               "--company", company)  # fmt: skip
        assert status == 1
        assert out == ""
        assert "nobody@example.com" in err

    @pytest.mark.parametrize("ttl", ["0", "59", "2592001"])
    def test_ttl_out_of_bounds_is_refused(
        self, cli_env: Database, capsys: pytest.CaptureFixture[str], ttl: str
    ) -> None:
        company, _ = _setup(capsys)
        status, out, _ = run(capsys, "issue-token", "--email", "ada@example.com",
                             "--company", company, "--ttl", ttl)  # fmt: skip
        assert status == 1
        assert out == ""


class TestRotateKeys:
    def test_rotation_re_encrypts_under_the_new_key(
        self,
        cli_env: Database,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        old_box = SecretBox([TEST_KEY])

        async def seed() -> None:
            engine = create_engine(make_settings(cli_env.url))
            async with engine.begin() as connection:
                company = (await connection.execute(text("SELECT id FROM companies"))).scalar_one()
                await connection.execute(
                    text(
                        "INSERT INTO sso_providers (id, company_id, type, name, base_url, "
                        "client_secret_encrypted, enabled, created_at, updated_at) VALUES "
                        "(:id, :company, 'entra', 'E', 'contoso.onmicrosoft.com', :secret, "
                        "false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                    ),
                    {
                        "id": "11111111-1111-4111-8111-111111111111"
                        if cli_env.backend == "postgres"
                        else "11111111111141118111111111111111",
                        "company": company,
                        "secret": old_box.encrypt("rotate-me-secret"),
                    },
                )
                user = (await connection.execute(text("SELECT id FROM users"))).scalars().first()
                await connection.execute(
                    text(
                        "INSERT INTO sign_in_sessions (id, user_id, company_id, "
                        "id_token_encrypted, created_at, expires_at) VALUES "
                        "(:id, :user, :company, :kept, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                    ),
                    {
                        "id": "22222222-2222-4222-8222-222222222222"
                        if cli_env.backend == "postgres"
                        else "22222222222242228222222222222222",
                        "user": user,
                        "company": company,
                        "kept": old_box.encrypt("eyJ.kept-id-token.sig"),
                    },
                )
                await connection.execute(
                    text(
                        "INSERT INTO provider_certificates (id, provider_id, thumbprint_sha256, "
                        "certificate_pem, private_key_encrypted, not_after, created_at) VALUES "
                        "(:id, :provider, :thumbprint, 'pem', :key, CURRENT_TIMESTAMP, "
                        "CURRENT_TIMESTAMP)"
                    ),
                    {
                        "id": "33333333-3333-4333-8333-333333333333"
                        if cli_env.backend == "postgres"
                        else "33333333333343338333333333333333",
                        "provider": "11111111-1111-4111-8111-111111111111"
                        if cli_env.backend == "postgres"
                        else "11111111111141118111111111111111",
                        "thumbprint": "ab" * 32,
                        "key": old_box.encrypt("-----BEGIN PRIVATE KEY-----"),
                    },
                )
            await engine.dispose()

        _setup(capsys)
        asyncio.run(seed())
        new_key = Fernet.generate_key().decode()
        monkeypatch.setenv("SSO_BROKER_ENCRYPTION_KEYS", f"{new_key},{TEST_KEY}")
        status, out, _ = run(capsys, "rotate-keys")
        assert status == 0
        report = _json(out)
        assert report["client_secrets"] == 1
        assert int(str(report["signing_keys"])) >= 1
        assert report["id_tokens"] == 1
        assert report["certificate_keys"] == 1

        async def stored(column: str = "client_secret_encrypted") -> str:
            table = {
                "client_secret_encrypted": "sso_providers",
                "id_token_encrypted": "sign_in_sessions",
                "private_key_encrypted": "provider_certificates",
            }[column]
            engine = create_engine(make_settings(cli_env.url))
            async with engine.connect() as connection:
                value = (
                    await connection.execute(text(f"SELECT {column} FROM {table}"))  # noqa: S608
                ).scalar_one()
            await engine.dispose()
            return str(value)

        assert SecretBox([new_key]).decrypt(asyncio.run(stored())) == "rotate-me-secret"
        assert SecretBox([new_key]).decrypt(asyncio.run(stored("id_token_encrypted"))) == (
            "eyJ.kept-id-token.sig"
        )
        assert SecretBox([new_key]).decrypt(asyncio.run(stored("private_key_encrypted"))) == (
            "-----BEGIN PRIVATE KEY-----"
        )
        # Put the signing keys back under the suite's key for the tests that follow.
        monkeypatch.setenv("SSO_BROKER_ENCRYPTION_KEYS", f"{TEST_KEY},{new_key}")
        assert run(capsys, "rotate-keys")[0] == 0


class TestConfigurationErrors:
    def test_invalid_settings_exit_2_with_a_message(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_env: None
    ) -> None:
        monkeypatch.setenv("SSO_BROKER_DATABASE_URL", "postgresql+asyncpg://x@127.0.0.1/db")
        status, out, err = run(capsys, "migrate")
        assert status == 2
        assert out == ""
        assert "SSO_BROKER_ENCRYPTION_KEYS" in err


class TestConsoleScript:
    def test_stdout_is_one_json_document_and_logs_go_to_stderr(self, tmp_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSO_BROKER_")}
        env["SSO_BROKER_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
        # Migrating the new database says nothing at INFO (Alembic's lines are debug chatter).
        env["SSO_BROKER_LOG_LEVEL"] = "debug"
        result = subprocess.run(  # noqa: S603 - our own console script
            [str(Path(sys.executable).parent / "sso-broker"), "create-company", "Contoso"],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["name"] == "Contoso"
        assert result.stderr.strip()
        for line in result.stderr.splitlines():
            json.loads(line)
        assert (tmp_path / "encryption.keys").exists()

    def test_a_command_on_a_migrated_database_loads_no_alembic(self, tmp_path: Path) -> None:
        """Every command migrates first; with nothing pending it learns so from one query,
        without Alembic (schema_version.py), and says nothing about it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSO_BROKER_")}
        env["SSO_BROKER_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
        probe = (
            "import sys; from sso_broker.cli import main; code = main(sys.argv[1:]); "
            "print('alembic' in sys.modules, file=sys.stderr); sys.exit(code)"
        )
        runs = [
            subprocess.run(  # noqa: S603 - this interpreter, our own CLI
                [sys.executable, "-c", probe, "create-company", name],
                capture_output=True,
                text=True,
                env=env,
                cwd=tmp_path,
                timeout=60,
                check=True,
            )
            for name in ("First", "Second")
        ]
        first, second = (run.stderr.splitlines() for run in runs)
        assert first[-1] == "True", "a new database is migrated"
        assert second == ["False"], second  # no Alembic, and no migration chatter

    def test_create_company_loads_only_what_it_uses(
        self, cli_env: Database, tmp_path: Path
    ) -> None:
        """A command's start-up is most of its time (README, *Command line*): on a migrated
        database create-company loads no Alembic, no web stack, neither cryptography nor
        PyJWT (only the commands that encrypt or sign need them) and no other table's model,
        and the garbage collector leaves the imported modules alone. Counted, not timed, so
        a loaded machine cannot make it flaky. (sqlalchemy.orm does load:
        sqlalchemy.ext.asyncio imports it.)"""
        probe = (  # as the console script runs it: main() reads sys.argv
            "import gc, json, sys; from sso_broker.cli import main; code = main(); "
            "print(json.dumps({'modules': sorted(sys.modules), 'frozen': gc.get_freeze_count(), "
            "'collections': sum(generation['collections'] for generation in gc.get_stats())}), "
            "file=sys.stderr); sys.exit(code)"
        )
        result = subprocess.run(  # noqa: S603 - this interpreter, our own CLI
            [sys.executable, "-c", probe, "create-company", "Contoso"],
            capture_output=True,
            text=True,
            env=dict(os.environ),  # cli_env's database, at the newest revision already
            cwd=tmp_path,  # no .env
            timeout=60,
            check=True,
        )
        assert _json(result.stdout)["name"] == "Contoso"
        report = json.loads(result.stderr.splitlines()[-1])
        unwanted = {
            "alembic", "fastapi", "starlette", "uvicorn", "aiohttp", "httpx", "redis",
            "prometheus_client", "cryptography", "jwt", "email_validator", "sso_broker.main",
            "sso_broker.models", "sso_broker.audit.models", "sso_broker.providers.models",
            "sso_broker.sessions.models", "sso_broker.sso.models", "sso_broker.idp",
        }  # fmt: skip
        assert unwanted.isdisjoint(report["modules"]), unwanted & set(report["modules"])
        # Paused while the CLI's modules are imported, and kept off them afterwards, the
        # collector runs a few dozen times instead of some 160, over what the command made.
        assert report["frozen"] > 0
        assert report["collections"] < 100, report["collections"]


_SERVED_APP_PROBE = """
import asyncio, gc, json
from sso_broker.main import GC_THRESHOLDS, create_served_app

async def main():
    app = create_served_app()
    async with app.router.lifespan_context(app):
        print(json.dumps({"frozen": gc.get_freeze_count(), "thresholds": gc.get_threshold(),
                          "wanted": GC_THRESHOLDS}))

asyncio.run(main())
"""


class TestServedApp:
    def test_a_served_worker_freezes_its_start_up_objects_and_tunes_the_collector(
        self, tmp_path: Path
    ) -> None:
        """What ``serve`` runs (README, *Performance*): in a process of its own, because a
        test process that builds many apps must keep the collector as it is."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSO_BROKER_")}
        env["SSO_BROKER_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path}/served.db"
        script = Path(sys.executable).parent / "sso-broker"
        for argv in ([str(script), "migrate"], [sys.executable, "-c", _SERVED_APP_PROBE]):
            result = subprocess.run(  # noqa: S603 - our own console script and probe
                argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
                check=False,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
        probe = json.loads(result.stdout)
        assert probe["frozen"] > 10_000  # modules, routes and models: most of the heap
        assert probe["thresholds"] == probe["wanted"]

    async def test_an_app_built_for_tests_leaves_the_collector_alone(
        self, cli_env: Database
    ) -> None:
        before = gc.get_threshold(), gc.get_freeze_count()
        app = create_app(make_settings(cli_env.url))
        async with app.router.lifespan_context(app):
            assert (gc.get_threshold(), gc.get_freeze_count()) == before


class TestExpiringSecrets:
    async def _providers(self, database: Database) -> dict[str, str]:
        """Four providers of two companies: expired, expiring (disabled), later, no secret."""
        engine = create_engine(make_settings(database.url))
        box = SecretBox.from_settings(make_settings(database.url))
        now = utcnow()
        ids: dict[str, str] = {}
        try:
            sessionmaker = create_sessionmaker(engine)
            async with session_scope(sessionmaker) as session:
                companies = [await companies_service.create(session, n) for n in ("A", "B")]
                for name, company, days, secret, enabled in (
                    ("expired", companies[0], -3, True, True),
                    ("expiring", companies[1], 10, True, False),
                    ("later", companies[0], 60, True, True),
                    ("no secret", companies[1], 5, False, False),
                ):
                    provider = SSOProvider(
                        id=uuid.uuid4(), company_id=company.id, type="entra", name=name,
                        base_url="contoso.onmicrosoft.com", client_id=str(uuid.uuid4()),
                        client_secret_encrypted=box.encrypt("s3cret") if secret else None,
                        client_secret_expires_at=now + timedelta(days=days), enabled=enabled,
                    )  # fmt: skip
                    session.add(provider)
                    ids[name] = str(provider.id)
        finally:
            await engine.dispose()
        return ids

    def test_lists_expired_and_expiring_soonest_first(
        self, cli_env: Database, capsys: pytest.CaptureFixture[str]
    ) -> None:
        run(capsys, "migrate")
        ids = asyncio.run(self._providers(cli_env))
        status, out, _ = run(capsys, "expiring-secrets")
        assert status == 0
        items = _json(out)["items"]
        assert isinstance(items, list)
        assert [i["provider_id"] for i in items] == [ids["expired"], ids["expiring"]]
        assert set(items[0]) == {"provider_id", "company_id", "name", "expires_at"}
        assert items[0]["name"] == "expired"
        assert datetime.fromisoformat(items[0]["expires_at"]) < datetime.now(UTC)
        assert "s3cret" not in out

        status, out, _ = run(capsys, "expiring-secrets", "--days", "90")
        names = [i["name"] for i in _json(out)["items"]]  # type: ignore[union-attr]
        assert names == ["expired", "expiring", "later"]

        status, out, err = run(capsys, "expiring-secrets", "--days", "-1")
        assert status == 1
        assert out == ""
        assert json.loads(err.splitlines()[-1])["error"] == "command_failed"

    def test_the_window_defaults_to_the_setting(
        self,
        cli_env: Database,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        run(capsys, "migrate")
        asyncio.run(self._providers(cli_env))
        monkeypatch.setenv("SSO_BROKER_SECRET_EXPIRY_WARNING_DAYS", "0")
        status, out, _ = run(capsys, "expiring-secrets")
        assert status == 0
        assert [i["name"] for i in _json(out)["items"]] == ["expired"]  # type: ignore[union-attr]
