from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel

from sso_broker import metrics
from sso_broker.apidocs import no_database
from sso_broker.database import ping, utcnow
from sso_broker.deps import AppContext, ContextDep
from sso_broker.errors import ErrorCode, NotFound, ServiceUnavailable, error_responses
from sso_broker.problems import is_database_unavailable
from sso_broker.providers.warnings import soonest_expiries

logger = logging.getLogger(__name__)

router = APIRouter(tags=["Operations"])


class Health(BaseModel):
    status: str


@router.get("/healthz", summary="Liveness: the process is up", response_model=Health)
@no_database
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: the database answers, and the process is not shutting down",
    response_model=Health,
    responses=error_responses(ErrorCode.DATABASE_UNAVAILABLE, ErrorCode.SHUTTING_DOWN),
)
async def readyz(context: ContextDep) -> Health:
    if context.draining:
        raise ServiceUnavailable(
            "This process is shutting down (SIGTERM): it finishes the requests it has and "
            "takes no new ones; send them to another replica.",
            code=ErrorCode.SHUTTING_DOWN,
            headers={"Retry-After": "5"},
        )
    try:
        await asyncio.wait_for(ping(context.engine), timeout=context.settings.database_timeout)
    except Exception as e:  # whatever the cause, a failed ping means "not ready"
        raise ServiceUnavailable(
            "The database does not answer; check SSO_BROKER_DATABASE_URL and the server.",
            headers={"Retry-After": "5"},
        ) from e
    return Health(status="ok")


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format; README, Operating sso-broker)",
    response_class=Response,
    responses={
        200: {"content": {metrics.CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
        **error_responses(ErrorCode.NOT_FOUND),
    },
)
async def prometheus_metrics(context: ContextDep) -> Response:
    if not context.settings.metrics_enabled:
        raise NotFound("Metrics are off here (SSO_BROKER_METRICS_ENABLED=false).")
    metrics.DB_CONNECTIONS_IN_USE.set(connections_in_use(context))
    return Response(
        metrics.exposition(await _expiry(context)), media_type=metrics.CONTENT_TYPE_LATEST
    )


def connections_in_use(context: AppContext) -> int:
    """This process's database connections checked out now, in both of its pools."""
    pool = context.engine.pool
    checked_out = pool.checkedout() if hasattr(pool, "checkedout") else 0
    return int(checked_out) + context.fast.connections_in_use()


# The expiry gauges' reading serves the scrapes of this long: /metrics takes no credentials
# (README, *Metrics*), so however often it is asked, it costs the database two aggregate
# queries a process per interval, and expiries move in days.
EXPIRY_READ_SECONDS = 30.0


async def _expiry(context: AppContext) -> metrics.Collector | None:
    """The credential-expiry gauges, read at most every ``EXPIRY_READ_SECONDS``; none when
    the database does not answer (the process's own metrics still do: a scrape must tell
    about an outage, not fail with it)."""
    read = context.expiry_read
    if read is not None and time.monotonic() - read[0] < EXPIRY_READ_SECONDS:
        return metrics.Expiry(read[1], read[2], utcnow())
    try:
        async with (
            asyncio.timeout(context.settings.database_timeout),
            context.autocommit() as session,
        ):
            secrets, certificates = await soonest_expiries(session)
    except Exception as e:
        if not is_database_unavailable(e) and not isinstance(e, TimeoutError):
            raise
        logger.warning("metrics without the expiry gauges: the database does not answer")
        return None
    context.expiry_read = (time.monotonic(), secrets, certificates)
    return metrics.Expiry(secrets, certificates, utcnow())
