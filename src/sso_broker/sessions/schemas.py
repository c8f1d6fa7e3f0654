from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field, StringConstraints

from sso_broker.schemas import StrictBody
from sso_broker.users.schemas import UserRead

GrantToken = Annotated[str, StringConstraints(min_length=1, max_length=256)]


def _as_verifier(value: object) -> str | None:
    """A verifier as sent, or "" (which matches no challenge) for anything not a string."""
    return value if value is None or isinstance(value, str) else ""


class LoginCodeGrant(StrictBody):
    grant_type: Literal["login_code"]
    code: GrantToken = Field(description="The one-time code from SIGN_IN_COMPLETE_URL?code=…")
    # Optional, and any JSON value: a missing or malformed one answers invalid_grant and
    # spends the code, as a wrong one does, rather than a 422 that would leave the code for
    # another try (README, *Security model*).
    code_verifier: Annotated[str | None, BeforeValidator(_as_verifier)] = Field(
        default=None,
        description=(
            "The PKCE verifier (RFC 7636: 43 to 128 characters) whose S256 challenge the "
            "frontend passed to /sso/{id}/initiate. Missing or wrong: 400 invalid_grant, "
            "and the code is spent."
        ),
    )


class RefreshTokenGrant(StrictBody):
    grant_type: Literal["refresh_token"]
    refresh_token: GrantToken = Field(description="Each refresh token works once.")


TokenRequest = Annotated[LoginCodeGrant | RefreshTokenGrant, Field(discriminator="grant_type")]


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a token type, not a secret
    expires_in: int = Field(description="Seconds until the access token expires.")
    refresh_token: str


class CompanyRead(BaseModel):
    id: uuid.UUID
    name: str


class SessionRead(BaseModel):
    id: uuid.UUID
    provider_id: uuid.UUID | None
    expires_at: datetime


class MeResponse(BaseModel):
    user: UserRead
    company: CompanyRead
    session: SessionRead


class LogoutResponse(BaseModel):
    idp_logout_url: str | None = Field(
        description="The provider's end-session URL to send the browser to, or null."
    )
