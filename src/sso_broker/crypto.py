"""Encryption of secrets at rest and the session-signing key pairs.

Secrets (provider client secrets, signing private keys) are encrypted with a
``MultiFernet`` built from ``SSO_BROKER_ENCRYPTION_KEYS``: the first key encrypts,
every key decrypts, so keys rotate by prepending a new one and re-encrypting at leisure.
In embedded mode with no keys configured, a key file is generated beside the SQLite
database (mode 0600) on first use and reused afterwards.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sso_broker.config import Settings

# cryptography and PyJWT load when a key is first used, not on import: a command that only
# reads the keys (``sso-broker create-company``) never needs them (README, *Command line*).
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

SIGNING_ALGORITHM = "ES256"


class EncryptionKeyError(RuntimeError):
    """The configured encryption keys are missing or malformed."""


class DecryptionError(RuntimeError):
    """A stored secret could not be decrypted with any configured key."""


_GENERATE_HINT = (
    "generate keys with `python -c 'from cryptography.fernet import Fernet; "
    "print(Fernet.generate_key().decode())'`"
)


def _check_key(key: str, where: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(key.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError) as e:
        raise EncryptionKeyError(
            f"an encryption key in {where} is not URL-safe base64; {_GENERATE_HINT}"
        ) from e
    if len(raw) != 32:
        raise EncryptionKeyError(
            f"an encryption key in {where} decodes to {len(raw)} bytes, not 32; {_GENERATE_HINT}"
        )
    return key


def _load_or_create_key_file(path: Path) -> list[str]:
    """Reads the embedded key file, creating it (0600, never overwritten) on first use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        from cryptography.fernet import Fernet

        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(Fernet.generate_key().decode("ascii") + "\n")
    lines = path.read_text(encoding="ascii").split()
    keys = [line.strip() for line in lines if line.strip()]
    if not keys:
        raise EncryptionKeyError(f"the key file {path} is empty; delete it to generate a new one")
    return keys


def load_encryption_keys(settings: Settings) -> list[str]:
    if settings.encryption_keys:
        return [
            _check_key(key.get_secret_value(), "SSO_BROKER_ENCRYPTION_KEYS")
            for key in settings.encryption_keys
        ]
    if not settings.is_embedded:
        raise EncryptionKeyError("SSO_BROKER_ENCRYPTION_KEYS must be set outside embedded mode")
    path = settings.key_file
    return [_check_key(key, str(path)) for key in _load_or_create_key_file(path)]


def token_hash(value: str) -> str:
    """SHA-256 of a high-entropy token: what the database keeps instead of the token.

    No salt is needed: login codes, refresh tokens and states carry 256 random bits, so the
    hash cannot be reversed by guessing.
    """
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _invalid_token() -> type[Exception]:
    """cryptography's ``InvalidToken``. An ``except`` clause evaluates its class only when an
    exception arrives, so a decryption that succeeds runs no import statement for it."""
    from cryptography.fernet import InvalidToken

    return InvalidToken


class SecretBox:
    """Encrypts and decrypts small secrets; the first key encrypts, all keys decrypt."""

    def __init__(self, keys: list[str]) -> None:
        from cryptography.fernet import Fernet, MultiFernet

        if not keys:
            raise EncryptionKeyError("at least one encryption key is required")
        self._keys = keys
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys, the one that encrypts first."""
        return tuple(self._keys)

    def derive(self, purpose: bytes, key: str | None = None) -> bytes:
        """A 256-bit key of its own for ``purpose`` (HKDF over the first key, or ``key``):
        what is not encryption at rest never shares the encryption key."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        material = base64.urlsafe_b64decode(key or self._keys[0])
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(material)

    def for_purpose(self, purpose: bytes) -> SecretBox:
        """A box of its own for ``purpose``, its keys derived from each of these keys (the
        first encrypts, all decrypt, as here): a token sealed for one purpose never opens as
        another, and rotating the keys rotates both."""
        return SecretBox(
            [base64.urlsafe_b64encode(self.derive(purpose, key)).decode() for key in self._keys]
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        return cls(load_encryption_keys(settings))

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except _invalid_token() as e:
            raise DecryptionError(
                "a stored secret cannot be decrypted with the configured encryption keys; "
                "keep the old key in SSO_BROKER_ENCRYPTION_KEYS (after the new one) until "
                "`sso-broker rotate-keys` has re-encrypted everything"
            ) from e

    def rotate(self, token: str) -> str:
        """Re-encrypts ``token`` under the first key (for key rotation)."""
        try:
            return self._fernet.rotate(token.encode("ascii")).decode("ascii")
        except _invalid_token() as e:
            raise DecryptionError("a stored secret cannot be decrypted for rotation") from e


@dataclass(frozen=True, slots=True)
class SigningKeyMaterial:
    """A freshly generated key pair, ready to be stored."""

    kid: str
    algorithm: str
    private_pem: str
    public_jwk: dict[str, Any]


def public_jwk(public_key: ec.EllipticCurvePublicKey, kid: str) -> dict[str, Any]:
    from jwt.algorithms import ECAlgorithm

    jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(public_key))
    jwk.update({"kid": kid, "use": "sig", "alg": SIGNING_ALGORITHM})
    return jwk


def generate_signing_key() -> SigningKeyMaterial:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private_key = ec.generate_private_key(ec.SECP256R1())
    public_der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # The kid is the key's own fingerprint, so it never collides across replicas.
    kid = base64.urlsafe_b64encode(hashlib.sha256(public_der).digest()[:16]).decode().rstrip("=")
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return SigningKeyMaterial(
        kid=kid,
        algorithm=SIGNING_ALGORITHM,
        private_pem=private_pem,
        public_jwk=public_jwk(private_key.public_key(), kid),
    )


def load_private_key(pem: str) -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DecryptionError("a stored signing key is not an EC private key")
    return key
