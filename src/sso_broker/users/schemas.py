from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, StringConstraints

from sso_broker.schemas import DisplayName, Page, PatchBody, StrictBody
from sso_broker.users.models import EMAIL_MAX, Role


def _fits_when_normalized(email: str) -> str:
    # Lower-casing can lengthen some characters ("İ" becomes two); the stored, normalized
    # form must fit its column too.
    if len(email.lower()) > EMAIL_MAX:
        raise ValueError(f"an email address has at most {EMAIL_MAX} characters")
    return email


Email = Annotated[
    EmailStr, StringConstraints(max_length=EMAIL_MAX), AfterValidator(_fits_when_normalized)
]
UserName = DisplayName


class UserCreate(StrictBody):
    email: Email
    name: UserName
    role: Role = Field(
        description="An administrator may grant up to manager, a manager up to user."
    )
    sso_provider_id: uuid.UUID | None = Field(
        default=None, description="The SSO provider this user signs in with (same company)."
    )


class UserUpdate(PatchBody):
    NOT_NULLABLE = ("email", "name", "role")

    email: Email | None = None
    name: UserName | None = None
    role: Role | None = None
    sso_provider_id: uuid.UUID | None = None


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    name: str
    role: Role
    sso_provider_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class UserList(Page[UserRead]):
    """A page of the company's users, by email."""


class UserSession(BaseModel):
    """A live sign-in session of a user."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    provider_id: uuid.UUID | None = Field(description="The SSO provider that opened it, if any.")
    created_at: datetime
    expires_at: datetime


class UserSessionList(BaseModel):
    items: list[UserSession]
