"""SSO providers of a company: creation, credentials, enabling, deletion."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from sso_broker.audit import service as audit
from sso_broker.audit.service import EventType
from sso_broker.crypto import SecretBox
from sso_broker.errors import ErrorCode, InvalidInput, NotFound
from sso_broker.idp import Adapters
from sso_broker.providers import certificates, repository
from sso_broker.providers.models import SSOProvider
from sso_broker.providers.schemas import ProviderCreate, ProviderUpdate
from sso_broker.sessions import service as sessions_service
from sso_broker.sessions.models import SignInSession
from sso_broker.sso.links import remove_links
from sso_broker.sso.models import IdentityLink

# Fields whose change makes a recorded sign-in failure stale.
_CREDENTIAL_FIELDS = frozenset({"base_url", "client_id", "client_secret", "client_auth_method"})


def _not_found() -> NotFound:
    return NotFound(
        "No SSO provider with this id in your company; list them with GET /api/v1/sso-providers."
    )


async def get(
    session: AsyncSession,
    company_id: uuid.UUID,
    provider_id: uuid.UUID,
    *,
    for_update: bool = False,
) -> SSOProvider:
    """The company's provider, or 404: another company's provider looks like no provider."""
    provider = await repository.get(session, company_id, provider_id, for_update=for_update)
    if provider is None:
        raise _not_found()
    return provider


async def page(
    session: AsyncSession,
    company_id: uuid.UUID,
    *,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> Sequence[SSOProvider]:
    """A page of the company's providers, oldest first."""
    return await repository.page(session, company_id, after=after, limit=limit)


async def create(
    session: AsyncSession,
    adapters: Adapters,
    company_id: uuid.UUID,
    data: ProviderCreate,
    *,
    actor_id: uuid.UUID,
) -> SSOProvider:
    """A new, disabled provider; creating one never calls the identity provider."""
    kind = adapters[data.type]
    provider = SSOProvider(
        id=uuid.uuid4(),
        company_id=company_id,
        type=kind.name,
        name=data.name or kind.default_display_name,
        base_url=kind.normalize_base_url(data.base_url),
        enabled=False,
    )
    session.add(provider)
    await session.flush()
    audit.record(
        session, company_id, EventType.PROVIDER_CREATED, actor_user_id=actor_id,
        provider_id=provider.id,
    )  # fmt: skip
    return provider


async def _check_complete(session: AsyncSession, provider: SSOProvider) -> None:
    """An enabled provider needs a client ID and the credential its client_auth_method
    names: a client secret, or an unexpired certificate."""
    key_auth = provider.client_auth_method == certificates.PRIVATE_KEY_JWT
    credential = (
        await certificates.signing(session, provider.id)
        if key_auth
        else provider.client_secret_encrypted
    )
    missing = [
        name
        for name, value in (
            ("client_id", provider.client_id),
            ("an unexpired certificate" if key_auth else "client_secret", credential),
        )
        if value is None
    ]
    if missing:
        how = (
            "make a certificate (POST …/certificate) and upload it to the identity provider"
            if key_auth
            else "send the application's client ID and a client secret's value"
        )
        raise InvalidInput(
            f"The provider cannot be enabled without {' and '.join(missing)}: {how}, with "
            "`enabled: true`.",
            code=ErrorCode.PROVIDER_INCOMPLETE,
        )


async def update(
    session: AsyncSession,
    box: SecretBox,
    adapters: Adapters,
    company_id: uuid.UUID,
    provider_id: uuid.UUID,
    data: ProviderUpdate,
    *,
    actor_id: uuid.UUID,
) -> SSOProvider:
    """Applies a partial update, checking the provider as it would be afterwards.

    Enabling needs a client ID and secret; the check runs on the result, so one request may
    set the credentials and enable together, and removing a credential from an enabled
    provider is refused the same way.
    """
    provider = await get(session, company_id, provider_id)
    kind = adapters[provider.type]
    changed = data.model_fields_set
    was_enabled = provider.enabled

    if "name" in changed and data.name is not None:
        provider.name = data.name
    repointed = []
    if "base_url" in changed and data.base_url is not None:
        base_url = kind.normalize_base_url(data.base_url)
        # The same issuer pasted another way (a PingOne environment ID or its URL) is no
        # re-pointing; a domain names no issuer of its own, so there the text decides.
        before, after = kind.issuer(provider.base_url), kind.issuer(base_url)
        if (before != after) if before and after else base_url != provider.base_url:
            repointed.append("base_url")
            provider.pinned_tenant = None  # a new domain pins itself at its first sign-in
        provider.base_url = base_url
    if "client_id" in changed:
        client_id = kind.normalize_client_id(data.client_id) if data.client_id is not None else None
        if client_id != provider.client_id:
            repointed.append("client_id")
        provider.client_id = client_id
    if "client_secret" in changed:
        provider.client_secret_encrypted = (
            box.encrypt(kind.normalize_client_secret(data.client_secret))
            if data.client_secret is not None
            else None
        )
    if "client_secret_expires_at" in changed:
        provider.client_secret_expires_at = data.client_secret_expires_at
    elif "client_secret" in changed:
        provider.client_secret_expires_at = None  # the old secret's expiry says nothing of the new
    if "client_auth_method" in changed and data.client_auth_method is not None:
        provider.client_auth_method = data.client_auth_method
    if "enabled" in changed and data.enabled is not None:
        provider.enabled = data.enabled

    if provider.enabled:
        await _check_complete(session, provider)
    if changed & _CREDENTIAL_FIELDS:
        provider.last_error = None
    await session.flush()
    if repointed:
        # Another tenant or application may answer now: its identities must link afresh,
        # by the first-sign-in rules (README, *Identities and first sign-in*).
        reason = f"provider_{'_and_'.join(repointed)}_changed"
        await remove_links(
            session,
            IdentityLink.provider_id == provider.id,
            company_id=company_id,
            reason=reason,
            actor_id=actor_id,
        )
        # ... and who signed in through the old one is signed out.
        await sessions_service.revoke_where(
            session, SignInSession.provider_id == provider.id, reason=reason, actor_id=actor_id
        )
    if was_enabled and not provider.enabled:
        # Disabling is the kill switch: everyone it signed in is signed out at once.
        await sessions_service.revoke_where(
            session,
            SignInSession.provider_id == provider.id,
            reason="provider_disabled",
            actor_id=actor_id,
        )
    # Field names only: never a value (the secret least of all).
    audit.record(
        session, company_id, EventType.PROVIDER_UPDATED, actor_user_id=actor_id,
        provider_id=provider.id, details={"fields": sorted(changed)},
    )  # fmt: skip
    if provider.enabled != was_enabled:
        audit.record(
            session, company_id,
            EventType.PROVIDER_ENABLED if provider.enabled else EventType.PROVIDER_DISABLED,
            actor_user_id=actor_id, provider_id=provider.id,
        )  # fmt: skip
    return provider


async def delete(
    session: AsyncSession, company_id: uuid.UUID, provider_id: uuid.UUID, *, actor_id: uuid.UUID
) -> None:
    """Deletes the provider; its users stay, unlinked, and its sign-in sessions end."""
    # Held before anything else: a sign-in being written meanwhile (it holds the row FOR
    # SHARE) commits first and its session is ended below with the others; otherwise it
    # committed after the revocation, and the deletion only cleared its provider_id.
    provider = await get(session, company_id, provider_id, for_update=True)
    await repository.detach(session, provider)
    await session.delete(provider)
    await session.flush()
    audit.record(
        session, company_id, EventType.PROVIDER_DELETED, actor_user_id=actor_id,
        provider_id=provider_id,
    )  # fmt: skip
