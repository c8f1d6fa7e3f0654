"""Sign-in sessions and the session JWTs issued from them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sso_broker.audit import service as audit
from sso_broker.audit.service import EventType
from sso_broker.caches import Caches, ReadStamp
from sso_broker.config import Settings
from sso_broker.crypto import token_hash
from sso_broker.database import expired_rows, session_scope, utcnow
from sso_broker.errors import ErrorCode, InvalidGrant, NotAuthenticated
from sso_broker.hotpath import HotPath, Spent
from sso_broker.sessions.models import LoginCode, RefreshToken, SignInSession
from sso_broker.sessions.repository import SessionUser
from sso_broker.sessions.tokens import PACKED_IDS, KeyRing, SessionClaims, session_claims
from sso_broker.sso.pkce import is_verifier, s256_code_challenge
from sso_broker.users.models import Role, User

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller behind a verified session JWT: the user, company and session as stored now."""

    user: PrincipalUser
    company: PrincipalCompany
    session: PrincipalSession

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Principal:
        """From the hot paths' principal query (``fastpath.py``, ``fastpath_sqlite.py``),
        its values already in Python's types: user, session and company columns in order."""
        (uid, cid, email, normalized, name, role, provider, u_created, u_updated,
         sid, s_provider, idp_sid, hint, s_created, expires, revoked,
         company_name, c_created, c_updated) = row  # fmt: skip
        return cls(
            user=PrincipalUser(
                uid, cid, email, normalized, name, Role(role), provider, u_created, u_updated
            ),
            company=PrincipalCompany(cid, company_name, c_created, c_updated),
            session=PrincipalSession(
                sid, uid, cid, s_provider, idp_sid, hint, s_created, expires, revoked
            ),
        )  # fmt: skip


@dataclass(slots=True)
class PrincipalUser:
    """A user row as the principal query reads it: what callers read of ``User``, without
    the ORM's instrumentation (an unattached ``User`` cost more to build than its query)."""

    id: uuid.UUID
    company_id: uuid.UUID
    email: str
    email_normalized: str
    name: str
    role: Role
    sso_provider_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


@dataclass(slots=True)
class PrincipalCompany:
    id: uuid.UUID
    name: str
    created_at: datetime
    updated_at: datetime


@dataclass(slots=True)
class PrincipalSession:
    id: uuid.UUID
    user_id: uuid.UUID
    company_id: uuid.UUID
    provider_id: uuid.UUID | None
    idp_sid: str | None
    login_hint: str | None
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: datetime
    claims: SessionClaims
    # Seconds from ``iat`` to ``exp``: the TTL, or less when the session ends sooner.
    expires_in: int


@dataclass(frozen=True, slots=True)
class TokenPair:
    access: IssuedToken
    refresh_token: str
    # The caller the access token names, as the grant's own statement read it: the principal
    # cache takes it, so the frontend's first /me asks the database nothing (``remember``).
    principal: Principal | None = None


class RefreshTokenReused(InvalidGrant):
    """An already-used refresh token came back; :func:`grant` revokes its session."""

    def __init__(self, session_id: uuid.UUID) -> None:
        super().__init__("The refresh token was already used; the session has been ended.")
        self.session_id = session_id


class LoginCodeUnbound(InvalidGrant):
    """A login code came without the verifier of the challenge it is bound to: the code is
    spent, and :func:`grant` revokes the session it would have opened."""

    def __init__(self, session_id: uuid.UUID) -> None:
        super().__init__(
            "The code_verifier is missing or does not match the code_challenge this sign-in "
            "started with; the login code is spent: sign in again."
        )
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
    return mint(settings, keyring, SessionUser.of(user, sign_in), ttl=ttl)


def mint(
    settings: Settings, keyring: KeyRing, subject: SessionUser, *, ttl: timedelta
) -> IssuedToken:
    """A session JWT for the session and user in ``subject``, cut short by the session's end."""
    now = utcnow()
    expires_at = min(now + ttl, subject.expires_at)
    claims = session_claims(
        settings,
        user_id=subject.user_id,
        company_id=subject.company_id,
        role=subject.role.value,
        email=subject.email,
        name=subject.name,
        session_id=subject.session_id,
        provider_id=subject.provider_id,
        issued_at=now,
        expires_at=expires_at,
    )
    return IssuedToken(
        token=keyring.mint(claims),
        expires_at=expires_at,
        claims=SessionClaims(
            user_id=subject.user_id,
            company_id=subject.company_id,
            session_id=subject.session_id,
            issued_at=int(claims["iat"]),
            expires_at=int(claims["exp"]),
        ),
        expires_in=max(0, int(claims["exp"]) - int(claims["iat"])),
    )


def remember(caches: Caches, pair: TokenPair, read: ReadStamp) -> None:
    """Files a token pair this process just issued: the frontend's first /me after a sign-in
    then costs no signature check (``caches.TokenCache`` keeps the token until its first use
    among the last ones minted) and no query (the caller its grant read, taken ``read`` as
    :meth:`StaleBoundedCache.stamp` said before the grant began, so the one-second rule
    holds; README, *Performance*)."""
    packed = caches.tokens.remember(caches.tokens.key(pair.access.token), pair.access.claims)
    if pair.principal is not None:
        caches.principals.put(packed[:PACKED_IDS], pair.principal, read)


async def authenticate(
    autocommit: async_sessionmaker[AsyncSession],
    fast: HotPath,
    keyring: KeyRing,
    caches: Caches,
    token: str,
) -> Principal:
    """Resolves a bearer token to its user, company and live session.

    The signature alone is not enough: the user must still exist in the token's company and
    the session must be neither revoked nor past its end, so sign-out and user deletion take
    effect at once here and within a second on every other replica (``caches.py``). A
    verified token and the row behind it come from the caches when they can: the benchmark's
    ``/me`` row then costs no cryptography and no query (README, *Performance*).
    """
    key = caches.tokens.key(token)
    # A cached token is a live one (an expired one is verified again, and refused as expired).
    claims = caches.tokens.get(key)
    if claims is None:
        claims = caches.tokens.put(key, await keyring.verify(token, autocommit))
    found = claims
    principal: Principal | None = await caches.principals.get(
        found[:PACKED_IDS],  # the user, company and session ids, as the token names them
        lambda: _load_principal(fast, found),
    )
    if principal is None:
        raise NotAuthenticated(
            "The session or its user no longer exists; sign in again.",
            code=ErrorCode.INVALID_TOKEN,
        )
    sign_in = principal.session
    if sign_in.revoked_at is not None or sign_in.expires_at <= utcnow():
        raise NotAuthenticated(
            "The session has ended (signed out or expired); sign in again.",
            code=ErrorCode.SESSION_EXPIRED,
        )
    return principal


async def _load_principal(fast: HotPath, packed: bytes) -> Principal | None:
    """One query for the user, session and company a token names (all three must match)."""
    claims = SessionClaims.unpack(packed)
    return await fast.principal(claims.session_id, claims.user_id, claims.company_id)


# --- login codes and refresh tokens -------------------------------------------------------

LOGIN_CODE_TTL = timedelta(seconds=60)


def new_secret_token() -> str:
    """256 bits from the OS's CSPRNG, URL-safe: login codes and refresh tokens."""
    return secrets.token_urlsafe(32)


async def create_login_code(
    session: AsyncSession, sign_in: SignInSession, *, code_challenge: str
) -> str:
    """A single-use code for the frontend to trade for tokens within a minute, with the
    verifier of ``code_challenge``."""
    code = new_secret_token()
    session.add(
        LoginCode(
            code_hash=token_hash(code),
            session_id=sign_in.id,
            expires_at=utcnow() + LOGIN_CODE_TTL,
            code_challenge=code_challenge,
        )
    )
    await session.flush()
    return code


def _live(subject: SessionUser | None, now: datetime) -> SessionUser:
    if subject is None:
        raise InvalidGrant("The sign-in session no longer exists; sign in again.")
    if subject.revoked_at is not None or subject.expires_at <= now:
        raise InvalidGrant("The sign-in session has ended; sign in again.")
    return subject


def _token_pair(
    settings: Settings,
    keyring: KeyRing,
    subject: SessionUser,
    refresh_token: str,
    principal: Principal | None = None,
) -> TokenPair:
    issued = mint(settings, keyring, subject, ttl=timedelta(seconds=settings.access_token_ttl))
    return TokenPair(access=issued, refresh_token=refresh_token, principal=principal)


def _subject(spent: Spent) -> SessionUser | None:
    return (
        None
        if spent.principal is None
        else SessionUser.of(spent.principal.user, spent.principal.session)
    )


async def exchange_login_code(
    store: HotPath, settings: Settings, keyring: KeyRing, code: str, code_verifier: str | None
) -> TokenPair:
    """Trades a login code and the frontend's PKCE verifier for an access token and the
    session's first refresh token.

    The code is deleted in the same statement that reads it, so of two concurrent
    exchanges exactly one finds it; that statement also stores the refresh token when the
    checks below pass (``fastpath.HotPath``). A missing or wrong verifier spends the code
    too: whoever saw the code in a URL (a link an attacker sent, history, a log) cannot use
    it without the verifier only the browser that started the sign-in holds (RFC 6749,
    10.12; README, *Security model*).
    """
    refresh_token = new_secret_token()
    now = utcnow()
    # "" matches no stored challenge (always 43 characters): the code is spent unused.
    verifier = code_verifier or ""
    challenge = s256_code_challenge(verifier) if is_verifier(verifier) else ""
    spent = await store.spend_login_code(
        token_hash(code), code_challenge=challenge, refresh_hash=token_hash(refresh_token), now=now
    )
    if spent is None:
        raise InvalidGrant("The login code is unknown or was already used; sign in again.")
    if not spent.bound:
        if spent.principal is not None:
            raise LoginCodeUnbound(spent.principal.session.id)
        raise InvalidGrant("The sign-in session no longer exists; sign in again.")
    if spent.expires_at <= now:
        raise InvalidGrant("The login code has expired; sign in again.")
    subject = _live(_subject(spent), now)
    return _token_pair(settings, keyring, subject, refresh_token, spent.principal)


def successor(key: bytes, token: str) -> str:
    """The refresh token that follows ``token``: a keyed hash of it, so a replica can answer
    the same successor again within the grace without storing any token in clear."""
    digest = hmac.new(key, token.encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


async def refresh(
    store: HotPath, settings: Settings, keyring: KeyRing, successor_key: bytes, token: str
) -> TokenPair:
    """Rotates a refresh token: each works once.

    Presenting one that was already used means it was copied: the whole session is revoked
    (RFC 9700 §4.14), so whoever holds the newer token is signed out too and must sign in.
    Within ``SSO_BROKER_REFRESH_REUSE_GRACE`` seconds of its rotation, while its successor is
    unused, it answers that same successor instead (two tabs, a retried request).
    """
    now = utcnow()
    hashed = token_hash(token)
    next_token = successor(successor_key, token)
    next_hash = token_hash(next_token)
    used = await store.use_refresh_token(hashed, refresh_hash=next_hash, now=now)
    if used is None:
        grace = settings.refresh_reuse_grace
        if grace:
            again = await store.rotated_within(
                hashed, next_hash, since=now - timedelta(seconds=grace)
            )
            if again is not None:
                return _token_pair(settings, keyring, _live(again[1], now), next_token)
        reused = await store.reused_session(hashed)
        if reused is not None:
            raise RefreshTokenReused(reused)
        raise InvalidGrant("The refresh token is unknown; sign in again.")
    if used.expires_at <= now:
        raise InvalidGrant("The refresh token has expired; sign in again.")
    return _token_pair(settings, keyring, _live(_subject(used), now), next_token, used.principal)


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
    await revoke_where(session, SignInSession.id == session_id, reason=reason, actor_id=actor_id)
    await session.execute(delete(LoginCode).where(LoginCode.session_id == session_id))


async def revoke_where(
    session: AsyncSession, *conditions: Any, reason: str, actor_id: uuid.UUID | None
) -> int:
    """Ends every live session matching ``conditions`` (a provider's, a user's), each audited
    as ``session.revoked`` with ``reason``; answers how many. The caches of this process drop
    them at commit and every replica's within a second (``caches.py``)."""
    rows = (
        await session.execute(
            update(SignInSession)
            .where(SignInSession.revoked_at.is_(None), *conditions)
            .values(revoked_at=utcnow(), id_token_encrypted=None)
            .returning(*_REVOKED)
        )
    ).all()
    _audit_revocations(session, rows, reason, actor_id)
    return len(rows)


async def live_sessions(session: AsyncSession, user_id: uuid.UUID) -> Sequence[SignInSession]:
    """The user's sessions that are neither revoked nor expired, newest first."""
    result = await session.scalars(
        select(SignInSession)
        .where(
            SignInSession.user_id == user_id,
            SignInSession.revoked_at.is_(None),
            SignInSession.expires_at > utcnow(),
        )
        .order_by(SignInSession.created_at.desc(), SignInSession.id)
    )
    return result.all()


async def revoke_by_idp_session(session: AsyncSession, provider_id: uuid.UUID, idp_sid: str) -> int:
    """Front-channel logout: ends every live session of the provider with that IdP session."""
    return await revoke_where(
        session,
        SignInSession.provider_id == provider_id,
        SignInSession.idp_sid == idp_sid,
        reason="front_channel_logout",
        actor_id=None,
    )


async def _grant(
    store: HotPath,
    settings: Settings,
    keyring: KeyRing,
    successor_key: bytes,
    login_code: str | None,
    code_verifier: str | None,
    refresh_token: str | None,
) -> TokenPair:
    if login_code is not None:
        return await exchange_login_code(store, settings, keyring, login_code, code_verifier)
    if refresh_token is not None:
        return await refresh(store, settings, keyring, successor_key, refresh_token)
    raise InvalidGrant("Send a login code or a refresh token.")


async def grant(
    fast: HotPath,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    keyring: KeyRing,
    successor_key: bytes,
    *,
    login_code: str | None = None,
    code_verifier: str | None = None,
    refresh_token: str | None = None,
) -> TokenPair:
    """The token endpoint: one login code or one refresh token in, a fresh token pair out.

    Its statements each commit on their own (``fastpath.py``, ``fastpath_sqlite.py``). A
    reused refresh token revokes its session in a transaction of its own, so the revocation
    sticks although the request itself fails.
    """
    try:
        return await _grant(
            fast, settings, keyring, successor_key, login_code, code_verifier, refresh_token
        )
    except LoginCodeUnbound as unbound:
        # It never gave out a token; ended, so no list of live sessions shows it.
        async with session_scope(sessionmaker) as session:
            await revoke(session, unbound.session_id, reason="login_code_unbound")
        logger.warning(
            "login code presented without its verifier; session ended",
            extra={"session_id": str(unbound.session_id)},
        )
        raise
    except RefreshTokenReused as reused:
        async with session_scope(sessionmaker) as session:
            await revoke(session, reused.session_id, reason="refresh_token_reuse")
        logger.warning(
            "refresh token reused; session revoked", extra={"session_id": str(reused.session_id)}
        )
        raise


async def purge_expired(session: AsyncSession) -> int:
    """Housekeeping (``housekeeping.py``): login codes and refresh tokens past their end are
    of no use to anyone. At most ``PURGE_BATCH`` of each at a time, found by index
    (``database.PURGE_BATCH``); the most that went from one table."""
    now = utcnow()
    codes = await session.execute(expired_rows(LoginCode.code_hash, LoginCode.expires_at, now))
    tokens = await session.execute(
        expired_rows(RefreshToken.token_hash, RefreshToken.expires_at, now)
    )
    return max(int(getattr(codes, "rowcount", 0)), int(getattr(tokens, "rowcount", 0)))
