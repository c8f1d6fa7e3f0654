"""Sign-in sessions and the session JWTs issued from them."""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Row, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sso_broker.audit import service as audit
from sso_broker.audit.service import EventType
from sso_broker.companies.models import Company
from sso_broker.config import Settings
from sso_broker.crypto import token_hash
from sso_broker.database import session_scope, utcnow
from sso_broker.errors import ErrorCode, InvalidGrant, NotAuthenticated
from sso_broker.sessions.models import LoginCode, RefreshToken, SignInSession
from sso_broker.sessions.tokens import KeyRing, session_claims
from sso_broker.users.models import User

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller behind a verified session JWT: the user, company and session as stored now."""

    user: User
    company: Company
    session: SignInSession


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: datetime
    session: SignInSession
    # Seconds from ``iat`` to ``exp``: the TTL, or less when the session ends sooner.
    expires_in: int


@dataclass(frozen=True, slots=True)
class TokenPair:
    access: IssuedToken
    refresh_token: str


class RefreshTokenReused(InvalidGrant):
    """An already-used refresh token came back; :func:`grant` revokes its session."""

    def __init__(self, session_id: uuid.UUID) -> None:
        super().__init__("The refresh token was already used; the session has been ended.")
        self.session_id = session_id


async def start(
    session: AsyncSession,
    user: User,
    *,
    provider_id: uuid.UUID | None,
    lifetime: timedelta,
    idp_sid: str | None = None,
    login_hint: str | None = None,
) -> SignInSession:
    """Opens a sign-in session for ``user`` that ends after ``lifetime`` at the latest."""
    now = utcnow()
    sign_in = SignInSession(
        id=uuid.uuid4(),
        user_id=user.id,
        company_id=user.company_id,
        provider_id=provider_id,
        idp_sid=idp_sid,
        login_hint=login_hint,
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
    return IssuedToken(
        token=keyring.mint(claims),
        expires_at=expires_at,
        session=sign_in,
        expires_in=max(0, int(claims["exp"]) - int(claims["iat"])),
    )


async def authenticate(
    session: AsyncSession,
    keyring: KeyRing,
    sessionmaker: async_sessionmaker[AsyncSession],
    token: str,
) -> Principal:
    """Resolves a bearer token to its user, company and live session in one query.

    The signature alone is not enough: the user must still exist in the token's company and
    the session must be neither revoked nor past its end, so sign-out and user deletion take
    effect at once on every replica.
    """
    claims = await keyring.verify(token, sessionmaker)
    row = (
        await session.execute(
            select(User, SignInSession, Company)
            .join(SignInSession, SignInSession.user_id == User.id)
            .join(Company, Company.id == User.company_id)
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
    user, sign_in, company = row
    if sign_in.revoked_at is not None or sign_in.expires_at <= utcnow():
        raise NotAuthenticated(
            "The session has ended (signed out or expired); sign in again.",
            code=ErrorCode.SESSION_EXPIRED,
        )
    return Principal(user=user, company=company, session=sign_in)


# --- login codes and refresh tokens -------------------------------------------------------

LOGIN_CODE_TTL = timedelta(seconds=60)


def new_secret_token() -> str:
    """256 bits from the OS's CSPRNG, URL-safe: login codes and refresh tokens."""
    return secrets.token_urlsafe(32)


async def create_login_code(session: AsyncSession, sign_in: SignInSession) -> str:
    """A single-use code for the frontend to trade for tokens within a minute."""
    code = new_secret_token()
    session.add(
        LoginCode(
            code_hash=token_hash(code),
            session_id=sign_in.id,
            expires_at=utcnow() + LOGIN_CODE_TTL,
        )
    )
    await session.flush()
    return code


async def _issue_refresh_token(session: AsyncSession, sign_in: SignInSession) -> str:
    token = new_secret_token()
    session.add(
        RefreshToken(
            token_hash=token_hash(token),
            session_id=sign_in.id,
            expires_at=sign_in.expires_at,
        )
    )
    await session.flush()
    return token


async def _live_session(session: AsyncSession, session_id: uuid.UUID) -> tuple[User, SignInSession]:
    row = (
        await session.execute(
            select(User, SignInSession)
            .join(SignInSession, SignInSession.user_id == User.id)
            .where(SignInSession.id == session_id)
        )
    ).one_or_none()
    if row is None:
        raise InvalidGrant("The sign-in session no longer exists; sign in again.")
    user, sign_in = row
    if sign_in.revoked_at is not None or sign_in.expires_at <= utcnow():
        raise InvalidGrant("The sign-in session has ended; sign in again.")
    return user, sign_in


async def _token_pair(
    session: AsyncSession,
    settings: Settings,
    keyring: KeyRing,
    user: User,
    sign_in: SignInSession,
) -> TokenPair:
    issued = issue_access_token(
        settings, keyring, user, sign_in, ttl=timedelta(seconds=settings.access_token_ttl)
    )
    refresh = await _issue_refresh_token(session, sign_in)
    return TokenPair(access=issued, refresh_token=refresh)


async def exchange_login_code(
    session: AsyncSession, settings: Settings, keyring: KeyRing, code: str
) -> TokenPair:
    """Trades a login code for an access token and the session's first refresh token.

    The code is deleted in the same statement that reads it, so of two concurrent
    exchanges exactly one finds it.
    """
    deleted = (
        await session.execute(
            delete(LoginCode)
            .where(LoginCode.code_hash == token_hash(code))
            .returning(LoginCode.session_id, LoginCode.expires_at)
        )
    ).one_or_none()
    if deleted is None:
        raise InvalidGrant("The login code is unknown or was already used; sign in again.")
    session_id, expires_at = deleted
    if expires_at <= utcnow():
        raise InvalidGrant("The login code has expired; sign in again.")
    user, sign_in = await _live_session(session, session_id)
    return await _token_pair(session, settings, keyring, user, sign_in)


async def refresh(
    session: AsyncSession, settings: Settings, keyring: KeyRing, token: str
) -> TokenPair:
    """Rotates a refresh token: each works once.

    Presenting one that was already used means it was copied: the whole session is revoked
    (RFC 9700 §4.14), so whoever holds the newer token is signed out too and must sign in.
    """
    now = utcnow()
    used = (
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.token_hash == token_hash(token), RefreshToken.used_at.is_(None))
            .values(used_at=now)
            .returning(RefreshToken.session_id, RefreshToken.expires_at)
        )
    ).one_or_none()
    if used is None:
        reused = await session.scalar(
            select(RefreshToken.session_id).where(RefreshToken.token_hash == token_hash(token))
        )
        if reused is not None:
            raise RefreshTokenReused(reused)
        raise InvalidGrant("The refresh token is unknown; sign in again.")
    session_id, expires_at = used
    if expires_at <= now:
        raise InvalidGrant("The refresh token has expired; sign in again.")
    user, sign_in = await _live_session(session, session_id)
    return await _token_pair(session, settings, keyring, user, sign_in)


def _audit_revocations(
    session: AsyncSession,
    rows: Sequence[Row[uuid.UUID, uuid.UUID, uuid.UUID, uuid.UUID | None]],
    reason: str,
    actor_id: uuid.UUID | None,
) -> None:
    for session_id, company_id, user_id, provider_id in rows:
        audit.record(
            session, company_id, EventType.SESSION_REVOKED, actor_user_id=actor_id,
            user_id=user_id, provider_id=provider_id, session_id=session_id,
            details={"reason": reason},
        )  # fmt: skip


_REVOKED = (
    SignInSession.id,
    SignInSession.company_id,
    SignInSession.user_id,
    SignInSession.provider_id,
)


async def revoke(
    session: AsyncSession,
    session_id: uuid.UUID,
    *,
    reason: str,
    actor_id: uuid.UUID | None = None,
) -> None:
    """Ends a sign-in session: its JWTs stop working at once and its refresh tokens die."""
    rows = (
        await session.execute(
            update(SignInSession)
            .where(SignInSession.id == session_id, SignInSession.revoked_at.is_(None))
            .values(revoked_at=utcnow())
            .returning(*_REVOKED)
        )
    ).all()
    await session.execute(delete(LoginCode).where(LoginCode.session_id == session_id))
    _audit_revocations(session, rows, reason, actor_id)


async def revoke_by_idp_session(session: AsyncSession, provider_id: uuid.UUID, idp_sid: str) -> int:
    """Front-channel logout: ends every live session of the provider with that IdP session."""
    rows = (
        await session.execute(
            update(SignInSession)
            .where(
                SignInSession.provider_id == provider_id,
                SignInSession.idp_sid == idp_sid,
                SignInSession.revoked_at.is_(None),
            )
            .values(revoked_at=utcnow())
            .returning(*_REVOKED)
        )
    ).all()
    _audit_revocations(session, rows, "front_channel_logout", None)
    return len(rows)


async def grant(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    keyring: KeyRing,
    *,
    login_code: str | None = None,
    refresh_token: str | None = None,
) -> TokenPair:
    """The token endpoint: one login code or one refresh token in, a fresh token pair out.

    A reused refresh token revokes its session in a transaction of its own, so the
    revocation sticks although the request itself fails.
    """
    try:
        async with session_scope(sessionmaker) as session:
            if login_code is not None:
                return await exchange_login_code(session, settings, keyring, login_code)
            if refresh_token is not None:
                return await refresh(session, settings, keyring, refresh_token)
            raise InvalidGrant("Send a login code or a refresh token.")
    except RefreshTokenReused as reused:
        async with session_scope(sessionmaker) as session:
            await revoke(session, reused.session_id, reason="refresh_token_reuse")
        logger.warning(
            "refresh token reused; session revoked", extra={"session_id": str(reused.session_id)}
        )
        raise


async def purge_expired(session: AsyncSession) -> None:
    """Housekeeping: login codes and refresh tokens past their end are of no use to anyone."""
    now = utcnow()
    await session.execute(delete(LoginCode).where(LoginCode.expires_at < now))
    await session.execute(delete(RefreshToken).where(RefreshToken.expires_at < now))
