"""What the token endpoint's database work answers.

The statements themselves are the hot paths' (``fastpath.py`` on PostgreSQL,
``fastpath_sqlite.py`` on SQLite, both behind ``fastpath.HotPath``): spending a code or
refresh token and storing the next refresh token is one statement (one transaction on
SQLite), committed before the answer is sent.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sso_broker.sessions.models import SignInSession
from sso_broker.users.models import Role, User

if TYPE_CHECKING:
    from sso_broker.sessions.service import PrincipalSession, PrincipalUser


@dataclass(frozen=True, slots=True)
class SessionUser:
    """The session a code or refresh token belongs to, and its user, as one row gave them."""

    user_id: uuid.UUID
    company_id: uuid.UUID
    email: str
    name: str
    role: Role
    session_id: uuid.UUID
    provider_id: uuid.UUID | None
    expires_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(
        cls, user: User | PrincipalUser, sign_in: SignInSession | PrincipalSession
    ) -> SessionUser:
        """From the rows as the ORM or the hot paths' principal query read them."""
        return cls(
            user_id=user.id,
            company_id=user.company_id,
            email=user.email,
            name=user.name,
            role=user.role,
            session_id=sign_in.id,
            provider_id=sign_in.provider_id,
            expires_at=sign_in.expires_at,
            revoked_at=sign_in.revoked_at,
        )
