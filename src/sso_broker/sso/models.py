from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from sso_broker.database import Base, IdMixin, utcnow


class ConsumedState(Base):
    """A login state already used at the callback: a replay finds its hash here."""

    __tablename__ = "consumed_login_states"

    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Kept until the state would have expired anyway, then purged.
    expires_at: Mapped[datetime] = mapped_column(index=True)


class IdentityLink(IdMixin, Base):
    """Ties an identity at a provider (tenant ``tid`` + object ``oid``) to one of our users.

    Made at a user's first sign-in (email match) and used alone afterwards, so an email
    changed at the identity provider neither locks the user out nor lets someone else in.
    """

    __tablename__ = "identity_links"
    __table_args__ = (
        UniqueConstraint("provider_id", "tenant_id", "subject"),
        UniqueConstraint("provider_id", "user_id"),
    )

    provider_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sso_providers.id", ondelete="CASCADE")
    )
    tenant_id: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
