from __future__ import annotations

import string
import uuid
from collections.abc import Sequence

from sqlalchemy import Select, select
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


def page_query(
    company_id: uuid.UUID,
    *,
    email: str | None = None,
    sso_provider_id: uuid.UUID | None = None,
    after: str | None = None,
    limit: int,
) -> Select[User]:
    """A page of the company's users by email (normalized), starting after ``after``.

    Email order is what administrators expect of a people list, and it is total: the
    normalized email is unique in a company. Each variant reads one index range, however
    many users there are: the unique (company_id, email_normalized) index, or
    (sso_provider_id, email_normalized) for a provider's users (``tests/users/
    test_paging.py`` holds the plans).
    """
    query = select(User).where(User.company_id == company_id)
    if email is not None:
        query = query.where(User.email_normalized == normalize_email(email))
    if sso_provider_id is not None:
        query = query.where(User.sso_provider_id == sso_provider_id)
    if after is not None:
        query = query.where(User.email_normalized > after)
    return query.order_by(User.email_normalized).limit(limit)


async def page(
    session: AsyncSession,
    company_id: uuid.UUID,
    *,
    email: str | None = None,
    sso_provider_id: uuid.UUID | None = None,
    after: str | None = None,
    limit: int,
) -> Sequence[User]:
    query = page_query(
        company_id, email=email, sso_provider_id=sso_provider_id, after=after, limit=limit
    )
    return (await session.scalars(query)).all()
