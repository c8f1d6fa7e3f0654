"""Certificate credentials (``private_key_jwt``): the service makes a key pair and a
self-signed certificate for the administrator to upload to the identity provider, keeps the
private key encrypted at rest like a client secret, and signs a fresh RFC 7523 client
assertion for every token request (README, *Keeping SSO healthy*).

A provider may hold several certificates: a new one can be made and uploaded before the old
one expires, both work until the old one is deleted (here and at the provider), and the
newest signs. Entra takes the certificate; Okta and PingOne take the public key as a JWK,
which ``GET /sso/{id}/jwks.json`` serves too, so they can fetch it.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from cachetools import TTLCache
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from sso_broker.audit import service as audit
from sso_broker.audit.service import EventType
from sso_broker.crypto import SecretBox
from sso_broker.database import utcnow
from sso_broker.errors import ErrorCode, InvalidInput, NotFound
from sso_broker.providers.models import ProviderCertificate, SSOProvider

KEY_SIZE = 2048
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = timedelta(minutes=5)  # Entra's rule is at most 10
PRIVATE_KEY_JWT = "private_key_jwt"
CLIENT_SECRET = "client_secret"  # noqa: S105 - a method's name
# Opened private keys by certificate id, for an hour at most (a Fernet open and a PEM parse
# per token request otherwise).
_KEYS: TTLCache[uuid.UUID, rsa.RSAPrivateKey] = TTLCache(maxsize=256, ttl=3600)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@dataclass(frozen=True, slots=True)
class MadeCertificate:
    certificate_pem: str
    private_key_pem: str
    thumbprint_sha256: str
    not_after: datetime


def make(common_name: str, *, days: int, now: datetime | None = None) -> MadeCertificate:
    """A new RSA key pair and a self-signed certificate for it, valid ``days`` days."""
    now = now or utcnow()
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    not_after = (now + timedelta(days=days)).replace(microsecond=0)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    der = certificate.public_bytes(serialization.Encoding.DER)
    return MadeCertificate(
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        private_key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii"),
        thumbprint_sha256=hashlib.sha256(der).hexdigest(),
        not_after=not_after,
    )


def jwk(stored: ProviderCertificate) -> dict[str, Any]:
    """The certificate's public key as a JWK (RFC 7517), with its chain and thumbprint."""
    certificate = x509.load_pem_x509_certificate(stored.certificate_pem.encode("ascii"))
    public = certificate.public_key()
    assert isinstance(public, rsa.RSAPublicKey)  # noqa: S101 - we only make RSA keys
    numbers = public.public_numbers()
    der = certificate.public_bytes(serialization.Encoding.DER)
    return {
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "kid": stored.thumbprint_sha256,
        "n": _uint(numbers.n),
        "e": _uint(numbers.e),
        "x5c": [base64.b64encode(der).decode("ascii")],
        "x5t#S256": _b64url(bytes.fromhex(stored.thumbprint_sha256)),
    }


def client_assertion(
    box: SecretBox, stored: ProviderCertificate, *, client_id: str, audience: str
) -> str:
    """A fresh RFC 7523 client assertion: RS256, ``x5t#S256`` and ``kid`` naming the
    certificate, ``iss`` = ``sub`` = the client ID, ``aud`` = the token endpoint, a unique
    ``jti``, valid five minutes."""
    key = _KEYS.get(stored.id)
    if key is None:
        loaded = serialization.load_pem_private_key(
            box.decrypt(stored.private_key_encrypted).encode("ascii"), password=None
        )
        assert isinstance(loaded, rsa.RSAPrivateKey)  # noqa: S101 - we only make RSA keys
        key = _KEYS[stored.id] = loaded
    now = utcnow()
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": str(uuid.uuid4()),
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int((now + ASSERTION_LIFETIME).timestamp()),
    }
    headers = {
        "kid": stored.thumbprint_sha256,
        "x5t#S256": _b64url(bytes.fromhex(stored.thumbprint_sha256)),
    }
    return jwt.encode(claims, key, algorithm="RS256", headers=headers)


async def listed(session: AsyncSession, provider_id: uuid.UUID) -> Sequence[ProviderCertificate]:
    """The provider's certificates, newest first."""
    rows = await session.scalars(
        select(ProviderCertificate)
        .where(ProviderCertificate.provider_id == provider_id)
        .order_by(ProviderCertificate.created_at.desc(), ProviderCertificate.id)
    )
    return rows.all()


async def signing(session: AsyncSession, provider_id: uuid.UUID) -> ProviderCertificate | None:
    """The certificate that signs: the newest that has not expired (one row, read at every
    token request of a provider that signs in with one)."""
    found: ProviderCertificate | None = await session.scalar(
        select(ProviderCertificate)
        .where(
            ProviderCertificate.provider_id == provider_id,
            ProviderCertificate.not_after > utcnow(),
        )
        .order_by(ProviderCertificate.created_at.desc(), ProviderCertificate.id)
        .limit(1)
    )
    return found


async def create(
    session: AsyncSession, box: SecretBox, provider: SSOProvider, *, days: int
) -> ProviderCertificate:
    made = make(f"sso-broker {provider.id}", days=days)
    stored = ProviderCertificate(
        id=uuid.uuid4(),
        provider_id=provider.id,
        thumbprint_sha256=made.thumbprint_sha256,
        certificate_pem=made.certificate_pem,
        private_key_encrypted=box.encrypt(made.private_key_pem),
        not_after=made.not_after,
        created_at=utcnow(),
    )
    session.add(stored)
    await session.flush()
    return stored


def audit_change(
    session: AsyncSession,
    provider: SSOProvider,
    actor_id: uuid.UUID,
    change: str,
    stored: ProviderCertificate,
) -> None:
    """A certificate made or deleted is a credential changed: in the audit log like a secret."""
    audit.record(
        session, provider.company_id, EventType.PROVIDER_UPDATED, actor_user_id=actor_id,
        provider_id=provider.id,
        details={"certificate": change, "thumbprint_sha256": stored.thumbprint_sha256},
    )  # fmt: skip


async def remove(
    session: AsyncSession, provider: SSOProvider, thumbprint: str
) -> ProviderCertificate:
    """Deletes one certificate; not the last unexpired one while sign-ins use it (the rows
    are locked, so two deletions at once cannot both leave none)."""
    rows = await session.scalars(
        select(ProviderCertificate)
        .where(ProviderCertificate.provider_id == provider.id)
        .with_for_update()
    )
    held = rows.all()
    found = next((c for c in held if c.thumbprint_sha256 == thumbprint.lower()), None)
    if found is None:
        raise NotFound(
            "This provider has no certificate with that thumbprint; list them with "
            f"GET /api/v1/sso-providers/{provider.id}/certificates."
        )
    now = utcnow()
    others = [c for c in held if c.id != found.id and c.not_after > now]
    if provider.enabled and provider.client_auth_method == PRIVATE_KEY_JWT and not others:
        raise InvalidInput(
            "This is the certificate sign-ins use: make a new one (and upload it to the "
            "identity provider) before deleting it, or switch client_auth_method to "
            "client_secret.",
            code=ErrorCode.PROVIDER_INCOMPLETE,
        )
    await session.execute(delete(ProviderCertificate).where(ProviderCertificate.id == found.id))
    _KEYS.pop(found.id, None)
    return found
