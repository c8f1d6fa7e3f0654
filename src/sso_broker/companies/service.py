"""Companies: the tenants of sso-broker. Created by operators with the CLI."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from sso_broker.companies import repository
from sso_broker.companies.models import COMPANY_NAME_MAX, Company
from sso_broker.errors import InvalidInput, NotFound


async def create(session: AsyncSession, name: str) -> Company:
    clean = name.strip()
    if not clean or len(clean) > COMPANY_NAME_MAX:
        raise InvalidInput(f"A company name needs 1 to {COMPANY_NAME_MAX} characters.")
    company = Company(id=uuid.uuid4(), name=clean)
    session.add(company)
    await session.flush()
    return company


async def get(session: AsyncSession, company_id: uuid.UUID) -> Company:
    company = await repository.get(session, company_id)
    if company is None:
        raise NotFound(f"No company with id {company_id}.")
    return company
