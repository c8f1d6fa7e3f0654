"""Service-level guarantees that the API cannot reach without a race."""

from __future__ import annotations

import uuid

import pytest

from sso_broker.database import session_scope
from sso_broker.deps import AppContext
from sso_broker.errors import Conflict, ErrorCode, InvalidInput
from sso_broker.users import service
from sso_broker.users.models import Role, User
from sso_broker.users.repository import normalize_email
from sso_broker.users.schemas import _fits_when_normalized
from tests.conftest import Factory


def _user(company_id: uuid.UUID, email: str, provider_id: uuid.UUID | None = None) -> User:
    return User(
        id=uuid.uuid4(),
        company_id=company_id,
        email=email,
        email_normalized=normalize_email(email),
        name="Racer",
        role=Role.USER,
        sso_provider_id=provider_id,
    )


class TestLostRaces:
    async def test_email_taken_meanwhile_is_a_409_not_a_500(
        self, factory: Factory, context: AppContext
    ) -> None:
        company = await factory.company()
        await factory.user(company, email="taken@example.com")
        with pytest.raises(Conflict) as raised:
            async with session_scope(context.sessionmaker) as session:
                session.add(_user(company.id, "TAKEN@example.com"))
                await service._flush_checked(session)
        assert raised.value.code is ErrorCode.EMAIL_TAKEN

    async def test_provider_deleted_meanwhile_is_a_422_not_email_taken(
        self, factory: Factory, context: AppContext
    ) -> None:
        company = await factory.company()
        with pytest.raises(InvalidInput) as raised:
            async with session_scope(context.sessionmaker) as session:
                session.add(_user(company.id, "new@example.com", provider_id=uuid.uuid4()))
                await service._flush_checked(session)
        assert raised.value.code is ErrorCode.SSO_PROVIDER_NOT_FOUND


class TestEmailLength:
    def test_an_email_that_grows_when_lower_cased_is_refused(self) -> None:
        grows = "İ" * 60 + "@example.com"
        assert len(grows) <= 254 < len(("İ" * 130 + "@example.com").lower())
        with pytest.raises(ValueError, match="at most 254"):
            _fits_when_normalized("İ" * 130 + "@example.com")
        assert _fits_when_normalized(grows) == grows
