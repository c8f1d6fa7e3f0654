"""The callback's database work through SQLAlchemy Core: the embedded SQLite's version.

After the identity provider has answered, a sign-in needs to know three things — is the
provider still enabled, which account is linked to this identity, and (at a first sign-in)
which account of the company has this email — and then to write the link, the session, its
login code and the audit event. That is one SELECT with outer joins and, in one transaction,
the inserts one by one (SQLite, in-process, has no data-modifying CTEs and no round trips).
PostgreSQL runs the same work as two statements through asyncpg (``fastpath.py``); the
types defined here are shared by both.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sso_broker.audit.models import AuditEvent
from sso_broker.database import autocommit_connection, table_of
from sso_broker.providers.models import SSOProvider
from sso_broker.sessions.models import LoginCode, SignInSession
from sso_broker.sessions.repository import SessionUser
from sso_broker.sso.models import ConsumedState, IdentityLink
from sso_broker.users.models import Role, User

_audit = table_of(AuditEvent)
_codes = table_of(LoginCode)
_consumed = table_of(ConsumedState)
_links = table_of(IdentityLink)
_providers = table_of(SSOProvider)
_sessions = table_of(SignInSession)
_users = table_of(User)
_linked = _users.alias("linked")
_candidate = _users.alias("candidate")


@dataclass(frozen=True, slots=True)
class Account:
    id: uuid.UUID
    company_id: uuid.UUID
    email: str
    name: str
    role: Role
    sso_provider_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class Resolution:
    """What the database says about an identity signing in through a provider."""

    enabled: bool
    last_error: Any
    linked: Account | None  # the account linked to this identity, if any
    candidate: Account | None  # the associated account with the token's email, if any


def _account_columns(table: Any) -> tuple[Any, ...]:
    c = table.c
    return c.id, c.company_id, c.email, c.name, c.role, c.sso_provider_id


_RESOLVE = (
    select(
        _providers.c.enabled,
        _providers.c.last_error,
        *_account_columns(_linked),
        *_account_columns(_candidate),
    )
    .select_from(_providers)
    .outerjoin(
        _links,
        and_(
            _links.c.provider_id == _providers.c.id,
            _links.c.tenant_id == bindparam("tenant_id"),
            _links.c.subject == bindparam("subject"),
        ),
    )
    .outerjoin(_linked, _linked.c.id == _links.c.user_id)
    .outerjoin(
        _candidate,
        and_(
            _candidate.c.company_id == _providers.c.company_id,
            _candidate.c.email_normalized == bindparam("email"),
            _candidate.c.sso_provider_id == _providers.c.id,
        ),
    )
    .where(_providers.c.id == bindparam("provider_id"))
)
_CONSUME = insert(_consumed)
_CLEAR_LAST_ERROR = (
    update(_providers).where(_providers.c.id == bindparam("pid")).values(last_error=None)
)

_INSERT_LINK = insert(_links).values(
    id=bindparam("link_id"),
    provider_id=bindparam("provider_id"),
    tenant_id=bindparam("tenant_id"),
    subject=bindparam("subject"),
    user_id=bindparam("user_id"),
    created_at=bindparam("now"),
)
_INSERT_SESSION = insert(_sessions).values(
    id=bindparam("session_id"),
    user_id=bindparam("user_id"),
    company_id=bindparam("company_id"),
    provider_id=bindparam("provider_id"),
    idp_sid=bindparam("idp_sid"),
    login_hint=bindparam("login_hint"),
    created_at=bindparam("now"),
    expires_at=bindparam("expires_at"),
)
_INSERT_CODE = insert(_codes).values(
    code_hash=bindparam("code_hash"),
    session_id=bindparam("session_id"),
    expires_at=bindparam("code_expires_at"),
)
_INSERT_AUDIT = insert(_audit).values(
    id=bindparam("event_id"),
    company_id=bindparam("company_id"),
    type=bindparam("event_type"),
    created_at=bindparam("now"),
    provider_id=bindparam("provider_id"),
    user_id=bindparam("user_id"),
    session_id=bindparam("session_id"),
    idp_subject=bindparam("idp_subject"),
)


def _account(row: Any, start: int) -> Account | None:
    values = tuple(row[start : start + 6])
    return None if values[0] is None else Account(*values)


async def consume_state(engine: AsyncEngine, state_hash: str, expires_at: datetime) -> None:
    """Records a login state as used; IntegrityError when it was used before."""
    async with autocommit_connection(engine) as connection:
        await connection.execute(_CONSUME, {"state_hash": state_hash, "expires_at": expires_at})


async def resolve(
    connection: AsyncConnection,
    *,
    provider_id: uuid.UUID,
    tenant_id: str,
    subject: str,
    email: str | None,
) -> Resolution | None:
    """The provider's state and both candidate accounts in one query; None: no provider."""
    row = (
        await connection.execute(
            _RESOLVE,
            {
                "provider_id": provider_id,
                "tenant_id": tenant_id,
                "subject": subject,
                "email": email,
            },
        )
    ).first()
    if row is None:
        return None
    return Resolution(
        enabled=bool(row[0]),
        last_error=row[1],
        linked=_account(row, 2),
        candidate=_account(row, 8),
    )


@dataclass(frozen=True, slots=True)
class NewSignIn:
    """The rows a successful callback writes."""

    provider_id: uuid.UUID
    account: Account
    tenant_id: str
    subject: str
    link: bool  # a first sign-in: link the identity to the account too
    session_id: uuid.UUID
    idp_sid: str | None
    login_hint: str | None
    now: datetime
    expires_at: datetime
    code_hash: str
    code_expires_at: datetime
    event_type: str

    def params(self) -> dict[str, Any]:
        return {
            "link_id": uuid.uuid4(),
            "provider_id": self.provider_id,
            "tenant_id": self.tenant_id,
            "subject": self.subject,
            "user_id": self.account.id,
            "company_id": self.account.company_id,
            "session_id": self.session_id,
            "idp_sid": self.idp_sid,
            "login_hint": self.login_hint,
            "now": self.now,
            "expires_at": self.expires_at,
            "code_hash": self.code_hash,
            "code_expires_at": self.code_expires_at,
            "event_id": uuid.uuid4(),
            "event_type": self.event_type,
            "idp_subject": self.subject[:64],
        }

    def session_user(self) -> SessionUser:
        account = self.account
        return SessionUser(
            user_id=account.id,
            company_id=account.company_id,
            email=account.email,
            name=account.name,
            role=account.role,
            session_id=self.session_id,
            provider_id=self.provider_id,
            expires_at=self.expires_at,
            revoked_at=None,
        )


async def write_sign_in(
    connection: AsyncConnection, new: NewSignIn, *, clear_last_error: bool
) -> None:
    """Writes the sign-in's rows; IntegrityError (nothing written) when ``new.link`` meets an
    identity or account that is already linked."""
    params = new.params()
    if new.link:
        await connection.execute(_INSERT_LINK, params)
    for statement in (_INSERT_SESSION, _INSERT_CODE, _INSERT_AUDIT):
        await connection.execute(statement, params)
    if clear_last_error:
        # It signs people in again: the old failure is history.
        await connection.execute(_CLEAR_LAST_ERROR, {"pid": new.provider_id})
