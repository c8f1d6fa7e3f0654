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
_TOKEN = re.compile(r"v2\.[A-Za-z0-9_-]+")


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
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")

    def decrypt(self, token: str) -> str:
        """The plaintext; :class:`DecryptionError` for anything no key of ours sealed."""
        if not token.startswith(PREFIX):
            if self._legacy is None:
                raise DecryptionError("not a sealed token")
            return self._legacy.decrypt(token)
        # Strictly the alphabet: base64's decoder would skip foreign characters, and so open
        # other strings than the one sealed.
        if _TOKEN.fullmatch(token) is None:
            raise DecryptionError("not a sealed token")
        body = token[len(PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError) as e:
            raise DecryptionError("not a sealed token") from e
        if len(raw) < NONCE_BYTES + TAG_BYTES:
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
