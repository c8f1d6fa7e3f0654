"""Removing identity links, audited (README, *Identities and first sign-in*).

A link ties an identity at a provider to an account. It is removed when what it was made
under changes: the provider's ``base_url`` or ``client_id`` (another tenant or application
may now answer), or the user's email or provider (the link was made by that email, for that
provider). The next sign-in links again by the rules of a first one.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from sso_broker.audit import service as audit
from sso_broker.audit.service import EventType
from sso_broker.sso.models import IdentityLink


async def remove_links(
    session: AsyncSession,
    *conditions: Any,
    company_id: uuid.UUID,
    reason: str,
    actor_id: uuid.UUID | None,
) -> int:
    """Deletes the links matching ``conditions`` (of one company's provider or user), each
    audited as ``identity.unlinked`` with ``reason``; answers how many."""
    rows = (
        await session.execute(
            delete(IdentityLink)
            .where(*conditions)
            .returning(IdentityLink.provider_id, IdentityLink.user_id, IdentityLink.subject)
        )
    ).all()
    for provider_id, user_id, subject in rows:
        audit.record(
            session, company_id, EventType.IDENTITY_UNLINKED, actor_user_id=actor_id,
            provider_id=provider_id, user_id=user_id, idp_subject=subject,
            details={"reason": reason},
        )  # fmt: skip
    return len(rows)
