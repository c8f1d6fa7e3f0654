from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from sso_broker.database import create_engine
from sso_broker.migrate import alembic_config, migrate, migrations_dir
from sso_broker.models import Base
from sso_broker.schema_version import HEAD_REVISION
from tests.conftest import (
    POSTGRES_URL,
    Database,
    _create_postgres_database,
    _drop_postgres_database,
    make_settings,
)


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return compare_metadata(context, Base.metadata)


@pytest.fixture(params=["sqlite", "postgres"] if POSTGRES_URL else ["sqlite"])
async def fresh_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database, never migrated."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/fresh.db"
        return
    url = await _create_postgres_database()
    yield url
    await _drop_postgres_database(url)


class TestMigrations:
    async def test_models_and_migrations_agree(self, database: Database) -> None:
        engine = create_engine(make_settings(database.url))
        try:
            async with engine.connect() as connection:
                differences = await connection.run_sync(_diff)
        finally:
            await engine.dispose()
        assert differences == [], f"autogenerate found differences on {database.backend}"

    def test_one_head_and_dated_file_names(self) -> None:
        scripts = ScriptDirectory(str(migrations_dir()))
        assert len(scripts.get_heads()) == 1
        # What the CLI compares the database with before it loads Alembic (schema_version.py).
        assert scripts.get_heads() == [HEAD_REVISION], "update sso_broker/schema_version.py"
        for path in (migrations_dir() / "versions").glob("*.py"):
            assert path.name[:9].removesuffix("_").isdigit(), path.name
            assert path.name[8] == "_", path.name

    async def test_concurrent_migrations_do_not_race(self, fresh_database: str) -> None:
        engines = [create_engine(make_settings(fresh_database)) for _ in range(3)]
        try:
            await asyncio.gather(*(migrate(engine) for engine in engines))
            await migrate(engines[0])  # and again: nothing pending, nothing fails
            async with engines[0].connect() as connection:
                tables = await connection.run_sync(
                    lambda sync: set(inspect(sync).get_table_names())
                )
                version = (
                    (await connection.execute(text("SELECT version_num FROM alembic_version")))
                    .scalars()
                    .all()
                )
        finally:
            for engine in engines:
                await engine.dispose()
        assert {"companies", "users", "sso_providers", "signing_keys"} <= tables
        assert len(version) == 1

    async def test_downgrade_to_base_and_upgrade_again(self, fresh_database: str) -> None:
        engine = create_engine(make_settings(fresh_database))
        try:
            await migrate(engine)
            async with engine.connect() as connection:
                await connection.run_sync(
                    lambda sync: command.downgrade(alembic_config(sync), "base")
                )
                await connection.commit()
                remaining = await connection.run_sync(
                    lambda sync: set(inspect(sync).get_table_names()) - {"alembic_version"}
                )
            assert remaining == set()
            await migrate(engine)
            async with engine.connect() as connection:
                assert await connection.run_sync(_diff) == []
        finally:
            await engine.dispose()


def _old_tables() -> dict[str, sa.TableClause]:
    """The tables as revision d5a0b3e81f22 left them (before provider types), typed so that
    one insert serves SQLite and PostgreSQL."""

    def stamp() -> sa.ColumnClause[Any]:
        return sa.column("created_at", sa.DateTime(timezone=True))

    return {
        "companies": sa.table(
            "companies",
            sa.column("id", sa.Uuid()),
            sa.column("name", sa.String()),
            stamp(),
            sa.column("updated_at", sa.DateTime(timezone=True)),
        ),
        "sso_providers": sa.table(
            "sso_providers",
            sa.column("id", sa.Uuid()),
            sa.column("company_id", sa.Uuid()),
            sa.column("type", sa.String()),
            sa.column("name", sa.String()),
            sa.column("base_url", sa.String()),
            sa.column("enabled", sa.Boolean()),
            stamp(),
            sa.column("updated_at", sa.DateTime(timezone=True)),
        ),
        "users": sa.table(
            "users",
            sa.column("id", sa.Uuid()),
            sa.column("company_id", sa.Uuid()),
            sa.column("email", sa.String()),
            sa.column("email_normalized", sa.String()),
            sa.column("name", sa.String()),
            sa.column("role", sa.String()),
            sa.column("sso_provider_id", sa.Uuid()),
            stamp(),
            sa.column("updated_at", sa.DateTime(timezone=True)),
        ),
        "identity_links": sa.table(
            "identity_links",
            sa.column("id", sa.Uuid()),
            sa.column("provider_id", sa.Uuid()),
            sa.column("tenant_id", sa.String()),
            sa.column("subject", sa.String()),
            sa.column("user_id", sa.Uuid()),
            stamp(),
        ),
    }


async def test_provider_types_migration_keeps_every_entra_link(fresh_database: str) -> None:
    """Links made before provider types existed still sign their users in afterwards: an Entra
    link's (tenant_id, subject) is its (namespace, subject), and tenants are lower-cased."""
    tenant = "3F2B8C4E-1A2B-4C3D-9E8F-0A1B2C3D4E5F"
    now = datetime.now(UTC)
    company, provider = uuid.uuid4(), uuid.uuid4()
    users = [uuid.uuid4() for _ in range(3)]
    tables = _old_tables()
    engine = create_engine(make_settings(fresh_database))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(
                lambda sync: command.upgrade(alembic_config(sync), "d5a0b3e81f22")
            )
            await connection.commit()
            await connection.execute(
                tables["companies"].insert(),
                [{"id": company, "name": "Contoso", "created_at": now, "updated_at": now}],
            )
            await connection.execute(
                tables["sso_providers"].insert(),
                [
                    {
                        "id": provider, "company_id": company, "type": "entra",
                        "name": "Entra", "base_url": tenant, "enabled": False,
                        "created_at": now, "updated_at": now,
                    }
                ],
            )  # fmt: skip
            await connection.execute(
                tables["users"].insert(),
                [
                    {
                        "id": user, "company_id": company, "email": f"u{i}@contoso.com",
                        "email_normalized": f"u{i}@contoso.com", "name": f"U{i}", "role": "user",
                        "sso_provider_id": provider, "created_at": now, "updated_at": now,
                    }
                    for i, user in enumerate(users)
                ],
            )  # fmt: skip
            await connection.execute(
                tables["identity_links"].insert(),
                [
                    {
                        "id": uuid.uuid4(), "provider_id": provider, "tenant_id": tenant.lower(),
                        "subject": f"oid-{i}", "user_id": user, "created_at": now,
                    }
                    for i, user in enumerate(users)
                ],
            )  # fmt: skip
            await connection.commit()
        await migrate(engine)
        async with engine.connect() as connection:
            links = (
                await connection.execute(
                    text("SELECT namespace, subject FROM identity_links ORDER BY subject")
                )
            ).all()
            base_url = await connection.scalar(text("SELECT base_url FROM sso_providers"))
            assert await connection.run_sync(_diff) == []
    finally:
        await engine.dispose()
    assert [tuple(row) for row in links] == [(tenant.lower(), f"oid-{i}") for i in range(3)]
    assert base_url == tenant.lower()


async def test_email_folding_migration_recomputes_non_ascii_rows(fresh_database: str) -> None:
    """Rows normalized with str.lower() are normalized again in ASCII only; ASCII rows stay."""
    now = datetime.now(UTC)
    company = uuid.uuid4()
    kelvin, plain = uuid.uuid4(), uuid.uuid4()
    tables = _old_tables()
    engine = create_engine(make_settings(fresh_database))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(
                lambda sync: command.upgrade(alembic_config(sync), "a41c6e9d2b07")
            )
            await connection.commit()
            await connection.execute(
                tables["companies"].insert(),
                [{"id": company, "name": "Contoso", "created_at": now, "updated_at": now}],
            )
            await connection.execute(
                tables["users"].insert(),
                [
                    {
                        "id": user_id, "company_id": company, "email": email,
                        "email_normalized": email.lower(), "name": "K", "role": "user",
                        "sso_provider_id": None, "created_at": now, "updated_at": now,
                    }
                    for user_id, email in (
                        (kelvin, "\u212aate@Example.com"), (plain, "Ada@Example.com")
                    )
                ],
            )  # fmt: skip
            await connection.commit()
        await migrate(engine)
        async with engine.connect() as connection:
            rows = dict(
                (
                    await connection.execute(
                        sa.select(tables["users"].c.id, tables["users"].c.email_normalized)
                    )
                ).all()
            )
    finally:
        await engine.dispose()
    assert rows == {kelvin: "\u212aate@example.com", plain: "ada@example.com"}
