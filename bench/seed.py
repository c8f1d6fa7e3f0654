"""The bench's databases and their seed, written in SQL (never through the API one by one).

After the service has migrated the schema: companies (one per provider), enabled Entra
providers (tenant and client id GUIDs, the client secret encrypted with the service's own
``SecretBox`` and key), users dealt round-robin to the providers (role ``user``, lower-case
emails, ``sso_provider_id`` set) and one administrator. Ids come from
:mod:`bench.common` (``md5(prefix:index)`` as a UUID), so they are random-looking yet known.

PostgreSQL builds each table with one ``INSERT … SELECT … FROM generate_series`` (foreign-key
triggers off, secondary indexes built after the load); SQLite takes ``executemany`` from a
generator in one transaction, without a journal, with a large page cache, its secondary
indexes built after the load.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from bench import common
from bench.common import Scale
from sso_broker.crypto import SecretBox

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
PROVIDER_NAME = "Azure AD / Entra"


def encrypted_client_secret(encryption_key: str) -> str:
    """The seeded providers' secret as the service stores it (its own Fernet encryption)."""
    return SecretBox([encryption_key]).encrypt(common.CLIENT_SECRET)


@dataclass
class Database:
    """A throwaway database: a SQLite file in a temporary folder, or a PostgreSQL database."""

    kind: str  # "sqlite" or "postgres"
    url: str  # SQLAlchemy URL, as the service takes it
    folder: Path | None = None  # SQLite
    server_url: str | None = None  # PostgreSQL: where CREATE/DROP DATABASE run

    @property
    def name(self) -> str:
        return make_url(self.url).database or ""


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def create_database(kind: str, postgres_url: str) -> Database:
    if kind == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="sso-broker-bench-"))
        return Database(kind, f"sqlite+aiosqlite:///{folder / 'bench.db'}", folder=folder)
    name = f"sso_broker_bench_{secrets.token_hex(6)}"
    connection = await asyncpg.connect(_asyncpg_dsn(postgres_url))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    return Database(kind, url, server_url=postgres_url)


async def drop_database(database: Database) -> None:
    if database.kind == "sqlite":
        if database.folder is not None:
            shutil.rmtree(database.folder, ignore_errors=True)
        return
    assert database.server_url is not None  # noqa: S101
    connection = await asyncpg.connect(_asyncpg_dsn(database.server_url))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)')
    finally:
        await connection.close()


async def seed(database: Database, scale: Scale, encryption_key: str) -> float:
    """Fills the migrated database; returns the seconds it took (encryption included)."""
    started = time.perf_counter()
    secret = encrypted_client_secret(encryption_key)
    if database.kind == "sqlite":
        _seed_sqlite(Path(make_url(database.url).database or ""), scale, secret)
    else:
        await _seed_postgres(database.url, scale, secret)
    return time.perf_counter() - started


@contextlib.asynccontextmanager
async def _indexes_after(connection: asyncpg.Connection, table: str) -> AsyncIterator[None]:
    """Drops ``table``'s secondary indexes and unique constraints, and builds them again from
    their own definitions (read from the catalog) once the rows are in: as after a restore."""
    constraints = await connection.fetch(
        "SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint "
        "WHERE conrelid = $1::regclass AND contype = 'u'",
        table,
    )
    for row in constraints:
        await connection.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT "{row["conname"]}"')
    indexes = await connection.fetch(
        "SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS definition "
        "FROM pg_index i WHERE i.indrelid = $1::regclass AND NOT i.indisprimary",
        table,
    )
    for row in indexes:
        await connection.execute(f"DROP INDEX {row['name']}")
    yield
    await connection.execute("SET LOCAL maintenance_work_mem = '512MB'")
    for row in indexes:
        await connection.execute(row["definition"])
    for row in constraints:
        await connection.execute(
            f'ALTER TABLE "{table}" ADD CONSTRAINT "{row["conname"]}" {row["definition"]}'
        )


async def _seed_postgres(url: str, scale: Scale, secret: str) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        async with connection.transaction():
            # The rows are consistent by construction: skip the foreign-key triggers.
            await connection.execute("SET LOCAL session_replication_role = replica")
            await connection.execute(
                """
                INSERT INTO companies (id, name, created_at, updated_at)
                SELECT md5('c:' || i)::uuid, 'Company ' || i, now(), now()
                FROM generate_series(0, $1::int - 1) AS i
                ORDER BY 1
                """,
                scale.providers,
            )
            async with _indexes_after(connection, "sso_providers"):
                await connection.execute(
                    """
                    INSERT INTO sso_providers (id, company_id, type, name, base_url, client_id,
                        client_secret_encrypted, client_secret_expires_at, enabled, last_error,
                        created_at, updated_at)
                    SELECT md5('p:' || i)::uuid, md5('c:' || i)::uuid, 'entra', $2,
                        md5('t:' || i)::uuid::text, md5('a:' || i)::uuid::text, $3, NULL, true,
                        NULL, now(), now()
                    FROM generate_series(0, $1::int - 1) AS i
                    ORDER BY 1
                    """,
                    scale.providers,
                    PROVIDER_NAME,
                    secret,
                )
            async with _indexes_after(connection, "users"):
                await connection.execute(
                    """
                    INSERT INTO users (id, company_id, email, email_normalized, name, role,
                        sso_provider_id, created_at, updated_at)
                    SELECT md5('u:' || i)::uuid, md5('c:' || (i % $2))::uuid,
                        'user' || i || '@tenant' || (i % $2) || '.bench.example',
                        'user' || i || '@tenant' || (i % $2) || '.bench.example',
                        'User ' || i, 'user', md5('p:' || (i % $2))::uuid, now(), now()
                    FROM generate_series(0, $1::int - 1) AS i
                    ORDER BY 1
                    """,
                    scale.users,
                    scale.providers,
                )
                await connection.execute(
                    """
                    INSERT INTO users (id, company_id, email, email_normalized, name, role,
                        sso_provider_id, created_at, updated_at)
                    VALUES ($1, $2, $3, $3, 'Bench Administrator', 'administrator', NULL,
                        now(), now())
                    """,
                    common.ADMIN_ID,
                    common.company_id(common.admin_company(scale)),
                    common.ADMIN_EMAIL,
                )
        # What autovacuum would soon do on a production database.
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


def _seed_sqlite(path: Path, scale: Scale, secret: str) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    companies = [common.company_id(p).hex for p in range(scale.providers)]
    providers = [common.provider_id(p).hex for p in range(scale.providers)]

    def company_rows() -> Iterator[tuple[object, ...]]:
        for p in range(scale.providers):
            yield (companies[p], f"Company {p}", now, now)

    def provider_rows() -> Iterator[tuple[object, ...]]:
        for p in range(scale.providers):
            yield (
                providers[p], companies[p], "entra", PROVIDER_NAME, common.tenant_id(p),
                common.client_id(p), secret, None, 1, None, now, now,
            )  # fmt: skip

    def user_rows() -> Iterator[tuple[object, ...]]:
        # In the order of the UNIQUE (company_id, email_normalized) index, which cannot be
        # dropped: its inserts then append instead of landing all over the tree.
        for p in sorted(range(scale.providers), key=companies.__getitem__):
            emails = sorted(
                (common.user_email(scale, i), i) for i in range(p, scale.users, scale.providers)
            )
            for email, i in emails:
                yield (
                    common.user_id(i).hex, companies[p], email, email, f"User {i}", "user",
                    providers[p], now, now,
                )  # fmt: skip

    connection = sqlite3.connect(path, isolation_level=None)
    try:
        # A throwaway database: no journal while loading, WAL again afterwards.
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("PRAGMA cache_size=-1048576")  # 1 GiB: index inserts stay in memory
        connection.execute("PRAGMA temp_store=MEMORY")
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO companies (id, name, created_at, updated_at) VALUES (?, ?, ?, ?)",
            company_rows(),
        )
        connection.executemany(
            "INSERT INTO sso_providers (id, company_id, type, name, base_url, client_id, "
            "client_secret_encrypted, client_secret_expires_at, enabled, last_error, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            provider_rows(),
        )
        # Secondary indexes are built again, from their own SQL, once the rows are in.
        indexes = connection.execute(
            "SELECT name, sql FROM sqlite_master "
            "WHERE type = 'index' AND tbl_name = 'users' AND sql IS NOT NULL"
        ).fetchall()
        for name, _sql in indexes:
            connection.execute(f'DROP INDEX "{name}"')
        user_insert = (
            "INSERT INTO users (id, company_id, email, email_normalized, name, role, "
            "sso_provider_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        connection.executemany(user_insert, user_rows())
        connection.execute(
            user_insert,
            (
                common.ADMIN_ID.hex, companies[common.admin_company(scale)], common.ADMIN_EMAIL,
                common.ADMIN_EMAIL, "Bench Administrator", "administrator", None, now, now,
            ),
        )  # fmt: skip
        for _name, sql in indexes:
            connection.execute(sql)
        connection.execute("COMMIT")
        connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()
