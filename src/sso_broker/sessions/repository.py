"""The token endpoint's database work through SQLAlchemy Core: the embedded SQLite's version.

Prebuilt statements on an autocommit connection. No transaction wraps them: each statement
is atomic on its own, and the one that spends the code or token comes first, so a request
that fails after it has still spent it. PostgreSQL runs the same work through asyncpg
(``fastpath.py``), spending and reading in one statement; both answer the types here.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from sso_broker.database import table_of
from sso_broker.sessions.models import LoginCode, RefreshToken, SignInSession
from sso_broker.users.models import Role, User

_codes = table_of(LoginCode)
_refresh = table_of(RefreshToken)
_sessions = table_of(SignInSession)
_users = table_of(User)


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
    def of(cls, user: User, sign_in: SignInSession) -> SessionUser:
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


_SESSION_USER = (
    _users.c.id,
    _users.c.company_id,
    _users.c.email,
    _users.c.name,
    _users.c.role,
    _sessions.c.id,
    _sessions.c.provider_id,
    _sessions.c.expires_at,
    _sessions.c.revoked_at,
)


def _session_user(row: Sequence[Any]) -> SessionUser:
    return SessionUser(*row[-len(_SESSION_USER) :])


_SPEND_CODE = (
    delete(_codes)
    .where(_codes.c.code_hash == bindparam("hash"))
    .returning(_codes.c.session_id, _codes.c.expires_at)
)
_USE_REFRESH = (
    update(_refresh)
    .where(_refresh.c.token_hash == bindparam("hash"), _refresh.c.used_at.is_(None))
    .values(used_at=bindparam("now"))
    .returning(_refresh.c.session_id, _refresh.c.expires_at)
)
_SESSION_USER_BY_ID = (
    select(*_SESSION_USER)
    .select_from(_sessions)
    .join(_users, _users.c.id == _sessions.c.user_id)
    .where(_sessions.c.id == bindparam("session_id"))
)
_ADD_REFRESH = insert(_refresh)
_REUSED = select(_refresh.c.session_id).where(_refresh.c.token_hash == bindparam("hash"))


class CoreTokens:
    """The token endpoint's statements through SQLAlchemy Core (SQLite); ``FastPath`` has the
    same methods for PostgreSQL (``TokenStore``)."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection

    async def spend_login_code(self, code_hash: str) -> tuple[datetime, SessionUser | None] | None:
        """Deletes the code and answers its expiry and session; None when there was no such
        code. Of two concurrent exchanges exactly one deletes the row, so a code works once."""
        spent = (await self.connection.execute(_SPEND_CODE, {"hash": code_hash})).first()
        if spent is None:
            return None
        session_id, expires_at = spent
        return expires_at, await self._session_user(session_id)

    async def use_refresh_token(
        self, token_hash: str, now: datetime
    ) -> tuple[datetime, SessionUser | None] | None:
        """Marks an unused refresh token used; answers its expiry and session, or None when
        the token is unknown or was used before (:meth:`reused_session` tells which)."""
        params = {"hash": token_hash, "now": now}
        used = (await self.connection.execute(_USE_REFRESH, params)).first()
        if used is None:
            return None
        session_id, expires_at = used
        return expires_at, await self._session_user(session_id)

    async def reused_session(self, token_hash: str) -> uuid.UUID | None:
        """The session of a refresh token that exists but was already used."""
        found = await self.connection.scalar(_REUSED, {"hash": token_hash})
        return found if isinstance(found, uuid.UUID) else None

    async def add_refresh_token(
        self, *, token_hash: str, session_id: uuid.UUID, expires_at: datetime, now: datetime
    ) -> None:
        values = {
            "token_hash": token_hash,
            "session_id": session_id,
            "created_at": now,
            "expires_at": expires_at,
        }
        await self.connection.execute(_ADD_REFRESH, values)

    async def _session_user(self, session_id: uuid.UUID) -> SessionUser | None:
        params = {"session_id": session_id}
        row = (await self.connection.execute(_SESSION_USER_BY_ID, params)).first()
        return None if row is None else _session_user(row)


class TokenStore(Protocol):
    async def spend_login_code(
        self, code_hash: str
    ) -> tuple[datetime, SessionUser | None] | None: ...

    async def use_refresh_token(
        self, token_hash: str, now: datetime
    ) -> tuple[datetime, SessionUser | None] | None: ...

    async def reused_session(self, token_hash: str) -> uuid.UUID | None: ...

    async def add_refresh_token(
        self, *, token_hash: str, session_id: uuid.UUID, expires_at: datetime, now: datetime
    ) -> None: ...
