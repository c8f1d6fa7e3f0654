"""Identity-provider types and the rules each puts on ``base_url`` and credentials.

A type is one :class:`ProviderType` in :data:`PROVIDER_TYPES`; Okta, PingOne and generic
OIDC slot in later as further entries with their own ``base_url`` rules.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import ClassVar, Literal

from sso_broker.errors import ErrorCode, InvalidInput

ProviderTypeName = Literal["entra"]

_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_TLD = re.compile(r"^(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})$")


def is_guid(value: str) -> bool:
    return _GUID.fullmatch(value) is not None


def is_domain_name(value: str) -> bool:
    if len(value) > 253 or not value.isascii():
        return False
    labels = value.lower().split(".")
    return (
        len(labels) >= 2
        and all(_LABEL.fullmatch(label) for label in labels)
        and _TLD.fullmatch(labels[-1]) is not None
    )


class ProviderType(ABC):
    name: ClassVar[str]
    default_display_name: ClassVar[str]

    @abstractmethod
    def normalize_base_url(self, value: str) -> str:
        """Returns ``value`` as it will be stored, or raises :class:`InvalidInput`."""

    @abstractmethod
    def normalize_client_id(self, value: str) -> str:
        """Returns the client ID as it will be stored, or raises :class:`InvalidInput`."""

    def normalize_client_secret(self, value: str) -> str:
        secret = value.strip()
        if not secret:
            raise InvalidInput(
                "The client secret is empty; paste the secret's value, or send null to remove it.",
                code=ErrorCode.INVALID_CLIENT_SECRET,
            )
        return secret


class EntraType(ProviderType):
    """Microsoft Entra ID: ``base_url`` is the tenant ID or a verified domain of the tenant."""

    name = "entra"
    default_display_name = "Azure AD / Entra"

    # Multi-tenant aliases would accept users of any organisation (or any personal Microsoft
    # account), so a provider is always pinned to one tenant.
    MULTI_TENANT_ALIASES = frozenset({"common", "organizations", "consumers"})
    # The fixed tenant of personal Microsoft accounts: as open as "consumers".
    CONSUMER_TENANT_ID = "9188040d-6c67-4c5b-b112-36a304b66dad"

    def normalize_base_url(self, value: str) -> str:
        tenant = value.strip()
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
            return tenant
        hint = " Paste only the ID, not a URL." if "/" in tenant or ":" in tenant else ""
        raise InvalidInput(
            "base_url must be your Entra tenant: the Directory (tenant) ID, a GUID such as "
            "00000000-0000-0000-0000-000000000000 shown in the Microsoft Entra admin center "
            "under Overview → Tenant ID, or a verified domain such as contoso.onmicrosoft.com."
            + hint,
            code=ErrorCode.INVALID_TENANT,
        )

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


PROVIDER_TYPES: dict[str, ProviderType] = {t.name: t for t in (EntraType(),)}


def provider_type(name: str) -> ProviderType:
    return PROVIDER_TYPES[name]
