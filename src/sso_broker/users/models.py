from __future__ import annotations

import uuid
from enum import StrEnum

from sqlalchemy import Enum, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from sso_broker.database import Base, IdMixin, TimestampMixin
from sso_broker.schemas import DISPLAY_NAME_MAX

EMAIL_MAX = 254


class Role(StrEnum):
    ADMINISTRATOR = "administrator"
    MANAGER = "manager"
    USER = "user"
    READ_ONLY = "read_only"


class User(IdMixin, TimestampMixin, Base):
    __tablename__ = "users"
    # The list pages by email (``repository.page``): the unique constraint's index serves a
    # company's page and the email filter, this one a provider's page (and the provider's
    # deletion, which clears sso_provider_id).
    __table_args__ = (
        UniqueConstraint("company_id", "email_normalized"),
        Index("ix_users_provider_email", "sso_provider_id", "email_normalized"),
    )

    company_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("companies.id", ondelete="CASCADE"), index=True
    )
    email: Mapped[str] = mapped_column(String(EMAIL_MAX))
    # Lower-cased email: uniqueness per company and look-ups are case-insensitive.
    email_normalized: Mapped[str] = mapped_column(String(EMAIL_MAX))
    name: Mapped[str] = mapped_column(String(DISPLAY_NAME_MAX))
    role: Mapped[Role] = mapped_column(
        Enum(
            Role,
            name="user_role",
            native_enum=False,
            create_constraint=True,
            length=32,
            values_callable=lambda roles: [role.value for role in roles],
        )
    )
    sso_provider_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("sso_providers.id", ondelete="SET NULL")
    )
