from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from sso_broker.database import Base, IdMixin, TimestampMixin, utcnow
from sso_broker.schemas import DISPLAY_NAME_MAX

BASE_URL_MAX = 255
CLIENT_ID_MAX = 255


class SSOProvider(IdMixin, TimestampMixin, Base):
    __tablename__ = "sso_providers"
    # The list pages in creation order (``repository.page``).
    __table_args__ = (Index("ix_sso_providers_company_created", "company_id", "created_at", "id"),)

    company_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(DISPLAY_NAME_MAX))
    base_url: Mapped[str] = mapped_column(String(BASE_URL_MAX))
    client_id: Mapped[str | None] = mapped_column(String(CLIENT_ID_MAX))
    # Fernet token of the client secret; never the secret itself.
    client_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    client_secret_expires_at: Mapped[datetime | None]
    enabled: Mapped[bool] = mapped_column(default=False)
    # Python None as SQL NULL (the hot paths test it with IS NULL), not JSON null.
    last_error: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    # An Entra domain's tenant GUID, as its metadata named it at the first successful
    # sign-in; metadata naming another tenant fails from then on (README, *Identities and
    # first sign-in*). Cleared when base_url changes.
    pinned_tenant: Mapped[str | None] = mapped_column(String(64))
    # Which credential sign-ins authenticate with at the token endpoint: the client secret,
    # or a client assertion signed with the newest of the provider's certificates
    # (README, *Keeping SSO healthy*).
    client_auth_method: Mapped[str] = mapped_column(
        String(32), default="client_secret", server_default="client_secret"
    )


class ProviderCertificate(IdMixin, Base):
    """A key pair and self-signed certificate the service made for a provider's client
    authentication (``private_key_jwt``); only the certificate is ever shown."""

    __tablename__ = "provider_certificates"

    provider_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sso_providers.id", ondelete="CASCADE"), index=True
    )
    # SHA-256 of the certificate's DER, lower-case hex: x5t#S256, and how it is named.
    thumbprint_sha256: Mapped[str] = mapped_column(String(64))
    certificate_pem: Mapped[str] = mapped_column(Text)
    # Fernet token of the PKCS#8 private key; never the key itself.
    private_key_encrypted: Mapped[str] = mapped_column(Text)
    not_after: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
