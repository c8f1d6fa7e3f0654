"""The ``sso-broker`` command.

Standard output holds exactly one JSON document (or, for ``issue-token``, the bare JWT);
logs and errors go to standard error, so output pipes straight into ``jq``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

# Each command imports what only it needs: a command's start-up is most of its time, and a
# script that makes fifty users waits for fifty of them (README, *Command line*).
# ``tests/test_cli.py`` lists what ``create-company`` must not load.
#
# What is imported here makes most of a command's objects, and nearly all of them live until
# the command exits: the garbage collector would walk them some 160 times meanwhile, for
# nothing (a tenth of a command's CPU). It pauses while they are made; main() then freezes
# them out of its sight.
#
# bz2 and lzma stay unloaded: SQLAlchemy's importlib.metadata imports zipfile and shutil,
# which import them only to offer compressed archives, and go without them when the import
# fails. Nothing here compresses; loaded, they and their C libraries held 0.35 MB of every
# worker (README, *Performance*; tests/test_memory.py).
sys.modules.setdefault("bz2", None)  # type: ignore[arg-type]
sys.modules.setdefault("lzma", None)  # type: ignore[arg-type]
_collecting = gc.isenabled()
gc.disable()
try:
    import asyncio

    from pydantic import ValidationError
    from sqlalchemy import select, text
    from sqlalchemy.exc import DBAPIError

    from sso_broker import __version__
    from sso_broker.companies import service as companies_service
    from sso_broker.config import Settings
    from sso_broker.crypto import EncryptionKeyError, SecretBox, load_encryption_keys
    from sso_broker.database import create_engine, create_sessionmaker, session_scope, utcnow
    from sso_broker.errors import AppError
    from sso_broker.logs import configure_logging
    from sso_broker.schema_version import HEAD_REVISION
    from sso_broker.users.models import Role
finally:
    if _collecting:
        gc.enable()

logger = logging.getLogger("sso_broker.cli")

MAX_TOKEN_TTL = 30 * 86_400


class CommandError(Exception):
    """A command failed for a reason the operator can fix; exit status 1."""


def _emit(document: Any) -> None:
    sys.stdout.write(json.dumps(document, default=str) + "\n")


async def _at_head(engine: Any) -> bool:
    """Whether the database is at the newest revision already: one query, no Alembic."""
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT version_num FROM alembic_version"))
            return list(rows.scalars()) == [HEAD_REVISION]
    except DBAPIError:  # no alembic_version table yet: a new database
        return False


def _load_models() -> None:
    """Every table's model, so the ORM can resolve every foreign key a command's rows have
    (sso_broker.models would bring the rate limiter and the web stack along). A command that
    writes only companies skips them: 6 % of its start-up, their mappers' set-up included."""
    import sso_broker.audit.models
    import sso_broker.providers.models
    import sso_broker.sessions.models
    import sso_broker.sso.models  # noqa: F401


async def _with_keys(settings: Settings, work: Callable[[Any, list[str]], Awaitable[None]]) -> None:
    """Migrates when a migration is pending, checks the encryption keys (in embedded mode,
    creating the key file on first use), then runs ``work(sessionmaker, keys)`` and disposes
    of the engine."""
    engine = create_engine(settings)
    try:
        if not await _at_head(engine):
            from sso_broker.migrate import migrate  # Alembic loads only when it has work

            await migrate(engine)
        await work(create_sessionmaker(engine), load_encryption_keys(settings))
    finally:
        await engine.dispose()


async def _with_database(
    settings: Settings, work: Callable[[Any, SecretBox], Awaitable[None]]
) -> None:
    """``_with_keys`` for a command that encrypts or decrypts: ``work(sessionmaker, box)``.
    The box loads cryptography, which the other commands do without."""

    async def with_box(sessionmaker: Any, keys: list[str]) -> None:
        await work(sessionmaker, SecretBox(keys))

    await _with_keys(settings, with_box)


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{value!r} is not an id (a UUID)") from e


async def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> None:
    async def work(_sessionmaker: Any, _keys: list[str]) -> None:
        logger.info("database is at the newest schema")

    await _with_keys(settings, work)
    _emit({"status": "migrated"})


async def cmd_create_company(settings: Settings, args: argparse.Namespace) -> None:
    async def work(sessionmaker: Any, _keys: list[str]) -> None:
        async with session_scope(sessionmaker) as session:
            company = await companies_service.create(session, args.name)
            _emit({"id": str(company.id), "name": company.name})

    await _with_keys(settings, work)


async def cmd_create_user(settings: Settings, args: argparse.Namespace) -> None:
    from sso_broker.users import service as users_service
    from sso_broker.users.schemas import UserCreate, UserRead

    _load_models()

    try:
        data = UserCreate(
            email=args.email, name=args.name, role=Role(args.role), sso_provider_id=args.provider
        )
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()
        )
        raise CommandError(f"invalid user: {problems}") from e

    async def work(sessionmaker: Any, _keys: list[str]) -> None:
        async with session_scope(sessionmaker) as session:
            await companies_service.get(session, args.company)
            user = await users_service.create(session, args.company, data, actor=None)
            _emit(UserRead.model_validate(user).model_dump(mode="json"))

    await _with_keys(settings, work)


async def cmd_issue_token(settings: Settings, args: argparse.Namespace) -> None:
    from sso_broker.sessions import service as sessions_service
    from sso_broker.sessions.tokens import KeyRing, ensure_signing_key
    from sso_broker.users import repository as users_repository

    _load_models()
    ttl = args.ttl if args.ttl is not None else settings.access_token_ttl
    if not 60 <= ttl <= MAX_TOKEN_TTL:
        raise CommandError(f"--ttl must be between 60 and {MAX_TOKEN_TTL} seconds")

    async def work(sessionmaker: Any, box: SecretBox) -> None:
        keyring = KeyRing(settings, box)
        async with session_scope(sessionmaker) as session:
            await ensure_signing_key(session, box)
            await keyring.load(session)
            await companies_service.get(session, args.company)
            user = await users_repository.get_by_email(session, args.company, args.email)
            if user is None:
                raise CommandError(f"no user with email {args.email} in company {args.company}")
            # The session lives exactly as long as the token: there is no refresh for it.
            sign_in = await sessions_service.start(
                session, user, provider_id=None, lifetime=timedelta(seconds=ttl)
            )
            issued = sessions_service.issue_access_token(
                settings, keyring, user, sign_in, ttl=timedelta(seconds=ttl)
            )
            logger.info(
                "issued a session token",
                extra={"user_id": str(user.id), "session_id": str(sign_in.id), "ttl": ttl},
            )
            sys.stdout.write(issued.token + "\n")

    await _with_database(settings, work)


async def cmd_rotate_keys(settings: Settings, _args: argparse.Namespace) -> None:
    """Re-encrypts every stored secret under the first key of SSO_BROKER_ENCRYPTION_KEYS."""
    from sso_broker.providers.models import ProviderCertificate, SSOProvider
    from sso_broker.sessions.models import SigningKey, SignInSession

    _load_models()

    async def work(sessionmaker: Any, box: SecretBox) -> None:
        counts = {"client_secrets": 0, "signing_keys": 0, "id_tokens": 0, "certificate_keys": 0}
        async with session_scope(sessionmaker) as session:
            # Row locks (PostgreSQL): a PATCH that sets a new secret meanwhile waits, instead
            # of having its secret overwritten by the old one re-encrypted.
            providers = await session.scalars(
                select(SSOProvider)
                .where(SSOProvider.client_secret_encrypted.is_not(None))
                .with_for_update()
            )
            for provider in providers:
                assert provider.client_secret_encrypted is not None  # noqa: S101
                provider.client_secret_encrypted = box.rotate(provider.client_secret_encrypted)
                counts["client_secrets"] += 1
            for key in await session.scalars(select(SigningKey).with_for_update()):
                key.private_key_encrypted = box.rotate(key.private_key_encrypted)
                counts["signing_keys"] += 1
            # The private keys of certificate credentials (providers/certificates.py).
            for certificate in await session.scalars(select(ProviderCertificate).with_for_update()):
                certificate.private_key_encrypted = box.rotate(certificate.private_key_encrypted)
                counts["certificate_keys"] += 1
            # The ID tokens live sessions keep for sign-out (README, *Identity providers*).
            for sign_in in await session.scalars(
                select(SignInSession)
                .where(SignInSession.id_token_encrypted.is_not(None))
                .with_for_update()
            ):
                assert sign_in.id_token_encrypted is not None  # noqa: S101
                sign_in.id_token_encrypted = box.rotate(sign_in.id_token_encrypted)
                counts["id_tokens"] += 1
        _emit({"status": "rotated", **counts})

    await _with_database(settings, work)


async def cmd_expiring_secrets(settings: Settings, args: argparse.Namespace) -> None:
    """Providers whose client secret expires within --days (expired ones and disabled
    providers included), soonest first: for cron and alerting (README, *Keeping SSO
    healthy*)."""
    from sso_broker.providers.warnings import expiring_secrets

    _load_models()
    days = settings.secret_expiry_warning_days if args.days is None else args.days
    if not 0 <= days <= 3650:
        raise CommandError("--days must be between 0 and 3650")

    async def work(sessionmaker: Any, _keys: list[str]) -> None:
        async with session_scope(sessionmaker) as session:
            found = await expiring_secrets(session, before=utcnow() + timedelta(days=days))
            _emit(
                {
                    "items": [
                        {
                            "provider_id": str(provider.id),
                            "company_id": str(provider.company_id),
                            "name": provider.name,
                            "expires_at": _iso(provider.client_secret_expires_at),
                        }
                        for provider in found
                    ]
                }
            )

    await _with_keys(settings, work)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def _migrate_in_child(settings: Settings) -> None:
    """Applies pending migrations in a forked child, so the serving process never loads
    Alembic: 9 MB of each worker's memory (README, *Performance*)."""
    pid = os.fork()
    if pid == 0:  # the child: migrate, report as any command does, and leave
        code = 1
        try:
            asyncio.run(_with_database(settings, _noop))
            code = 0
        except AppError as e:
            _fail(e.detail, e.code.value)
        except (CommandError, EncryptionKeyError) as e:
            _fail(str(e), "command_failed")
        except BaseException:
            logger.exception("applying migrations failed")
        finally:
            logging.shutdown()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise MigrationFailed


class MigrationFailed(Exception):
    """The child that applied migrations failed and has reported why."""


def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    # Neither is used: no route is a WebSocket (ws="none" below) and serve never reloads.
    # Unloaded, each worker holds 1-1.2 MB less at its peak (README, *Performance*).
    sys.modules.setdefault("watchfiles", None)  # type: ignore[arg-type]
    import uvicorn

    _migrate_in_child(settings)
    if args.workers > 1:
        _share_metrics_between_workers()
    uvicorn.run(
        "sso_broker.main:create_served_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        proxy_headers=True,
        server_header=False,
        ws="none",
        # SIGTERM: stop accepting, let the requests in flight finish within the grace, exit
        # (README, *Graceful shutdown*; /readyz says 503 meanwhile: lifecycle.py).
        timeout_graceful_shutdown=settings.shutdown_grace,
    )


def _share_metrics_between_workers() -> None:
    """Points prometheus-client's multiprocess mode at an empty folder before the workers
    start, so a scrape of any worker reports all of them (README, *Metrics*): the operator's
    ``PROMETHEUS_MULTIPROC_DIR``, emptied of an earlier run's files, or a fresh folder under
    ``$TMPDIR`` (the only writable place of a read-only root filesystem), removed at exit."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    from sso_broker.metrics import MULTIPROCESS_DIR

    given = os.environ.get(MULTIPROCESS_DIR)
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
        return
    made = tempfile.mkdtemp(prefix="sso-broker-metrics-")
    os.environ[MULTIPROCESS_DIR] = made
    atexit.register(shutil.rmtree, made, ignore_errors=True)


async def _noop(_sessionmaker: Any, _box: SecretBox) -> None:
    return None


def cmd_openapi(_settings: Settings, _args: argparse.Namespace) -> None:
    from sso_broker.openapi import render

    sys.stdout.write(render())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sso-broker", description=__doc__.splitlines()[1])
    parser.add_argument("--version", action="version", version=f"sso-broker {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="apply pending migrations, then serve the API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(handler=cmd_serve, is_async=False)

    commands.add_parser("migrate", help="apply pending migrations and exit").set_defaults(
        handler=cmd_migrate, is_async=True
    )

    company = commands.add_parser("create-company", help="create a company")
    company.add_argument("name")
    company.set_defaults(handler=cmd_create_company, is_async=True)

    user = commands.add_parser("create-user", help="create a user in a company (any role)")
    user.add_argument("--company", required=True, type=_uuid)
    user.add_argument("--email", required=True)
    user.add_argument("--name", required=True)
    user.add_argument("--role", required=True, choices=[role.value for role in Role])
    user.add_argument("--provider", type=_uuid, default=None, help="SSO provider id to link")
    user.set_defaults(handler=cmd_create_user, is_async=True)

    token = commands.add_parser("issue-token", help="print a session JWT for a user")
    token.add_argument("--email", required=True)
    token.add_argument("--company", required=True, type=_uuid)
    token.add_argument("--ttl", type=int, default=None, help="lifetime in seconds")
    token.set_defaults(handler=cmd_issue_token, is_async=True)

    commands.add_parser(
        "rotate-keys", help="re-encrypt stored secrets under the first encryption key"
    ).set_defaults(handler=cmd_rotate_keys, is_async=True)

    expiring = commands.add_parser(
        "expiring-secrets",
        help="list providers whose client secret expires within --days (or has expired)",
    )
    expiring.add_argument(
        "--days", type=int, default=None, help="default: SSO_BROKER_SECRET_EXPIRY_WARNING_DAYS"
    )
    expiring.set_defaults(handler=cmd_expiring_secrets, is_async=True)

    commands.add_parser("openapi", help="print the OpenAPI document").set_defaults(
        handler=cmd_openapi, is_async=False
    )
    return parser


def _fail(message: str, code: str, status: int = 1) -> int:
    sys.stderr.write(json.dumps({"error": code, "detail": message}) + "\n")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None and args.handler is not cmd_serve:
        # This process is one short command: what its start-up made lives until it exits, and
        # out of the collector's sight it is not walked again, nor once more at exit. (A server
        # collects first, then freezes: main.py. Tests calling main() keep their collector.)
        gc.freeze()
    try:
        settings = Settings()
    except ValidationError as e:
        problems = "; ".join(str(err["msg"]) for err in e.errors())
        return _fail(f"invalid configuration: {problems}", "invalid_configuration", 2)
    configure_logging(settings.logging_level, settings.log_format)
    try:
        if args.is_async:
            asyncio.run(args.handler(settings, args))
        else:
            args.handler(settings, args)
    except AppError as e:
        return _fail(e.detail, e.code.value)
    except (CommandError, EncryptionKeyError) as e:
        return _fail(str(e), "command_failed")
    except MigrationFailed:
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
