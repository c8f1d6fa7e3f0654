from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from sso_broker.companies.models import Company


async def get(session: AsyncSession, company_id: uuid.UUID) -> Company | None:
    return await session.get(Company, company_id)
