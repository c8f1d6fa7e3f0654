from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from sso_broker.database import Base, IdMixin, utcnow


class AuditEvent(IdMixin, Base):
    """Something an administrator may need to know happened in their company, and when."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_company_created", "company_id", "created_at"),)

    company_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # No foreign keys below: the record outlives what it names (a deleted user, a provider).
    actor_user_id: Mapped[uuid.UUID | None]
    provider_id: Mapped[uuid.UUID | None]
    user_id: Mapped[uuid.UUID | None]
    session_id: Mapped[uuid.UUID | None]
    idp_subject: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
