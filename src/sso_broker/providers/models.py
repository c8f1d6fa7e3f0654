from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from sso_broker.database import Base, IdMixin, TimestampMixin
from sso_broker.schemas import DISPLAY_NAME_MAX

BASE_URL_MAX = 255
CLIENT_ID_MAX = 255


class SSOProvider(IdMixin, TimestampMixin, Base):
    __tablename__ = "sso_providers"

    company_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("companies.id", ondelete="CASCADE"), index=True
    )
    type: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(DISPLAY_NAME_MAX))
    base_url: Mapped[str] = mapped_column(String(BASE_URL_MAX))
    client_id: Mapped[str | None] = mapped_column(String(CLIENT_ID_MAX))
    # Fernet token of the client secret; never the secret itself.
    client_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    client_secret_expires_at: Mapped[datetime | None]
    enabled: Mapped[bool] = mapped_column(default=False)
    last_error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # An Entra domain's tenant GUID, as its metadata named it at the first successful
    # sign-in; metadata naming another tenant fails from then on (README, *Identities and
    # first sign-in*). Cleared when base_url changes.
    pinned_tenant: Mapped[str | None] = mapped_column(String(64))
