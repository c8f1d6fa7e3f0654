"""Who a validated ID token signs in: the nOAuth lesson applied.

An email claim alone is not an identity (in a multi-tenant Entra app anyone can set one),
so identities are keyed by the provider and (``namespace``, ``subject``): Entra's ``tid`` and
``oid``, every other type's ``iss`` and ``sub``. An email the provider vouches for (the type's
rule, ``Adapter.first_link_email``) is used once, at a user's first sign-in, to find the
account an administrator associated with this provider; afterwards the link alone counts
(README, *Identities and first sign-in*).
"""

from __future__ import annotations

from sso_broker.errors import SignInError, SignInErrorCode
from sso_broker.providers.models import SSOProvider
from sso_broker.sso.id_token import IdTokenClaims
from sso_broker.sso.repository import Account, Resolution


def not_provisioned(reason: str, claims: IdTokenClaims) -> SignInError:
    return SignInError(SignInErrorCode.USER_NOT_PROVISIONED, reason, idp_subject=claims.subject)


def choose_account(
    found: Resolution, provider: SSOProvider, claims: IdTokenClaims
) -> tuple[Account, bool]:
    """The account this identity signs in as, and whether this first sign-in links it.

    A link counts only while its user still belongs to the provider's company and is still
    associated with this provider: removing the association locks the identity out at once.
    A first sign-in links only a user of the provider's company, associated with this
    provider, whose email equals the token's (case-insensitively) and who has no link yet
    (the database's unique constraints refuse a second link; the caller answers that as
    not provisioned too).
    """
    linked = found.linked
    if linked is not None:
        if linked.company_id != provider.company_id or linked.sso_provider_id != provider.id:
            raise not_provisioned(
                "the linked user is no longer associated with this provider", claims
            )
        return linked, False
    if claims.email is None:
        raise not_provisioned("the ID token carries no email a first sign-in may trust", claims)
    if found.candidate is None:
        raise not_provisioned("no user of this company with that email uses this provider", claims)
    return found.candidate, True
