from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from sso_broker.audit import service
from sso_broker.audit.schemas import AuditEventPage, AuditEventRead
from sso_broker.audit.service import EventType
from sso_broker.deps import CurrentAdmin, ReadSessionDep
from sso_broker.errors import AUTHORIZATION_ERRORS, ErrorCode, InvalidInput, error_responses
from sso_broker.schemas import IsoDateTime

router = APIRouter(prefix="/api/v1/audit-events", tags=["Audit log"])


def _encode_cursor(at: datetime, event_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{event_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        at, event_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        before = datetime.fromisoformat(at), uuid.UUID(event_id)
    except (binascii.Error, UnicodeDecodeError, ValueError) as e:
        raise InvalidInput("cursor is not one this API gave out; start again without it.") from e
    if before[0].tzinfo is None:  # we only give out aware ones; a naive one cannot be compared
        raise InvalidInput("cursor is not one this API gave out; start again without it.")
    return before


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
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> AuditEventPage:
    events = await service.list_events(
        session,
        principal.user.company_id,
        types=[t.value for t in event_type or []],
        since=since,
        until=until,
        before=_decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
    )
    page = list(events[:limit])
    more = len(events) > limit
    return AuditEventPage(
        items=[AuditEventRead.model_validate(event) for event in page],
        next_cursor=_encode_cursor(page[-1].created_at, page[-1].id) if more and page else None,
    )
