"""Sealed short-lived state (the login-state cookie): AES-256-GCM-SIV under keys of its own.

A sign-in seals its login state at initiate and opens it at the callback. Through Fernet
(AES-CBC and HMAC-SHA256, with Python between the two) each took 14-15 µs in a
micro-benchmark and three times that in a served worker, the largest single item of an
initiate (README, *Performance*). AES-GCM-SIV (RFC 8452) authenticates and encrypts in one
call, 3-5 µs, and a 96-bit random nonce is safe with it for far more seals per key than with
plain GCM: should one nonce repeat by chance, that reveals only whether two states were equal,
never the key nor a forgery.

A token is ``v2.`` and the URL-safe base64 (unpadded) of the nonce, the ciphertext and its
tag. The keys are derived (HKDF) from each of the service's encryption keys for this purpose
alone: the first seals, all of them open, so rotating the encryption keys rotates these too.

A cookie sealed with Fernet by a replica still on an earlier version (a rolling upgrade)
still opens, through ``legacy``; such cookies live ten minutes (``state.STATE_TTL``).
"""

from __future__ import annotations

import base64
import binascii
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

from sso_broker.crypto import DecryptionError, SecretBox

PREFIX = "v2."
NONCE_BYTES = 12
TAG_BYTES = 16
# Far above any login state (``state.MAX_COOKIE_LENGTH`` is 4096): the cost of refusing a
# hostile value stays bounded whoever calls.
MAX_TOKEN_LENGTH = 8192
_TOKEN = re.compile(r"v2\.[A-Za-z0-9_-]+")
_FERNET = re.compile(r"gAAAAA[A-Za-z0-9_-]+={0,2}")


class Sealer:
    """``encrypt``/``decrypt`` as :class:`SecretBox` has them, for short-lived state."""

    def __init__(self, keys: list[bytes], legacy: SecretBox | None = None) -> None:
        if not keys:
            raise ValueError("at least one key is required")
        self._ciphers = [AESGCMSIV(key) for key in keys]
        self._legacy = legacy

    @classmethod
    def for_purpose(cls, box: SecretBox, purpose: bytes) -> Sealer:
        """Keys derived from each of ``box``'s keys for ``purpose`` (first seals, all open),
        and ``box.for_purpose(purpose)`` to open what Fernet sealed before."""
        keys = [box.derive(purpose + b" (AES-GCM-SIV)", key) for key in box.keys]
        return cls(keys, legacy=box.for_purpose(purpose))

    def encrypt(self, plaintext: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[0].encrypt(nonce, plaintext.encode("utf-8"), None)
        return PREFIX + _encode(nonce + sealed)

    def decrypt(self, token: str) -> str:
        """The plaintext; :class:`DecryptionError` for anything no key of ours sealed, and for
        any other spelling of what one did: exactly the string sealed opens."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise DecryptionError("not a sealed token")
        if not token.startswith(PREFIX):
            return self._open_legacy(token)
        # Strictly the alphabet, and the canonical encoding (base64's decoder skips foreign
        # characters and ignores the last character's unused bits): one string per seal.
        if _TOKEN.fullmatch(token) is None:
            raise DecryptionError("not a sealed token")
        body = token[len(PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError) as e:
            raise DecryptionError("not a sealed token") from e
        if len(raw) < NONCE_BYTES + TAG_BYTES or _encode(raw) != body:
            raise DecryptionError("not a sealed token")
        nonce, sealed = raw[:NONCE_BYTES], raw[NONCE_BYTES:]
        for cipher in self._ciphers:
            try:
                plaintext = cipher.decrypt(nonce, sealed, None)
            except InvalidTag:
                continue
            try:
                return plaintext.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DecryptionError("not a sealed token") from e
        raise DecryptionError("sealed with no key of ours")

    def _open_legacy(self, token: str) -> str:
        # Only what Fernet itself makes (version byte 0x80, URL-safe base64): Fernet's own
        # decoder would skip foreign characters, and refuses non-ASCII with a ValueError.
        if self._legacy is None or _FERNET.fullmatch(token) is None:
            raise DecryptionError("not a sealed token")
        try:
            return self._legacy.decrypt(token)
        except DecryptionError as e:
            raise DecryptionError("a Fernet-sealed token no key of ours opens") from e


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
