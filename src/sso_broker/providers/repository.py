from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from sso_broker.database import utcnow
from sso_broker.providers.models import SSOProvider
from sso_broker.sessions.models import SignInSession
from sso_broker.users.models import User


async def get(
    session: AsyncSession, company_id: uuid.UUID, provider_id: uuid.UUID
) -> SSOProvider | None:
    return await session.scalar(
        select(SSOProvider).where(
            SSOProvider.id == provider_id, SSOProvider.company_id == company_id
        )
    )


async def list_for_company(session: AsyncSession, company_id: uuid.UUID) -> Sequence[SSOProvider]:
    result = await session.scalars(
        select(SSOProvider)
        .where(SSOProvider.company_id == company_id)
        .order_by(SSOProvider.created_at, SSOProvider.id)
    )
    return result.all()


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
