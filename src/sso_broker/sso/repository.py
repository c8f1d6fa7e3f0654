"""What the callback's database work reads and writes.

After the identity provider has answered, a sign-in needs to know three things — is the
provider still enabled, which account is linked to this identity, and (at a first sign-in)
which account of the company has this email — and then to write the link, the session, its
login code and the audit event. For an identity already linked, which is every sign-in but
a user's first, that is one statement of CTEs on PostgreSQL (``fastpath.py``) and one
transaction on SQLite, which has no data-modifying CTEs (``fastpath_sqlite.py``): the SELECT
with outer joins, and the writes when its answer is the one ``identity.choose_account``
takes. A first sign-in then writes the link with the rest in a second one. The types here
are shared by both.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sso_broker.users.models import Role


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

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Resolution:
        """From the hot paths' resolving query (``fastpath.py``, ``fastpath_sqlite.py``), its
        ids already UUIDs: enabled, last_error (JSON text or decoded), then the linked and the
        candidate account's id, company_id, email, name, role and sso_provider_id."""
        last_error = row[1]
        return cls(
            enabled=bool(row[0]),
            last_error=json.loads(last_error) if isinstance(last_error, str) else last_error,
            linked=_account(row, 2),
            candidate=_account(row, 8),
        )


def _account(row: Sequence[Any], start: int) -> Account | None:
    if row[start] is None:
        return None
    id_, company_id, email, name, role, provider_id = row[start : start + 6]
    return Account(id_, company_id, email, name, Role(role), provider_id)


@dataclass(frozen=True, slots=True)
class SignInDraft:
    """The rows a successful callback writes, before the account is known: everything the
    identity provider's answer and this request decide."""

    provider_id: uuid.UUID
    namespace: str  # the tenant (Entra) or issuer the subject is unique in
    subject: str
    session_id: uuid.UUID
    idp_sid: str | None
    login_hint: str | None
    id_token_encrypted: (
        str | None
    )  # kept only where sign-out needs it (Adapter.logout_needs_id_token)
    now: datetime
    expires_at: datetime
    code_hash: str
    code_challenge: str  # the frontend's PKCE challenge: the code answers only its verifier
    code_expires_at: datetime
    event_type: str
    audit_event_id: uuid.UUID

    def for_account(self, account: Account, *, link: bool) -> NewSignIn:
        return NewSignIn(
            self.provider_id, self.namespace, self.subject, self.session_id, self.idp_sid,
            self.login_hint, self.id_token_encrypted, self.now, self.expires_at,
            self.code_hash, self.code_challenge, self.code_expires_at, self.event_type,
            self.audit_event_id, account, link,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class NewSignIn(SignInDraft):
    """The rows a successful callback writes."""

    account: Account
    link: bool  # a first sign-in: link the identity to the account too
