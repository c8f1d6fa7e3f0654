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
    """Ties an identity at a provider to one of our users: (``namespace``, ``subject``) is
    Entra's tenant ``tid`` and object ``oid``, every other type's ``iss`` and ``sub``.

    Made at a user's first sign-in (email match) and used alone afterwards, so an email
    changed at the identity provider neither locks the user out nor lets someone else in.
    """

    __tablename__ = "identity_links"
    __table_args__ = (
        UniqueConstraint("provider_id", "namespace", "subject"),
        UniqueConstraint("provider_id", "user_id"),
    )

    provider_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sso_providers.id", ondelete="CASCADE")
    )
    namespace: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
