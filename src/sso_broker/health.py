from __future__ import annotations

import asyncio

from fastapi import APIRouter
from pydantic import BaseModel

from sso_broker.apidocs import no_database
from sso_broker.database import ping
from sso_broker.deps import ContextDep
from sso_broker.errors import ErrorCode, ServiceUnavailable, error_responses

router = APIRouter(tags=["Operations"])


class Health(BaseModel):
    status: str


@router.get("/healthz", summary="Liveness: the process is up", response_model=Health)
@no_database
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: the database answers",
    response_model=Health,
    responses=error_responses(ErrorCode.DATABASE_UNAVAILABLE),
)
async def readyz(context: ContextDep) -> Health:
    try:
        await asyncio.wait_for(ping(context.engine), timeout=context.settings.database_timeout)
    except Exception as e:  # whatever the cause, a failed ping means "not ready"
        raise ServiceUnavailable(
            "The database does not answer; check SSO_BROKER_DATABASE_URL and the server.",
            headers={"Retry-After": "5"},
        ) from e
    return Health(status="ok")
