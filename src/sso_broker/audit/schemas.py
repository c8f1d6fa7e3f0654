from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from sso_broker.schemas import Page


class AuditEventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    type: str
    created_at: datetime
    actor_user_id: uuid.UUID | None
    provider_id: uuid.UUID | None
    user_id: uuid.UUID | None
    session_id: uuid.UUID | None
    idp_subject: str | None
    error: str | None
    details: dict[str, Any] | None


class AuditEventPage(Page[AuditEventRead]):
    """A page of the audit log, newest first."""
