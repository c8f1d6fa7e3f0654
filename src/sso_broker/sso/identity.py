"""Who a validated ID token signs in: the nOAuth lesson applied.

An email claim alone is not an identity (in a multi-tenant Entra app anyone can set one),
so identities are keyed by (provider, ``tid``, ``oid``). The email is used once, at a
user's first sign-in, to find the account an administrator associated with this provider;
afterwards the link alone counts.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from sso_broker.errors import SignInError, SignInErrorCode
from sso_broker.providers.models import SSOProvider
from sso_broker.sso.id_token import IdTokenClaims
from sso_broker.sso.models import IdentityLink
from sso_broker.users.models import User
from sso_broker.users.repository import normalize_email


def _not_provisioned(reason: str, claims: IdTokenClaims) -> SignInError:
    return SignInError(SignInErrorCode.USER_NOT_PROVISIONED, reason, idp_subject=claims.object_id)


async def resolve_user(session: AsyncSession, provider: SSOProvider, claims: IdTokenClaims) -> User:
    """The user this identity signs in as, linking it on first sign-in.

    A link counts only while its user still belongs to the provider's company and is still
    associated with this provider: removing the association locks the identity out at once.
    A first sign-in links only a user of the provider's company, associated with this
    provider, whose email equals the token's (case-insensitively) and who has no link yet.
    """
    linked = (
        await session.execute(
            select(User)
            .join(IdentityLink, IdentityLink.user_id == User.id)
            .where(
                IdentityLink.provider_id == provider.id,
                IdentityLink.tenant_id == claims.tenant_id,
                IdentityLink.subject == claims.object_id,
            )
        )
    ).scalar_one_or_none()
    if linked is not None:
        if linked.company_id != provider.company_id or linked.sso_provider_id != provider.id:
            raise _not_provisioned(
                "the linked user is no longer associated with this provider", claims
            )
        return linked

    if claims.email is None:
        raise _not_provisioned("the ID token carries neither email nor preferred_username", claims)
    user = await session.scalar(
        select(User).where(
            User.company_id == provider.company_id,
            User.email_normalized == normalize_email(claims.email),
            User.sso_provider_id == provider.id,
        )
    )
    if user is None:
        raise _not_provisioned("no user of this company with that email uses this provider", claims)
    session.add(
        IdentityLink(
            provider_id=provider.id,
            tenant_id=claims.tenant_id,
            subject=claims.object_id,
            user_id=user.id,
        )
    )
    try:
        await session.flush()
    except IntegrityError as e:
        # The user is already linked to another identity of this provider (or a concurrent
        # first sign-in linked it a moment ago): a second account must not take it over.
        raise _not_provisioned("the user is already linked to another identity", claims) from e
    return user
