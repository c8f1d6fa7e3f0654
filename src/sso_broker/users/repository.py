from __future__ import annotations

import string
import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sso_broker.users.models import User

# Case folding in ASCII only: str.lower() maps U+212A KELVIN SIGN to "k" and U+0130 to
# "i̇", so a look-alike address would compare equal to a real one (README, *Security model*).
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def normalize_email(email: str) -> str:
    """The form emails are compared in: stripped, ASCII letters in lower case, nothing else
    changed."""
    return email.strip().translate(_ASCII_LOWER)


async def get(session: AsyncSession, company_id: uuid.UUID, user_id: uuid.UUID) -> User | None:
    return await session.scalar(
        select(User).where(User.id == user_id, User.company_id == company_id)
    )


async def get_by_email(session: AsyncSession, company_id: uuid.UUID, email: str) -> User | None:
    return await session.scalar(
        select(User).where(
            User.company_id == company_id, User.email_normalized == normalize_email(email)
        )
    )


async def list_for_company(session: AsyncSession, company_id: uuid.UUID) -> Sequence[User]:
    result = await session.scalars(
        select(User).where(User.company_id == company_id).order_by(User.email_normalized)
    )
    return result.all()
