from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Select, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from sso_broker.database import utcnow
from sso_broker.providers.models import SSOProvider
from sso_broker.sessions.models import SignInSession
from sso_broker.users.models import User


async def get(
    session: AsyncSession,
    company_id: uuid.UUID,
    provider_id: uuid.UUID,
    *,
    for_update: bool = False,
) -> SSOProvider | None:
    """The company's provider; ``for_update`` holds its row until the transaction ends
    (PostgreSQL; SQLite runs one write transaction at a time anyway). A sign-in being written
    holds it FOR SHARE (fastpath.py), so such a read waits for that sign-in to commit, and a
    sign-in that comes later waits for this transaction and then finds what it left."""
    query = select(SSOProvider).where(
        SSOProvider.id == provider_id, SSOProvider.company_id == company_id
    )
    return await session.scalar(query.with_for_update() if for_update else query)


def page_query(
    company_id: uuid.UUID, *, after: tuple[datetime, uuid.UUID] | None = None, limit: int
) -> Select[SSOProvider]:
    """A page of the company's providers in creation order (the order an administrator set
    them up in, new ones last), starting after ``after``; the id breaks ties. Served by the
    (company_id, created_at, id) index (``tests/providers/test_paging.py``)."""
    query = select(SSOProvider).where(SSOProvider.company_id == company_id)
    if after is not None:
        query = query.where(tuple_(SSOProvider.created_at, SSOProvider.id) > after)
    return query.order_by(SSOProvider.created_at, SSOProvider.id).limit(limit)


async def page(
    session: AsyncSession,
    company_id: uuid.UUID,
    *,
    after: tuple[datetime, uuid.UUID] | None = None,
    limit: int,
) -> Sequence[SSOProvider]:
    return (await session.scalars(page_query(company_id, after=after, limit=limit))).all()


async def detach(session: AsyncSession, provider: SSOProvider) -> None:
    """Clears the provider from its users and ends the sign-in sessions it opened."""
    await session.execute(
        update(User)
        .where(User.sso_provider_id == provider.id, User.company_id == provider.company_id)
        .values(sso_provider_id=None, updated_at=utcnow())
    )
    await session.execute(
        update(SignInSession)
        .where(SignInSession.provider_id == provider.id, SignInSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
