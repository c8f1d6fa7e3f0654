"""The frontend's side of PKCE (RFC 7636) in tests: one verifier and its S256 challenge.

Every initiate a test means to reach the provider carries :data:`PKCE`, and every login-code
exchange the verifier (:func:`code_grant`), as the dashboard does (README, *Signing in*).
The challenge is computed here on its own, not with the service's ``pkce.py``.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

VERIFIER = "frontend-verifier.0123456789_abcdefghijklmnopqrstuvwxyz~ABCDEFG"
CHALLENGE = (
    base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()
)
PKCE = {"code_challenge": CHALLENGE, "code_challenge_method": "S256"}


def code_grant(code: str, **extra: Any) -> dict[str, Any]:
    """The token request body for a login code, with the verifier of :data:`CHALLENGE`."""
    return {"grant_type": "login_code", "code": code, "code_verifier": VERIFIER, **extra}
