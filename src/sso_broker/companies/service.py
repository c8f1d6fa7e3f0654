"""Companies: the tenants of sso-broker. Created by operators with the CLI."""

from __future__ import annotations

import uuid

from pydantic import TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from sso_broker.companies import repository
from sso_broker.companies.models import Company
from sso_broker.errors import InvalidInput, NotFound
from sso_broker.schemas import DISPLAY_NAME_MAX, DisplayName

_COMPANY_NAME: TypeAdapter[str] = TypeAdapter(DisplayName)


async def create(session: AsyncSession, name: str) -> Company:
    try:
        clean = _COMPANY_NAME.validate_python(name)
    except ValidationError as e:
        raise InvalidInput(
            f"A company name needs 1 to {DISPLAY_NAME_MAX} characters and no control characters."
        ) from e
    company = Company(id=uuid.uuid4(), name=clean)
    session.add(company)
    await session.flush()
    return company


async def get(session: AsyncSession, company_id: uuid.UUID) -> Company:
    company = await repository.get(session, company_id)
    if company is None:
        raise NotFound(f"No company with id {company_id}.")
    return company
