from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from sso_broker.database import Base, IdMixin, TimestampMixin
from sso_broker.schemas import DISPLAY_NAME_MAX


class Company(IdMixin, TimestampMixin, Base):
    __tablename__ = "companies"

    name: Mapped[str] = mapped_column(String(DISPLAY_NAME_MAX))
