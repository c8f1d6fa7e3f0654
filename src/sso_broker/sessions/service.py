"""Sign-in sessions and the session JWTs issued from them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sso_broker.config import Settings
from sso_broker.database import utcnow
from sso_broker.errors import ErrorCode, NotAuthenticated
from sso_broker.sessions.models import SignInSession
from sso_broker.sessions.tokens import KeyRing, session_claims
from sso_broker.users.models import User


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller behind a verified session JWT: the user as stored now, and the session."""

    user: User
    session: SignInSession


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: datetime
    session: SignInSession


async def start(
    session: AsyncSession,
    user: User,
    *,
    provider_id: uuid.UUID | None,
    lifetime: timedelta,
) -> SignInSession:
    """Opens a sign-in session for ``user`` that ends after ``lifetime`` at the latest."""
    now = utcnow()
    sign_in = SignInSession(
        id=uuid.uuid4(),
        user_id=user.id,
        company_id=user.company_id,
        provider_id=provider_id,
        created_at=now,
        expires_at=now + lifetime,
    )
    session.add(sign_in)
    await session.flush()
    return sign_in


def issue_access_token(
    settings: Settings,
    keyring: KeyRing,
    user: User,
    sign_in: SignInSession,
    *,
    ttl: timedelta,
) -> IssuedToken:
    """Mints a session JWT for ``sign_in``; it never outlives the session itself."""
    now = utcnow()
    expires_at = min(now + ttl, sign_in.expires_at)
    claims = session_claims(
        settings,
        user_id=user.id,
        company_id=user.company_id,
        role=user.role.value,
        email=user.email,
        name=user.name,
        session_id=sign_in.id,
        provider_id=sign_in.provider_id,
        issued_at=now,
        expires_at=expires_at,
    )
    return IssuedToken(token=keyring.mint(claims), expires_at=expires_at, session=sign_in)


async def authenticate(
    session: AsyncSession,
    keyring: KeyRing,
    sessionmaker: async_sessionmaker[AsyncSession],
    token: str,
) -> Principal:
    """Resolves a bearer token to its user and live session in one query.

    The signature alone is not enough: the user must still exist in the token's company and
    the session must be neither revoked nor past its end, so sign-out and user deletion take
    effect at once on every replica.
    """
    claims = await keyring.verify(token, sessionmaker)
    row = (
        await session.execute(
            select(User, SignInSession)
            .join(SignInSession, SignInSession.user_id == User.id)
            .where(
                SignInSession.id == claims.session_id,
                User.id == claims.user_id,
                User.company_id == claims.company_id,
            )
        )
    ).one_or_none()
    if row is None:
        raise NotAuthenticated(
            "The session or its user no longer exists; sign in again.",
            code=ErrorCode.INVALID_TOKEN,
        )
    user, sign_in = row
    if sign_in.revoked_at is not None or sign_in.expires_at <= utcnow():
        raise NotAuthenticated(
            "The session has ended (signed out or expired); sign in again.",
            code=ErrorCode.SESSION_EXPIRED,
        )
    return Principal(user=user, session=sign_in)
