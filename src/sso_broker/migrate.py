"""Applying migrations from code, under the cross-process bootstrap lock."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from sso_broker.database import bootstrap_connection

# Alembic is imported once its logger is quiet (``migrate``): it logs its plugins' set-up, at
# INFO, while it is being imported.
if TYPE_CHECKING:
    from alembic.config import Config

_PACKAGE_DIR = Path(__file__).resolve().parent


def migrations_dir() -> Path:
    """Where the Alembic scripts are: inside the wheel, or at the top of a checkout."""
    bundled = _PACKAGE_DIR / "_migrations"
    if bundled.is_dir():
        return bundled
    return _PACKAGE_DIR.parents[1] / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    from alembic import command

    command.upgrade(alembic_config(connection), "head")


async def migrate(engine: AsyncEngine) -> None:
    """Brings the schema to the newest revision; concurrent callers wait for each other.

    Alembic's own lines (plugins set up, the dialect chosen) are chatter to an operator: they
    show at the debug level only."""
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("alembic").setLevel(logging.WARNING)
    async with bootstrap_connection(engine) as connection:
        await connection.run_sync(_upgrade)
