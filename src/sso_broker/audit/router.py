from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from sso_broker import paging
from sso_broker.audit import service
from sso_broker.audit.schemas import AuditEventPage, AuditEventRead
from sso_broker.audit.service import EventType
from sso_broker.deps import CurrentAdmin, ReadSessionDep
from sso_broker.errors import AUTHORIZATION_ERRORS, ErrorCode, error_responses
from sso_broker.paging import Keyset
from sso_broker.schemas import IsoDateTime

router = APIRouter(prefix="/api/v1/audit-events", tags=["Audit log"])


# Newest first: the key is (created_at, id), descending (``service.list_events``).
EVENTS = Keyset[tuple[datetime, uuid.UUID]](
    "audit-events", paging.time_and_id, paging.read_time_and_id
)


@router.get(
    "",
    summary="The company's audit log, newest first (administrators)",
    response_model=AuditEventPage,
    responses=error_responses(*AUTHORIZATION_ERRORS, ErrorCode.VALIDATION_ERROR),
)
async def list_audit_events(
    principal: CurrentAdmin,
    session: ReadSessionDep,
    event_type: Annotated[list[EventType] | None, Query(alias="type")] = None,
    since: IsoDateTime | None = None,
    until: IsoDateTime | None = None,
    limit: paging.Limit = paging.LIMIT_DEFAULT,
    cursor: paging.Cursor = None,
) -> AuditEventPage:
    events = await service.list_events(
        session,
        principal.user.company_id,
        types=[t.value for t in event_type or []],
        since=since,
        until=until,
        before=EVENTS.after(cursor),
        limit=limit + 1,
    )
    page, next_cursor = EVENTS.page(events, limit, lambda e: (e.created_at, e.id))
    return AuditEventPage(
        items=[AuditEventRead.model_validate(event) for event in page], next_cursor=next_cursor
    )
