"""What the hot paths ask of the database (``HotPath``), whichever database it is.

``fastpath.FastPath`` answers on PostgreSQL (asyncpg), ``fastpath_sqlite.SQLiteFastPath`` on
the embedded SQLite (the standard library's ``sqlite3``). This module names neither driver,
so a process loads only the one its database needs: the lifespan imports that
implementation alone (``main.py``), and asyncpg, which an SQLite deployment never uses, cost
each worker 2.6 MB, ``sqlite3`` a PostgreSQL one 0.9 MB (README, *Performance*).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from sso_broker.providers.models import SSOProvider
    from sso_broker.sessions.repository import SessionUser
    from sso_broker.sessions.service import Principal
    from sso_broker.sso.repository import NewSignIn, Resolution, SignInDraft


class LinkConflict(Exception):
    """A first sign-in's identity link met an identity or account already linked."""


class NoLongerServed(Exception):
    """A first sign-in's account was chosen, but when its rows were to be written the provider
    was disabled (or gone), or the account no longer of its company or associated with it:
    an administrator's change landed between the two statements. Nothing was written."""

    def __init__(self, *, provider_enabled: bool) -> None:
        super().__init__("provider disabled" if not provider_enabled else "account not served")
        self.provider_enabled = provider_enabled


class Spent(NamedTuple):
    """A spent login code or refresh token: its expiry, the session with its user and company
    as the same statement read them (None when the session is gone), and, for a code,
    whether the verifier sent matched the challenge it is bound to (the next refresh token
    is stored only then; a refresh token is always bound)."""

    expires_at: datetime
    principal: Principal | None
    bound: bool


class HotPath(Protocol):
    """The hot paths' database operations: ``fastpath.FastPath`` on PostgreSQL, and
    ``fastpath_sqlite.SQLiteFastPath`` on the embedded SQLite."""

    async def provider(self, provider_id: uuid.UUID) -> SSOProvider | None: ...

    async def principal(
        self, session_id: uuid.UUID, user_id: uuid.UUID, company_id: uuid.UUID
    ) -> Principal | None: ...

    async def consume_state(self, state_hash: str, expires_at: datetime) -> bool: ...

    async def sign_in(
        self, draft: SignInDraft, email: str | None
    ) -> tuple[Resolution | None, bool]:
        """Resolves the identity (None when the provider is gone) and, in the same statement
        or transaction, writes the sign-in when the identity is linked to an account the
        provider still serves: the provider enabled, the account still of its company and
        associated with it (``identity.choose_account``'s answer for a linked identity). True
        when it wrote; a provider's ``last_error`` is then cleared too. A first sign-in
        writes nothing here: ``write_sign_in`` links it. On PostgreSQL the statement holds
        the provider's row (``FOR SHARE``) while it writes, so a provider disabled meanwhile
        either waits for this sign-in and then signs it out, or is seen disabled by it
        (README, *The admin API in short*, kill switches)."""
        ...

    async def write_sign_in(self, new: NewSignIn, *, clear_last_error: bool) -> None:
        """Writes a sign-in whose account the caller chose (a first sign-in, with its link),
        checking again, in the same statement or transaction, that the provider is enabled
        and the account still of its company and associated with it: NoLongerServed, with
        nothing written, when not; LinkConflict when the link meets one already made."""
        ...

    # The token endpoint. Spending a code or refresh token answers its expiry and the
    # session it belongs to, or None when there was no such code or unused token (of two
    # concurrent spends exactly one finds the row, so each works once). The same statement
    # or transaction stores the next refresh token (``refresh_hash``) when, at ``now``, the
    # grant is good: not expired, its session neither revoked nor ended, and for a login
    # code ``code_challenge`` (the S256 of the verifier sent) the one it is bound to — the
    # checks the token endpoint then makes itself, with a message for each
    # (``sessions/service.py``). A code is spent whatever the verifier.

    async def spend_login_code(
        self, code_hash: str, *, code_challenge: str, refresh_hash: str, now: datetime
    ) -> Spent | None: ...

    async def use_refresh_token(
        self, token_hash: str, *, refresh_hash: str, now: datetime
    ) -> Spent | None: ...

    async def reused_session(self, token_hash: str) -> uuid.UUID | None: ...

    async def rotated_within(
        self, token_hash: str, successor_hash: str, *, since: datetime
    ) -> tuple[datetime, SessionUser | None] | None:
        """The refresh grace: the token's expiry and session when it was rotated at or after
        ``since`` into ``successor_hash`` and that successor is still unused; else None."""
        ...

    async def count_hits(
        self, increments: dict[str, int], expires_at: datetime, *, purge_before: datetime | None
    ) -> dict[str, int]:
        """Adds to rate-limit counters and answers their totals (``ratelimit.py``), in one
        statement; with ``purge_before``, also deletes counters that expired before it."""
        ...

    def connections_in_use(self) -> int:
        """Connections busy with a statement now (the metrics' pool gauge)."""
        ...

    async def close(self) -> None: ...
