from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, Field, StrictBool, StringConstraints

from sso_broker.config import Settings
from sso_broker.database import utcnow
from sso_broker.idp import ProviderTypeName, adapters_for
from sso_broker.providers.models import (
    BASE_URL_MAX,
    CLIENT_ID_MAX,
    SSOProvider,
)
from sso_broker.providers.warnings import certificate_warnings, secret_warnings
from sso_broker.schemas import DisplayName, Page, PatchBody, StrictBody

CLIENT_SECRET_MAX = 1024
ProviderName = DisplayName
BaseUrl = Annotated[str, StringConstraints(min_length=1, max_length=BASE_URL_MAX)]
ClientId = Annotated[str, StringConstraints(min_length=1, max_length=CLIENT_ID_MAX)]
ClientSecret = Annotated[str, StringConstraints(min_length=1, max_length=CLIENT_SECRET_MAX)]


class ProviderCreate(StrictBody):
    type: ProviderTypeName = Field(
        description="The identity provider's kind: entra, okta, pingone, or oidc (any OpenID "
        "Provider)."
    )
    base_url: BaseUrl = Field(
        description="entra: the Directory (tenant) ID or a verified domain (a pasted "
        "login.microsoftonline.com or sts.windows.net URL is taken apart); okta: the org URL, "
        "optionally with /oauth2/{server id}; pingone: the environment ID or its issuer URL; "
        "oidc: the issuer URL. Stored normalised.",
        examples=[
            "3f2b8c4e-1a2b-4c3d-9e8f-0a1b2c3d4e5f",
            "contoso.onmicrosoft.com",
            "https://acme.okta.com/oauth2/default",
            "https://id.example.com",
        ],
    )
    name: ProviderName | None = Field(
        default=None, description="Display name; defaults to the type's name."
    )


class ProviderUpdate(PatchBody):
    """Any subset of the fields; ``null`` clears ``client_id``, ``client_secret`` and the expiry."""

    NOT_NULLABLE = ("name", "base_url", "enabled", "client_auth_method")

    name: ProviderName | None = None
    base_url: BaseUrl | None = None
    client_id: ClientId | None = None
    client_secret: ClientSecret | None = Field(
        default=None,
        description="Write-only: the secret's value. It is stored encrypted and never returned. "
        "Setting a new secret without `client_secret_expires_at` clears the old expiry.",
        json_schema_extra={"writeOnly": True},
        repr=False,
    )
    client_secret_expires_at: AwareDatetime | None = Field(
        default=None,
        description="When the secret expires at the identity provider (with a timezone).",
    )
    client_auth_method: Literal["client_secret", "private_key_jwt"] | None = Field(
        default=None,
        description="Which credential sign-ins use at the token endpoint: the client secret, "
        "or an RS256 client assertion signed with the newest certificate "
        "(POST /api/v1/sso-providers/{id}/certificate).",
    )
    enabled: StrictBool | None = None


class CertificateRead(BaseModel):
    certificate_pem: str = Field(
        description="The certificate to upload to the identity provider (Entra: Certificates "
        "& secrets → Certificates). Its private key never leaves the service."
    )
    thumbprint_sha256: str = Field(description="SHA-256 of the certificate, lower-case hex.")
    expires_at: datetime
    created_at: datetime


class CertificateList(BaseModel):
    items: list[CertificateRead] = Field(description="Newest first; the newest unexpired signs.")


class ProviderWarning(BaseModel):
    code: str = Field(
        description="client_secret_expiring (within SSO_BROKER_SECRET_EXPIRY_WARNING_DAYS of "
        "client_secret_expires_at) or client_secret_expired; with private_key_jwt, "
        "certificate_expiring or certificate_expired (the longest-lived certificate's)."
    )
    message: str = Field(description="What to do, in words an administrator can act on.")


class LastError(BaseModel):
    code: str
    message: str
    at: datetime


class ProviderUrls(BaseModel):
    initiate_sign_in_url: str = Field(
        description="Entra: Branding & properties → Home page URL; Okta: Initiate login URI; "
        "PingOne: Initiate Login URI; any provider: where a sign-in starts."
    )
    callback_url: str = Field(
        description="Entra: Redirect URIs (Web); Okta: Sign-in redirect URIs; PingOne: "
        "Redirect URIs; any provider: the registered redirect URI."
    )
    logout_url: str = Field(
        description="Front-channel logout URL, and the post-logout redirect URI (Okta: "
        "Sign-out redirect URIs; PingOne: Signoff URLs)."
    )


class ProviderRead(BaseModel):
    id: uuid.UUID
    type: ProviderTypeName
    name: str
    base_url: str
    issuer: str | None = Field(
        description="Read-only: the issuer base_url names; for an Entra domain the tenant it "
        "was pinned to at its first sign-in, null until then."
    )
    client_id: str | None
    client_secret_set: bool
    client_secret_expires_at: datetime | None
    client_auth_method: Literal["client_secret", "private_key_jwt"]
    enabled: bool
    last_error: LastError | None
    warnings: list[ProviderWarning] = Field(
        description="What to do before sign-ins break; [] when nothing is due."
    )
    urls: ProviderUrls
    created_at: datetime
    updated_at: datetime

    @classmethod
    def build(
        cls, provider: SSOProvider, settings: Settings, certificate_until: datetime | None = None
    ) -> ProviderRead:
        """``certificate_until``: when its longest-lived certificate expires (warnings)."""
        now, days = utcnow(), settings.secret_expiry_warning_days
        base = f"{settings.public_base}/sso/{provider.id}"
        return cls(
            id=provider.id,
            type=provider.type,
            name=provider.name,
            base_url=provider.base_url,
            issuer=adapters_for(settings.adapter_config)[provider.type].issuer(
                provider.base_url, provider.pinned_tenant
            ),
            client_id=provider.client_id,
            client_secret_set=provider.client_secret_encrypted is not None,
            client_secret_expires_at=provider.client_secret_expires_at,
            client_auth_method=provider.client_auth_method,
            enabled=provider.enabled,
            last_error=LastError.model_validate(provider.last_error)
            if provider.last_error
            else None,
            warnings=[
                ProviderWarning(code=w.code, message=w.message)
                for w in (
                    *secret_warnings(provider, now=now, days=days),
                    *certificate_warnings(provider, certificate_until, now=now, days=days),
                )
            ],
            urls=ProviderUrls(
                initiate_sign_in_url=f"{base}/initiate",
                callback_url=f"{base}/callback",
                logout_url=f"{base}/logout",
            ),
            created_at=provider.created_at,
            updated_at=provider.updated_at,
        )


class CheckRead(BaseModel):
    name: str = Field(description="metadata, signing_keys or client_credentials.")
    ok: bool
    code: str = Field(
        description="ok, or what failed (the last_error code it sets); not_verified when the "
        "token endpoint refused the test before it looked at the credentials; skipped when "
        "a check above failed; timeout."
    )
    detail: str = Field(description="What was found, or what to do, in words.")


class ConnectionTest(BaseModel):
    ok: bool = Field(description="True when every check passed.")
    checks: list[CheckRead]


class ProviderList(Page[ProviderRead]):
    """A page of the company's SSO providers, oldest first."""
