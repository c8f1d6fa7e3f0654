"""The hot paths' statements on PostgreSQL, sent with asyncpg itself (README, *Performance*).

Each sign-in row of the benchmark ran about ten statements through SQLAlchemy's async layer,
and each paid for a greenlet (a fresh 16 KB frame stack, mapped and unmapped), a pool
checkout and statement building: a third of a sign-in's CPU. Here the same statements go
straight to asyncpg, prepared once per connection, on a lean pool of their own
(``pgpool.py``); everything else (the admin API, revocations, the audit of failures) stays on
SQLAlchemy. The embedded SQLite has its own versions, run on a thread of their own
(``fastpath_sqlite.py``); both answer the same types (``HotPath``), and the whole test suite
runs on both databases.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg
from sqlalchemy.engine import make_url

from sso_broker.config import Settings
from sso_broker.hotpath import HotPath as HotPath  # its home was here: still named here
from sso_broker.hotpath import LinkConflict, NoLongerServed, Spent
from sso_broker.pgpool import LeanPool
from sso_broker.providers.models import SSOProvider
from sso_broker.sessions.repository import SessionUser
from sso_broker.sso.repository import NewSignIn, Resolution, SignInDraft
from sso_broker.users.models import Role

if TYPE_CHECKING:
    from sso_broker.sessions.service import Principal


_PROVIDER = """
SELECT id, company_id, type, name, base_url, client_id, client_secret_encrypted,
       client_secret_expires_at, enabled, last_error, pinned_tenant, client_auth_method,
       created_at, updated_at
FROM sso_providers WHERE id = $1
"""
_PRINCIPAL = """
SELECT u.id, u.company_id, u.email, u.email_normalized, u.name, u.role, u.sso_provider_id,
       u.created_at, u.updated_at,
       s.id, s.provider_id, s.idp_sid, s.login_hint, s.created_at, s.expires_at, s.revoked_at,
       c.name, c.created_at, c.updated_at
FROM sign_in_sessions s
JOIN users u ON u.id = s.user_id
JOIN companies c ON c.id = u.company_id
WHERE s.id = $1 AND u.id = $2 AND u.company_id = $3
"""
_CONSUME = "INSERT INTO consumed_login_states (state_hash, expires_at) VALUES ($1, $2)"
# The resolution, and the sign-in written at once when the identity's link is good (the
# provider enabled, the linked user still of its company and associated with it: the rule
# of identity.choose_account for a linked identity). $1 the provider, $2 $3 the identity,
# $4 the token's email; the rest as _WRITE_SESSION's, renumbered. The last column says
# whether it wrote. The provider's row is held (FOR SHARE) until the statement commits:
# under READ COMMITTED a provider disabled while the statement ran was invisible to it, and
# the disabling transaction's revocation could not see the session it was writing, so the
# session outlived the kill switch. Now the disable waits for the sign-in (and then revokes
# its session), or the sign-in waits for the disable and reads the provider disabled.
_SIGN_IN = """
WITH found AS (
  SELECT p.enabled, p.last_error, p.company_id AS provider_company,
         l.id AS l_id, l.company_id AS l_company, l.email AS l_email, l.name AS l_name,
         l.role AS l_role, l.sso_provider_id AS l_provider,
         c.id AS c_id, c.company_id AS c_company, c.email AS c_email, c.name AS c_name,
         c.role AS c_role, c.sso_provider_id AS c_provider
  FROM sso_providers p
  LEFT JOIN identity_links k ON k.provider_id = p.id AND k.namespace = $2 AND k.subject = $3
  LEFT JOIN users l ON l.id = k.user_id
  LEFT JOIN users c
    ON c.company_id = p.company_id AND c.email_normalized = $4 AND c.sso_provider_id = p.id
  WHERE p.id = $1
  FOR SHARE OF p),
chosen AS (
  SELECT l_id AS user_id, l_company AS company_id FROM found
  WHERE enabled AND l_company = provider_company AND l_provider = $1),
new_session AS (
  INSERT INTO sign_in_sessions
    (id, user_id, company_id, provider_id, idp_sid, login_hint, created_at, expires_at,
     id_token_encrypted)
  SELECT $5, user_id, company_id, $1, $6, $7, $8, $9, $10 FROM chosen
  RETURNING id),
new_code AS (
  INSERT INTO login_codes (code_hash, session_id, expires_at, code_challenge)
  SELECT $11, $5, $12, $13 FROM chosen),
new_event AS (
  INSERT INTO audit_events
    (id, company_id, type, created_at, provider_id, user_id, session_id, idp_subject)
  SELECT $14, company_id, $15, $8, $1, user_id, $5, $16 FROM chosen)
SELECT enabled, last_error,
       l_id, l_company, l_email, l_name, l_role, l_provider,
       c_id, c_company, c_email, c_name, c_role, c_provider,
       EXISTS (SELECT 1 FROM new_session)
FROM found
"""
# A first sign-in's rows, written by one statement (atomic on its own, so no BEGIN and
# COMMIT either) only while the provider ($4) is enabled and the chosen account ($2, of
# company $3) still of its company and associated with it: the resolution before was another
# statement, and an administrator's change may have landed since. The provider's row is held
# (FOR SHARE) as for a linked sign-in (_SIGN_IN). It answers whether the provider was enabled
# and whether it wrote.
_GUARDED = """
guard AS (
  SELECT enabled, company_id FROM sso_providers WHERE id = $4 FOR SHARE),
served AS (
  SELECT 1 FROM guard
  JOIN users u ON u.id = $2 AND u.company_id = guard.company_id AND u.sso_provider_id = $4
  WHERE guard.enabled AND guard.company_id = $3),
"""
_WRITE_SESSION = """
new_session AS (
  INSERT INTO sign_in_sessions
    (id, user_id, company_id, provider_id, idp_sid, login_hint, created_at, expires_at,
     id_token_encrypted)
  SELECT $1, $2, $3, $4, $5, $6, $7, $8, $14 FROM served),
new_code AS (
  INSERT INTO login_codes (code_hash, session_id, expires_at, code_challenge)
  SELECT $9, $1, $10, $15 FROM served),
new_event AS (
  INSERT INTO audit_events
    (id, company_id, type, created_at, provider_id, user_id, session_id, idp_subject)
  SELECT $11, $3, $12, $7, $4, $2, $1, $13 FROM served)
SELECT coalesce((SELECT enabled FROM guard), false), EXISTS (SELECT 1 FROM served)
"""
_WRITE = "WITH " + _GUARDED + _WRITE_SESSION
# A first sign-in also links the identity, and audits the link (identity.linked).
_LINK = """
new_link AS (
  INSERT INTO identity_links (id, provider_id, namespace, subject, user_id, created_at)
  SELECT $16, $4, $17, $18, $2, $7 FROM served),
link_event AS (
  INSERT INTO audit_events (id, company_id, type, created_at, provider_id, user_id, idp_subject)
  SELECT $19, $3, 'identity.linked', $7, $4, $2, $13 FROM served),
"""
_WRITE_AND_LINK = "WITH " + _GUARDED + _LINK + _WRITE_SESSION
_CLEAR_LAST_ERROR = "UPDATE sso_providers SET last_error = NULL WHERE id = $1"
# The spent row, its session with user and company, and the next refresh token when the
# grant is good: one statement (see HotPath). $1 the spent hash, $2 the new refresh token's,
# $3 now; a login code's ``bound`` says whether $4 is its challenge (the S256 of the verifier
# sent). The session, user and company columns are _PRINCIPAL's, in its order: the caller the
# new access token names, for the principal cache (its /me then asks nothing).
_GRANT = """
found AS (
  SELECT spent.expires_at AS spent_expires, spent.bound,
         u.id AS user_id, u.company_id, u.email, u.email_normalized, u.name, u.role,
         u.sso_provider_id, u.created_at AS user_created, u.updated_at AS user_updated,
         s.id AS session_id, s.provider_id, s.idp_sid, s.login_hint,
         s.created_at AS session_created, s.expires_at, s.revoked_at,
         c.name AS company_name, c.created_at AS company_created,
         c.updated_at AS company_updated
  FROM spent
  JOIN sign_in_sessions s ON s.id = spent.session_id
  JOIN users u ON u.id = s.user_id
  JOIN companies c ON c.id = u.company_id),
added AS (
  INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at)
  SELECT $2, session_id, $3, expires_at FROM found
  WHERE bound AND spent_expires > $3 AND revoked_at IS NULL AND expires_at > $3)
SELECT spent.expires_at, spent.bound,
       f.user_id, f.company_id, f.email, f.email_normalized, f.name, f.role, f.sso_provider_id,
       f.user_created, f.user_updated,
       f.session_id, f.provider_id, f.idp_sid, f.login_hint, f.session_created, f.expires_at,
       f.revoked_at,
       f.company_name, f.company_created, f.company_updated
FROM spent LEFT JOIN found f ON true
"""
_SPEND_CODE = (
    "WITH spent AS (DELETE FROM login_codes WHERE code_hash = $1"  # noqa: S608 - constant text
    " RETURNING session_id, expires_at, coalesce(code_challenge = $4, false) AS bound)," + _GRANT
)
_USE_REFRESH = (
    "WITH spent AS (UPDATE refresh_tokens SET used_at = $3"  # noqa: S608 - constant text
    " WHERE token_hash = $1 AND used_at IS NULL"
    " RETURNING session_id, expires_at, true AS bound)," + _GRANT
)
_REUSED = "SELECT session_id FROM refresh_tokens WHERE token_hash = $1"
_ROTATED_WITHIN = """
SELECT p.expires_at, u.id, u.company_id, u.email, u.name, u.role,
       s.id, s.provider_id, s.expires_at, s.revoked_at
FROM refresh_tokens p
JOIN refresh_tokens n ON n.token_hash = $2 AND n.session_id = p.session_id AND n.used_at IS NULL
JOIN sign_in_sessions s ON s.id = p.session_id
JOIN users u ON u.id = s.user_id
WHERE p.token_hash = $1 AND p.used_at >= $3
"""
# In key order, so two processes adding to the same counters never wait on each other in a
# cycle (a deadlock).
_COUNT_HITS = """
INSERT INTO rate_limit_counters (key, count, expires_at)
SELECT key, count, $3 FROM unnest($1::text[], $2::int[]) AS hits (key, count) ORDER BY key
ON CONFLICT (key) DO UPDATE SET count = rate_limit_counters.count + excluded.count
RETURNING key, count
"""
_PURGE_COUNTERS = "DELETE FROM rate_limit_counters WHERE expires_at < $1"


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _session_user(row: Sequence[Any]) -> tuple[datetime, SessionUser | None]:
    spent_expires, user_id, company_id, email, name, role, sid, pid, expires, revoked = row
    if user_id is None:
        return spent_expires, None
    subject = SessionUser(user_id, company_id, email, name, Role(role), sid, pid, expires, revoked)
    return spent_expires, subject


def _spent(row: Sequence[Any]) -> Spent:
    from sso_broker.sessions.service import Principal

    principal = None if row[2] is None else Principal.from_row(row[2:])
    return Spent(row[0], principal, row[1])


class FastPath:
    """The hot statements on a lean pool of their own (see the module docstring)."""

    def __init__(self, pool: LeanPool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, settings: Settings) -> FastPath:
        dsn = make_url(settings.database_url).set(drivername="postgresql")

        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(
                dsn.render_as_string(hide_password=False),
                timeout=settings.database_timeout,
                command_timeout=settings.database_timeout * 6,
                server_settings={"application_name": "sso-broker"},
            )

        pool = LeanPool(
            connect,
            max_size=settings.database_pool_size,
            acquire_timeout=settings.database_timeout,
        )
        await pool.open()
        return cls(pool)

    def connections_in_use(self) -> int:
        return self.pool.size - self.pool.idle

    async def close(self) -> None:
        await self.pool.close()

    async def provider(self, provider_id: uuid.UUID) -> SSOProvider | None:
        row = await self.pool.fetchrow(_PROVIDER, provider_id)
        if row is None:
            return None
        values = dict(row)
        values["last_error"] = _json(values["last_error"])
        return SSOProvider(**values)

    async def principal(
        self, session_id: uuid.UUID, user_id: uuid.UUID, company_id: uuid.UUID
    ) -> Principal | None:
        from sso_broker.sessions.service import Principal

        row = await self.pool.fetchrow(_PRINCIPAL, session_id, user_id, company_id)
        return None if row is None else Principal.from_row(row)

    async def consume_state(self, state_hash: str, expires_at: datetime) -> bool:
        """Records a login state as used; False when it was used before."""
        try:
            await self.pool.execute(_CONSUME, state_hash, expires_at)
        except asyncpg.UniqueViolationError:
            return False
        return True

    async def sign_in(
        self, draft: SignInDraft, email: str | None
    ) -> tuple[Resolution | None, bool]:
        row = await self.pool.fetchrow(
            _SIGN_IN, draft.provider_id, draft.namespace, draft.subject, email,
            draft.session_id, draft.idp_sid, draft.login_hint, draft.now, draft.expires_at,
            draft.id_token_encrypted, draft.code_hash, draft.code_expires_at,
            draft.code_challenge, draft.audit_event_id, draft.event_type, draft.subject[:64],
        )  # fmt: skip
        if row is None:
            return None, False
        found, written = Resolution.from_row(row), bool(row[14])
        if written and found.last_error is not None:
            # It signs people in again: the provider's last failure is history. A statement
            # of its own, after the sign-in's has committed: an UPDATE of the provider's row
            # inside it conflicted with the FOR SHARE of another sign-in running at the same
            # time, which waited for this one's share in turn (a deadlock, 40P01).
            await self.pool.execute(_CLEAR_LAST_ERROR, draft.provider_id)
        return found, written

    async def write_sign_in(self, new: NewSignIn, *, clear_last_error: bool) -> None:
        """Writes the sign-in's rows in one statement; LinkConflict (nothing written) when
        ``new.link`` meets an identity or account that is already linked."""
        args: list[Any] = [
            new.session_id, new.account.id, new.account.company_id, new.provider_id,
            new.idp_sid, new.login_hint, new.now, new.expires_at, new.code_hash,
            new.code_expires_at, new.audit_event_id, new.event_type, new.subject[:64],
            new.id_token_encrypted, new.code_challenge,
        ]  # fmt: skip
        try:
            if new.link:
                row = await self.pool.fetchrow(
                    _WRITE_AND_LINK, *args, uuid.uuid4(), new.namespace, new.subject, uuid.uuid4()
                )
            else:
                row = await self.pool.fetchrow(_WRITE, *args)
        except asyncpg.UniqueViolationError as e:
            if new.link and (e.table_name == "identity_links"):
                raise LinkConflict(str(e.constraint_name)) from e
            raise
        if row is None or not row[1]:
            raise NoLongerServed(provider_enabled=bool(row and row[0]))
        if clear_last_error:
            await self.pool.execute(_CLEAR_LAST_ERROR, new.provider_id)

    async def spend_login_code(
        self, code_hash: str, *, code_challenge: str, refresh_hash: str, now: datetime
    ) -> Spent | None:
        row = await self.pool.fetchrow(_SPEND_CODE, code_hash, refresh_hash, now, code_challenge)
        return None if row is None else _spent(row)

    async def use_refresh_token(
        self, token_hash: str, *, refresh_hash: str, now: datetime
    ) -> Spent | None:
        row = await self.pool.fetchrow(_USE_REFRESH, token_hash, refresh_hash, now)
        return None if row is None else _spent(row)

    async def reused_session(self, token_hash: str) -> uuid.UUID | None:
        found = await self.pool.fetchval(_REUSED, token_hash)
        return found if isinstance(found, uuid.UUID) else None

    async def rotated_within(
        self, token_hash: str, successor_hash: str, *, since: datetime
    ) -> tuple[datetime, SessionUser | None] | None:
        row = await self.pool.fetchrow(_ROTATED_WITHIN, token_hash, successor_hash, since)
        return None if row is None else _session_user(row)

    async def count_hits(
        self, increments: dict[str, int], expires_at: datetime, *, purge_before: datetime | None
    ) -> dict[str, int]:
        keys = sorted(increments)
        rows = await self.pool.fetch(
            _COUNT_HITS, keys, [increments[key] for key in keys], expires_at
        )
        if purge_before is not None:
            await self.pool.execute(_PURGE_COUNTERS, purge_before)
        return {str(key): int(count) for key, count in rows}
