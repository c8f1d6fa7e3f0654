"""Microsoft Entra ID: ``base_url`` is the tenant (its ID or a verified domain).

What differs from a plain OpenID Provider: the issuer is ``{ENTRA_AUTHORITY}/{tenant GUID}/v2.0``
(a domain learns its GUID from the metadata), identities are keyed by ``tid`` + ``oid``,
Entra's ``email`` is not verified (a first sign-in trusts it only with ``xms_edov``, else the
UPN), ``domain_hint`` is understood, errors carry ``AADSTS`` codes, and sign-out takes a
``logout_hint`` (README, *Setting up Entra ID*).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

from sso_broker.errors import ErrorCode, InvalidInput
from sso_broker.idp.base import (
    WELL_KNOWN,
    Actionable,
    Adapter,
    CredentialsVerdict,
    bad_base_url,
    is_domain_name,
    is_email,
    is_guid,
)

_AADSTS = re.compile(r"AADSTS(\d{4,7})")
# Hosts whose URLs name a tenant, besides the configured authority's.
_TENANT_HOSTS = frozenset({"login.microsoftonline.com", "sts.windows.net"})

# Entra errors an administrator can fix, and what to tell them (shown as last_error).
ACTIONABLE_AADSTS: dict[str, Actionable] = {
    "AADSTS7000215": Actionable(
        "invalid_client_secret",
        "Entra rejected the client secret (AADSTS7000215): paste the secret's Value, not its "
        "Secret ID (App registration → Certificates & secrets).",
    ),
    "AADSTS7000222": Actionable(
        "client_secret_expired",
        "The client secret has expired (AADSTS7000222): create a new one in Entra "
        "(Certificates & secrets) and paste its Value here.",
    ),
    "AADSTS700016": Actionable(
        "unknown_client_id",
        "Entra does not know this client ID in this tenant (AADSTS700016): paste the "
        "Application (client) ID of the app registration in this tenant.",
    ),
    "AADSTS50011": Actionable(
        "redirect_uri_mismatch",
        "Entra refused the callback URL (AADSTS50011): add this provider's callback URL to "
        "the app registration's Redirect URIs (platform Web), exactly as shown.",
    ),
    "AADSTS90002": Actionable(
        "tenant_not_found",
        "Entra does not know this tenant (AADSTS90002): check the Directory (tenant) ID or "
        "domain in base_url.",
    ),
}
# The client ID or secret is wrong, whatever OAuth error carries the code (README, *Keeping
# SSO healthy*).
BAD_CREDENTIALS_AADSTS = frozenset({"AADSTS7000215", "AADSTS7000222", "AADSTS700016"})
# Errors the user caused or chose: cancelled, not assigned to the app, consent declined.
ACCESS_DENIED_AADSTS = frozenset({"AADSTS50105", "AADSTS65004", "AADSTS50126"})
_PASTE = (
    "your Entra tenant: the Directory (tenant) ID, a GUID such as "
    "00000000-0000-0000-0000-000000000000 shown in the Microsoft Entra admin center under "
    "Overview → Tenant ID, or a verified domain such as contoso.onmicrosoft.com"
)


def aadsts_code(*texts: object) -> str | None:
    """The first ``AADSTS…`` code in Entra's error texts or ``error_codes`` list."""
    for text in texts:
        if isinstance(text, list) and text and isinstance(text[0], int):
            return f"AADSTS{text[0]}"
        if isinstance(text, str):
            match = _AADSTS.search(text[:2000])
            if match:
                return f"AADSTS{match.group(1)}"
    return None


class EntraAdapter(Adapter):
    name = "entra"
    default_display_name = "Azure AD / Entra"
    console = "the Microsoft Entra admin center (App registrations → your app → Overview)"
    required_claims = ("tid", "oid")
    # Entra's sign-out takes logout_hint instead: no ID token is kept.
    logout_needs_id_token = False

    # Multi-tenant aliases would accept users of any organisation (or any personal Microsoft
    # account), so a provider is always pinned to one tenant.
    MULTI_TENANT_ALIASES: ClassVar[frozenset[str]] = frozenset(
        {"common", "organizations", "consumers"}
    )
    # The fixed tenant of personal Microsoft accounts: as open as "consumers".
    CONSUMER_TENANT_ID = "9188040d-6c67-4c5b-b112-36a304b66dad"

    @property
    def authority(self) -> str:
        return self.config.entra_authority.rstrip("/")

    # -- What the administrator pastes ------------------------------------------------------

    def normalize_base_url(self, value: str) -> str:
        pasted = value.strip()
        tenant = self._tenant_in_url(pasted) if "/" in pasted or ":" in pasted else pasted
        lowered = tenant.lower()
        if lowered in self.MULTI_TENANT_ALIASES or lowered == self.CONSUMER_TENANT_ID:
            raise InvalidInput(
                f"'{lowered}' is a multi-tenant Entra endpoint and would let users of other "
                "organisations sign in. Paste your own Directory (tenant) ID, shown in the "
                "Microsoft Entra admin center under Overview → Tenant ID, or a verified domain "
                "such as contoso.onmicrosoft.com.",
                code=ErrorCode.UNSUPPORTED_TENANT,
            )
        if is_guid(tenant) or is_domain_name(tenant):
            return lowered
        raise bad_base_url(f"base_url must be {_PASTE}.")

    def _tenant_in_url(self, pasted: str) -> str:
        """The tenant inside a pasted Entra URL: ``https://login.microsoftonline.com/{tenant}``
        with ``/v2.0``, the discovery suffix and a trailing slash optional, or the v1 issuer
        ``https://sts.windows.net/{tenant}/``; any letter case."""
        try:
            parts = urlsplit(pasted)
        except ValueError as e:
            raise bad_base_url(f"base_url is not a tenant or an Entra URL. Paste {_PASTE}.") from e
        authority = urlsplit(self.authority)
        host = (parts.netloc or "").lower()
        path = parts.path
        prefix = authority.path.rstrip("/")
        if host == authority.netloc.lower() and path.lower().startswith(prefix.lower() + "/"):
            path = path[len(prefix) :]
        elif host not in _TENANT_HOSTS:
            raise bad_base_url(f"base_url is a URL, but not an Entra one. Paste {_PASTE}.")
        if parts.scheme.lower() not in ("https", "http") or parts.query or parts.fragment:
            raise bad_base_url(f"base_url is not an Entra tenant URL. Paste {_PASTE}.")
        lowered = path.lower()
        if lowered.endswith(WELL_KNOWN):
            path, lowered = path[: -len(WELL_KNOWN)], lowered[: -len(WELL_KNOWN)]
        path, lowered = path.rstrip("/"), lowered.rstrip("/")
        if lowered.endswith("/v2.0"):
            path = path[: -len("/v2.0")]
        segments = path.strip("/").split("/")
        if len(segments) != 1 or not segments[0]:
            raise bad_base_url(f"base_url is an Entra URL that names no tenant. Paste {_PASTE}.")
        return segments[0]

    def normalize_client_id(self, value: str) -> str:
        client_id = value.strip()
        if not is_guid(client_id):
            raise InvalidInput(
                "client_id must be the Application (client) ID of your Entra app registration, "
                "a GUID shown on the app's Overview page in the Microsoft Entra admin center.",
                code=ErrorCode.INVALID_CLIENT_ID,
            )
        return client_id.lower()

    def normalize_client_secret(self, value: str) -> str:
        secret = super().normalize_client_secret(value)
        # Entra shows a secret's ID (a GUID) beside its value; the ID is the classic mistake
        # that Entra later rejects with AADSTS7000215.
        if is_guid(secret):
            raise InvalidInput(
                "This looks like the client secret's Secret ID. Paste the secret's Value "
                "instead (Certificates & secrets → Client secrets → Value, shown only once "
                "when the secret is created).",
                code=ErrorCode.INVALID_CLIENT_SECRET,
            )
        return secret

    # -- Metadata ---------------------------------------------------------------------------

    def issuer(self, base_url: str, pinned: str | None = None) -> str | None:
        tenant = base_url if is_guid(base_url) else pinned
        return f"{self.authority}/{tenant.lower()}/v2.0" if tenant else None

    def pin_of(self, base_url: str, tenant_id: str | None) -> str | None:
        # A domain can be moved to another tenant by whoever controls its DNS or the tenant:
        # the first tenant it named is the one this provider trusts.
        return None if is_guid(base_url) else tenant_id

    def same_base_url(self, base_url: str) -> str:
        return base_url.lower()

    def discovery_url(self, base_url: str) -> str:
        # Entra's tenants are case-insensitive: one URL (and one cache entry) per tenant.
        return f"{self.authority}/{quote(base_url.lower(), safe='')}/v2.0{WELL_KNOWN}"

    def check_issuer(self, base_url: str, issuer: str) -> str | None:
        """The issuer must be ``{authority}/{tenant GUID}/v2.0``, the GUID must equal a GUID
        tenant as configured (a domain tenant learns its GUID here), and never the tenant of
        personal Microsoft accounts."""
        prefix, suffix = f"{self.authority}/", "/v2.0"
        if not (issuer.startswith(prefix) and issuer.endswith(suffix)):
            raise ValueError("discovery issuer is not an Entra v2.0 issuer of this authority")
        tenant_id = issuer[len(prefix) : -len(suffix)]
        if not is_guid(tenant_id):
            raise ValueError("discovery issuer does not name a tenant GUID")
        if is_guid(base_url) and tenant_id.lower() != base_url.lower():
            raise ValueError("discovery issuer names another tenant than the one configured")
        if tenant_id.lower() == self.CONSUMER_TENANT_ID:
            raise ValueError("the tenant is Microsoft's personal-accounts tenant")
        return tenant_id.lower()

    def endpoint_allowed(self, issuer: str, url: str) -> bool:
        return super().endpoint_allowed(self.authority, url)

    # -- The ID token -----------------------------------------------------------------------

    def check_claims(self, claims: Mapping[str, Any], tenant_id: str | None) -> str | None:
        # ``tid`` names the configured tenant (belt and braces with the issuer).
        if str(claims["tid"]).lower() != tenant_id:
            return "the ID token's tenant is not the configured tenant"
        if len(str(claims["oid"])) > 64:
            return "the ID token's oid is malformed"
        return None

    def identity(self, claims: Mapping[str, Any]) -> tuple[str, str]:
        # ``sub`` is pairwise per application; ``oid`` is the user, in ``tid``.
        return str(claims["tid"]).lower(), str(claims["oid"]).lower()

    def first_link_email(self, claims: Mapping[str, Any]) -> str | None:
        """Entra's ``email`` is whatever the user's ``mail`` attribute says (guests and user
        administrators set it): it counts only with ``xms_edov: true``, Entra's word that the
        email domain's owner verified it; otherwise the UPN (``preferred_username``), which
        only the tenant can give out, when it is an email address."""
        email = claims.get("email")
        if claims.get("xms_edov") is True and is_email(email):
            return str(email)
        upn = claims.get("preferred_username")
        return str(upn) if is_email(upn) else None

    # -- The authorization request and Entra's errors ---------------------------------------

    def authorization_params(self, *, domain_hint: str | None) -> dict[str, str]:
        return {"domain_hint": domain_hint} if domain_hint else {}

    def error_code(self, *texts: object) -> str | None:
        return aadsts_code(*texts)

    def user_refused(self, error: str, provider_code: str | None) -> bool:
        return error == "access_denied" or provider_code in ACCESS_DENIED_AADSTS

    def actionable(
        self, oauth_error: str | None, provider_code: str | None, status: int | None = None
    ) -> Actionable | None:
        if provider_code in ACTIONABLE_AADSTS:
            return ACTIONABLE_AADSTS[provider_code]
        if oauth_error == "invalid_client":
            return Actionable(
                "invalid_client",
                "The identity provider rejected the client credentials (invalid_client): "
                "check the client ID and paste the client secret's Value again.",
            )
        return super().actionable(oauth_error, provider_code, status)

    def discovery_failed(self, status: int | None, provider_code: str | None) -> Actionable | None:
        return ACTIONABLE_AADSTS.get(provider_code or "")

    def credentials_test_params(self, client_id: str) -> dict[str, str]:
        # A token for the application itself: it needs no API permission at all (the seed's
        # four delegated scopes grant none for client_credentials), and the same in every
        # national cloud.
        return {"scope": f"{client_id}/.default"}

    def credentials_verdict(
        self, status: int, oauth_error: str | None, provider_code: str | None
    ) -> CredentialsVerdict:
        # The AADSTS code decides over the OAuth error: Entra answers an unknown client ID
        # (AADSTS700016) as unauthorized_client, which elsewhere proves the client good.
        if provider_code in BAD_CREDENTIALS_AADSTS:
            return CredentialsVerdict(False, ACTIONABLE_AADSTS[provider_code])
        return super().credentials_verdict(status, oauth_error, provider_code)

    # -- Sign-out ---------------------------------------------------------------------------

    def logout_params(
        self, *, client_id: str | None, login_hint: str | None, id_token: str | None
    ) -> dict[str, str]:
        params = super().logout_params(client_id=client_id, login_hint=login_hint, id_token=None)
        if login_hint:
            params["logout_hint"] = login_hint
        return params
