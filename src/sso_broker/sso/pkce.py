"""PKCE (RFC 7636), both ways round: the service's own verifier towards the identity provider,
and the frontend's challenge that binds a login code to the browser that started the sign-in
(README, *Security model*)."""

from __future__ import annotations

import base64
import hashlib
import re

S256 = "S256"  # the only method either side uses: "plain" would show the verifier

# RFC 7636, 4.1 and 4.2: a verifier is 43 to 128 unreserved characters; an S256 challenge is a
# SHA-256 in unpadded URL-safe base64, always 43 characters.
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")


def s256_code_challenge(code_verifier: str) -> str:
    """PKCE's S256 challenge: the verifier's SHA-256 in unpadded URL-safe base64.

    As authlib makes it: this was all the service used of it, and importing it cost each
    worker 0.4 MB (README, *Performance*)."""
    digest = hashlib.sha256(code_verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def is_challenge(value: str) -> bool:
    return _CHALLENGE.fullmatch(value) is not None


def is_verifier(value: str) -> bool:
    return _VERIFIER.fullmatch(value) is not None
