"""Signing out: the dashboard's sign-out (the session ends, the browser is sent to the
provider's end-session endpoint) and the provider's front-channel logout (README, *Identity
providers*: sign-out)."""

from __future__ import annotations

import logging
import uuid
from urllib.parse import urlencode

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sso_broker.crypto import DecryptionError
from sso_broker.deps import AppContext
from sso_broker.providers.models import SSOProvider
from sso_broker.sessions import service as sessions_service
from sso_broker.sessions.models import SignInSession
from sso_broker.sessions.service import Principal
from sso_broker.sso.discovery import DiscoveryError
from sso_broker.sso.service import adapter_of, cached_provider

logger = logging.getLogger(__name__)


def logout_url(context: AppContext, provider_id: uuid.UUID) -> str:
    return f"{context.settings.public_base}/sso/{provider_id}/logout"


async def sign_out(context: AppContext, session: AsyncSession, principal: Principal) -> str | None:
    """Revokes the caller's session and answers the provider's end-session URL for the
    browser (None for a session that no provider opened, or a provider without one)."""
    signed_in = principal.session
    id_token_encrypted = await session.scalar(
        select(SignInSession.id_token_encrypted).where(SignInSession.id == signed_in.id)
    )
    await sessions_service.revoke(
        session, signed_in.id, reason="logout", actor_id=principal.user.id
    )
    if signed_in.provider_id is None:
        return None
    provider = await session.get(SSOProvider, signed_in.provider_id)
    if provider is None:
        return None
    return await end_session_url(context, provider, signed_in.login_hint, id_token_encrypted)


async def front_channel_logout(
    context: AppContext,
    session: AsyncSession,
    provider_id: uuid.UUID,
    sid: str,
    iss: str | None,
) -> int:
    """OpenID Front-Channel Logout: ends every live session of the provider with IdP session
    ``sid``; answers how many. When the request names its issuer, it must be the provider's
    (for an Entra domain, the one its metadata names), or nothing ends."""
    if "\x00" in sid:  # no session has such a sid (PostgreSQL cannot even compare it)
        return 0
    if iss is not None:
        provider = await cached_provider(context, provider_id)
        if provider is None:
            return 0
        adapter = adapter_of(context, provider)
        # A pinned Entra domain names its issuer itself: no metadata needed for it.
        expected = adapter.issuer(provider.base_url, provider.pinned_tenant)
        if expected is None:
            try:
                expected = (await context.directory.metadata(adapter, provider.base_url)).issuer
            except DiscoveryError:
                expected = None
        if iss != expected:
            logger.info(
                "front-channel logout for another issuer", extra={"provider_id": str(provider_id)}
            )
            return 0
    return await sessions_service.revoke_by_idp_session(session, provider_id, sid)


async def end_session_url(
    context: AppContext,
    provider: SSOProvider,
    login_hint: str | None,
    id_token_encrypted: str | None = None,
) -> str | None:
    """The provider's end-session URL for the frontend to send the browser to after
    sign-out."""
    adapter = adapter_of(context, provider)
    try:
        metadata = await context.directory.metadata(adapter, provider.base_url)
    except DiscoveryError:
        return None
    if metadata.end_session_endpoint is None:
        return None
    id_token_hint = None
    if id_token_encrypted and adapter.logout_needs_id_token:
        try:
            id_token_hint = context.box.decrypt(id_token_encrypted)
        except DecryptionError:  # a retired key: sign-out works, only without the hint
            logger.warning("could not decrypt a session's ID token for sign-out")
    params = {
        "post_logout_redirect_uri": logout_url(context, provider.id),
        **adapter.logout_params(
            client_id=provider.client_id, login_hint=login_hint, id_token=id_token_hint
        ),
    }
    separator = "&" if "?" in metadata.end_session_endpoint else "?"
    return f"{metadata.end_session_endpoint}{separator}{urlencode(params)}"
