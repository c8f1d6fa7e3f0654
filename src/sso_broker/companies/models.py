from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from sso_broker.database import Base, IdMixin, TimestampMixin

COMPANY_NAME_MAX = 200


class Company(IdMixin, TimestampMixin, Base):
    __tablename__ = "companies"

    name: Mapped[str] = mapped_column(String(COMPANY_NAME_MAX))
