from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from sso_broker.database import create_engine
from sso_broker.migrate import alembic_config, migrate, migrations_dir
from sso_broker.models import Base
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
