from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from sso_broker.database import Base, IdMixin, utcnow


class SigningKey(Base):
    """A session-JWT signing key pair; the private half is encrypted at rest."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(16))
    private_key_encrypted: Mapped[str] = mapped_column(Text)
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Retired keys stop signing but stay published until the tokens they signed expire.
    retired_at: Mapped[datetime | None]


class SignInSession(IdMixin, Base):
    """One sign-in: the ``sid`` of every session JWT and refresh token issued from it."""

    __tablename__ = "sign_in_sessions"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    company_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("companies.id", ondelete="CASCADE"), index=True
    )
    provider_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("sso_providers.id", ondelete="SET NULL"), index=True
    )
    # The identity provider's session id (the ID token's ``sid``), for front-channel logout.
    idp_sid: Mapped[str | None] = mapped_column(String(255))
    # The ID token's ``login_hint``, passed back to Entra at sign-out to skip its account picker.
    login_hint: Mapped[str | None] = mapped_column(String(1024))
    # The ID token, encrypted, for providers whose sign-out wants it back as id_token_hint
    # (Okta, PingOne, plain OpenID Providers); cleared when the session is revoked.
    id_token_encrypted: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_sign_in_sessions_provider_idp_sid", "provider_id", "idp_sid"),)


class LoginCode(Base):
    """The one-time code the browser carries to the frontend; only its hash is stored."""

    __tablename__ = "login_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sign_in_sessions.id", ondelete="CASCADE"), index=True
    )
    # The frontend's PKCE challenge from the initiate (S256, 43 characters): the code is
    # traded only with its verifier. A code without one (made before it was required) never is.
    code_challenge: Mapped[str | None] = mapped_column(String(43))
    # Indexed for the housekeeping purge, which deletes by it (sessions/service.py).
    expires_at: Mapped[datetime] = mapped_column(index=True)


class RefreshToken(Base):
    """One link of a session's refresh-token chain; each works once (only hashes are stored)."""

    __tablename__ = "refresh_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sign_in_sessions.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Indexed for the housekeeping purge, which deletes by it (sessions/service.py).
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime | None]
