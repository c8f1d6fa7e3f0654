"""A compact JWS's protected header, read before the signature is checked.

The header only says which key and algorithm to check the token with; PyJWT then checks the
whole token (alphabet, padding, signature, header again). ``jwt.get_unverified_header``
decoded and alphabet-checked every segment of the token in Python for those few bytes: a
third of an ID token's validation (README, *Performance*).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import jwt

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
MAX_HEADER_LENGTH = 1024


class MalformedToken(jwt.DecodeError):
    """Not three base64url segments with a JSON object first (PyJWT's DecodeError)."""


def unverified_header(token: str) -> dict[str, Any]:
    header, dot, rest = token.partition(".")
    if (
        not dot
        or rest.count(".") != 1
        or len(header) > MAX_HEADER_LENGTH
        or len(header) % 4 == 1
        or not _SEGMENT.fullmatch(header)
    ):
        raise MalformedToken("not a compact JWS")
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (binascii.Error, ValueError) as e:
        raise MalformedToken("the header is not base64url JSON") from e
    if not isinstance(decoded, dict):
        raise MalformedToken("the header is not a JSON object")
    if not isinstance(decoded.get("kid", ""), str):  # as PyJWT refuses it
        raise MalformedToken("the header's kid is not a string")
    return decoded
