"""The audit log: what happened to a company's providers, users, sign-ins and sessions.

Events never hold secret values: a change names the fields that changed, not their values.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sso_broker.audit.models import AuditEvent
from sso_broker.database import utcnow


class EventType(StrEnum):
    PROVIDER_CREATED = "provider.created"
    PROVIDER_UPDATED = "provider.updated"
    PROVIDER_ENABLED = "provider.enabled"
    PROVIDER_DISABLED = "provider.disabled"
    PROVIDER_DELETED = "provider.deleted"
    USER_CREATED = "user.created"
    USER_UPDATED = "user.updated"
    USER_DELETED = "user.deleted"
    SIGN_IN_SUCCEEDED = "sign_in.succeeded"
    SIGN_IN_FAILED = "sign_in.failed"
    SESSION_REVOKED = "session.revoked"
    IDENTITY_LINKED = "identity.linked"
    IDENTITY_UNLINKED = "identity.unlinked"


def record(
    session: AsyncSession,
    company_id: uuid.UUID,
    event_type: EventType,
    *,
    actor_user_id: uuid.UUID | None = None,
    provider_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
    session_id: uuid.UUID | None = None,
    idp_subject: str | None = None,
    error: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Adds an event to the caller's unit of work (it commits or rolls back with it)."""
    event = AuditEvent(
        id=uuid.uuid4(),
        company_id=company_id,
        type=event_type.value,
        created_at=utcnow(),
        actor_user_id=actor_user_id,
        provider_id=provider_id,
        user_id=user_id,
        session_id=session_id,
        idp_subject=idp_subject[:64] if idp_subject else None,
        error=error[:64] if error else None,
        details=details,
    )
    session.add(event)
    return event


async def list_events(
    session: AsyncSession,
    company_id: uuid.UUID,
    *,
    types: Sequence[str] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    before: tuple[datetime, uuid.UUID] | None = None,
    limit: int = 50,
) -> Sequence[AuditEvent]:
    """The company's events, newest first, one page (keyset pagination on time and id)."""
    query = select(AuditEvent).where(AuditEvent.company_id == company_id)
    if types:
        query = query.where(AuditEvent.type.in_(list(types)))
    if since is not None:
        query = query.where(AuditEvent.created_at >= since)
    if until is not None:
        query = query.where(AuditEvent.created_at < until)
    if before is not None:
        at, event_id = before
        query = query.where(
            (AuditEvent.created_at < at)
            | ((AuditEvent.created_at == at) & (AuditEvent.id < event_id))
        )
    query = query.order_by(AuditEvent.created_at.desc(), AuditEvent.id.desc()).limit(limit)
    return (await session.scalars(query)).all()
