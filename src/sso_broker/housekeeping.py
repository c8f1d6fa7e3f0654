"""Housekeeping: used login states, login codes and refresh tokens past their end are of use
to no one, and each process deletes them now and then, off the request path.

They were deleted by 2 % of sign-in callbacks, inside the request: that put the purge's
transaction, and on SQLite its hold of the one write lock, into the sign-in's p99 (README,
*Performance*). Now a task of each process purges every ``SSO_BROKER_HOUSEKEEPING_INTERVAL``
seconds (a random part of it apart, so replicas started together do not purge together), in
batches of ``database.PURGE_BATCH`` rows a table, each its own short transaction, until the
backlog is gone or ``MAX_ROUNDS`` batches are done. Several replicas purging at once is
harmless: each batch deletes what is still there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator

from sso_broker import database
from sso_broker.database import session_scope
from sso_broker.deps import AppContext
from sso_broker.lifecycle import in_background
from sso_broker.problems import is_database_unavailable
from sso_broker.sessions import service as sessions_service
from sso_broker.sso import state

logger = logging.getLogger(__name__)

# Batches a round may take before it yields to the next interval: 500 rows a table each, so
# up to 10,000 rows a table a round; a larger backlog goes over the next rounds.
MAX_ROUNDS = 20


async def purge_expired(context: AppContext) -> int:
    """Deletes expired rows batch by batch until none is left (or ``MAX_ROUNDS``); the
    number of batches it took."""
    for rounds in range(1, MAX_ROUNDS + 1):
        async with session_scope(context.sessionmaker) as session:
            deleted = max(
                await state.purge_expired(session), await sessions_service.purge_expired(session)
            )
        if deleted < database.PURGE_BATCH:
            return rounds
    return MAX_ROUNDS


@contextlib.asynccontextmanager
async def housekeeping(context: AppContext) -> AsyncIterator[None]:
    """Runs the purge every interval while the app serves (not at all when it is 0)."""
    interval = context.settings.housekeeping_interval
    if interval <= 0:
        yield
        return

    async def run() -> None:
        while True:
            await asyncio.sleep(interval * random.uniform(0.5, 1.5))  # noqa: S311 - spreading only
            try:
                await purge_expired(context)
            except Exception as e:
                if not is_database_unavailable(e):
                    logger.exception("housekeeping failed; it runs again next interval")
                else:
                    logger.warning(
                        "housekeeping skipped: the database does not answer",
                        extra={"error": type(e).__name__},
                    )

    async with in_background(run):
        yield
