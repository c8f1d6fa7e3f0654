"""Session JWTs: signing with the shared key pair, verification, the published JWKS."""

from __future__ import annotations

import asyncio
import struct
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sso_broker.config import Settings
from sso_broker.crypto import SIGNING_ALGORITHM, SecretBox, generate_signing_key, load_private_key
from sso_broker.errors import ErrorCode, NotAuthenticated
from sso_broker.jws import MalformedToken, decoder, unverified_header
from sso_broker.sessions.models import SigningKey

# An unknown kid (a key made by another replica since we loaded ours) reloads the key set
# from the database at most this often, so a flood of forged kids cannot hammer it.
KEY_RELOAD_INTERVAL = 30.0
REQUIRED_CLAIMS = ("iss", "aud", "sub", "exp", "iat", "sid", "company_id", "jti")


# A SessionClaims in 64 bytes, as the cache of verified tokens keeps it (``caches.py``): the
# user, company and session ids, 16 bytes each (the first PACKED_IDS bytes), then ``iat`` and
# ``exp``.
_PACKED = struct.Struct("<16s16s16sqq")
_PACKED_EXPIRES_AT = struct.Struct("<q")
PACKED_IDS = 48


def packed_expires_at(packed: bytes) -> int:
    """``exp`` of claims packed by :meth:`SessionClaims.pack`, without unpacking the rest."""
    expires_at: int = _PACKED_EXPIRES_AT.unpack_from(packed, PACKED_IDS + 8)[0]
    return expires_at


@dataclass(frozen=True, slots=True)
class SessionClaims:
    user_id: uuid.UUID
    company_id: uuid.UUID
    session_id: uuid.UUID
    issued_at: int
    expires_at: int

    def pack(self) -> bytes:
        return _PACKED.pack(
            self.user_id.bytes,
            self.company_id.bytes,
            self.session_id.bytes,
            self.issued_at,
            self.expires_at,
        )

    @classmethod
    def unpack(cls, packed: bytes) -> SessionClaims:
        user_id, company_id, session_id, issued_at, expires_at = _PACKED.unpack(packed)
        return cls(
            uuid.UUID(bytes=user_id),
            uuid.UUID(bytes=company_id),
            uuid.UUID(bytes=session_id),
            issued_at,
            expires_at,
        )


async def ensure_signing_key(session: AsyncSession, box: SecretBox) -> SigningKey:
    """Returns the key every replica signs with, creating it on the very first start.

    Callers hold the bootstrap lock, so two replicas starting together create one key.
    """
    existing = await session.scalar(
        select(SigningKey)
        .where(SigningKey.retired_at.is_(None))
        .order_by(SigningKey.created_at.desc(), SigningKey.kid)
        .limit(1)
    )
    if existing is not None:
        return existing
    material = generate_signing_key()
    key = SigningKey(
        kid=material.kid,
        algorithm=material.algorithm,
        private_key_encrypted=box.encrypt(material.private_pem),
        public_jwk=material.public_jwk,
    )
    session.add(key)
    await session.flush()
    return key


class KeyRing:
    """The signing key and the published public keys, loaded from the database."""

    def __init__(self, settings: Settings, box: SecretBox) -> None:
        self._settings = settings
        self._box = box
        self._signing_kid: str | None = None
        self._private_key: ec.EllipticCurvePrivateKey | None = None
        self._public: dict[str, jwt.PyJWK] = {}
        self._jwks: list[dict[str, Any]] = []
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def load(self, session: AsyncSession) -> None:
        keys = (
            await session.scalars(select(SigningKey).order_by(SigningKey.created_at.desc()))
        ).all()
        active = [key for key in keys if key.retired_at is None]
        if not active:
            raise RuntimeError("no signing key in the database; run `sso-broker migrate`")
        signing = active[0]
        self._private_key = load_private_key(self._box.decrypt(signing.private_key_encrypted))
        self._signing_kid = signing.kid
        self._jwks = [dict(key.public_jwk) for key in keys]
        self._public = {key.kid: jwt.PyJWK(dict(key.public_jwk), SIGNING_ALGORITHM) for key in keys}
        self._loaded_at = time.monotonic()

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": list(self._jwks)}

    def mint(self, claims: dict[str, Any]) -> str:
        if self._private_key is None or self._signing_kid is None:
            raise RuntimeError("the key ring is not loaded")
        return jwt.encode(
            claims,
            self._private_key,
            algorithm=SIGNING_ALGORITHM,
            headers={"kid": self._signing_kid, "typ": "JWT"},
        )

    async def _public_key(
        self, kid: str, sessionmaker: async_sessionmaker[AsyncSession]
    ) -> jwt.PyJWK | None:
        key = self._public.get(kid)
        if key is not None:
            return key
        async with self._lock:
            if kid not in self._public and time.monotonic() - self._loaded_at > KEY_RELOAD_INTERVAL:
                async with sessionmaker() as session:
                    await self.load(session)
        return self._public.get(kid)

    async def verify(
        self, token: str, sessionmaker: async_sessionmaker[AsyncSession]
    ) -> SessionClaims:
        """Checks a session JWT: our kid, ES256 only, signature, ``iss``, ``aud``, ``exp``.

        The algorithm is pinned rather than read from the token, so neither ``none`` nor an
        HMAC keyed with our public key can pass.
        """
        invalid = NotAuthenticated(
            "The bearer token is not a valid session token; sign in again.",
            code=ErrorCode.INVALID_TOKEN,
        )
        try:
            header = unverified_header(token)
        except MalformedToken as e:
            raise invalid from e
        kid = header.get("kid")
        if header.get("alg") != SIGNING_ALGORITHM or not isinstance(kid, str) or len(kid) > 64:
            raise invalid
        key = await self._public_key(kid, sessionmaker)
        if key is None:
            raise invalid
        try:
            claims = decoder.decode(
                token,
                key,
                algorithms=[SIGNING_ALGORITHM],
                audience=self._settings.session_audience,
                issuer=self._settings.public_base,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError as e:
            raise NotAuthenticated(
                "The access token has expired; get a new one with the refresh token.",
                code=ErrorCode.TOKEN_EXPIRED,
            ) from e
        except jwt.PyJWTError as e:
            raise invalid from e
        try:
            return SessionClaims(
                user_id=uuid.UUID(str(claims["sub"])),
                company_id=uuid.UUID(str(claims["company_id"])),
                session_id=uuid.UUID(str(claims["sid"])),
                issued_at=int(claims["iat"]),
                expires_at=int(claims["exp"]),
            )
        except (ValueError, TypeError) as e:
            raise invalid from e


def session_claims(
    settings: Settings,
    *,
    user_id: uuid.UUID,
    company_id: uuid.UUID,
    role: str,
    email: str,
    name: str,
    session_id: uuid.UUID,
    provider_id: uuid.UUID | None,
    issued_at: datetime,
    expires_at: datetime,
) -> dict[str, Any]:
    """The claims of a session JWT, as the README lists them (*Signing in*)."""
    return {
        "iss": settings.public_base,
        "aud": settings.session_audience,
        "sub": str(user_id),
        "company_id": str(company_id),
        "role": role,
        "email": email,
        "name": name,
        "sid": str(session_id),
        "provider_id": str(provider_id) if provider_id is not None else None,
        "iat": int(issued_at.timestamp()),
        "exp": int(expires_at.timestamp()),
        "jti": uuid.uuid4().hex,
    }
