"""What the serving process loads and keeps. Every module it imports and every cache it
fills costs each worker memory, so what it does not use stays out (README, *Performance*)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from sso_broker.database import SQLITE_CACHE_SIZE, create_engine, sqlite_on_connect
from tests.conftest import make_settings

# Loaded by nothing the service runs: httpx (with its command line's rich and pygments) and
# authlib only by the tests, Alembic only by the migrating child of `serve` (cli.py),
# pydantic's v1 layer by nothing at all (sso_broker/__init__.py), and bz2 and lzma, which
# zipfile and shutil would load for compressed archives, by nothing either (cli.py).
NEVER = ("httpx", "rich", "pygments", "authlib", "alembic", "pydantic.v1", "bz2", "lzma")

SCRIPT = """
import json, sys
import sso_broker.cli  # `serve` has imported the CLI when uvicorn builds the app
from sso_broker.main import create_app
create_app()
print(json.dumps(sorted(name for name, module in sys.modules.items() if module is not None)))
"""


@pytest.mark.parametrize(
    ("database_url", "other_driver"),
    [
        ("sqlite+aiosqlite:///unused.db", "asyncpg"),
        ("postgresql+asyncpg://user@127.0.0.1:1/unused", "sqlite3"),
    ],
    ids=["sqlite", "postgres"],
)
def test_the_app_loads_neither_test_tools_nor_the_other_databases_driver(
    database_url: str, other_driver: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSO_BROKER_")}
    env.update(
        SSO_BROKER_DATABASE_URL=database_url,
        SSO_BROKER_PUBLIC_URL="https://broker.example",
        SSO_BROKER_FRONTEND_URL="https://dashboard.example",
        SSO_BROKER_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
    )
    loaded = set(
        json.loads(
            subprocess.run(  # noqa: S603 - this interpreter, a fixed script
                [sys.executable, "-c", SCRIPT],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=120,
            ).stdout
        )
    )
    for name in (*NEVER, other_driver):
        assert name not in loaded, f"{name} is loaded"


async def test_every_sqlite_connection_caches_256_kib_of_pages(tmp_path: Path) -> None:
    """SQLite's default is 2 MB of pages per connection, and an SQLite worker has up to 15 of
    the pool's and the hot paths' lanes (database.py): each connection of the engine, and
    each lane, which makes its connections with the same hook, caches 256 KiB."""
    engine = create_engine(make_settings(f"sqlite+aiosqlite:///{tmp_path}/cache.db"))
    try:
        async with engine.connect() as connection:
            size = await connection.scalar(text("PRAGMA cache_size"))
    finally:
        await engine.dispose()
    assert size == SQLITE_CACHE_SIZE == -256
    lane = sqlite3.connect(tmp_path / "lane.db")
    try:
        sqlite_on_connect(lane, None)
        assert lane.execute("PRAGMA cache_size").fetchone() == (SQLITE_CACHE_SIZE,)
    finally:
        lane.close()
