"""Compact JWS helpers: the protected header read before the signature is checked, and a
PyJWT whose segment check runs at C speed.

The header only says which key and algorithm to check the token with; PyJWT then checks the
whole token (alphabet, padding, signature, header again). ``jwt.get_unverified_header``
decoded and alphabet-checked every segment of the token in Python for those few bytes: a
third of an ID token's validation (README, *Performance*).

PyJWT 2.15 checks each segment's alphabet with a Python generator, one step per character:
about 40 of the 95 µs an ID token's ``jwt.decode`` took (a micro-benchmark; the RSA signature
check itself is 34). :data:`decoder` is a ``PyJWT`` whose ``PyJWS`` makes the same checks
(padding, length, alphabet, canonical encoding, in PyJWT's order and with its messages) with
one regular expression; ``tests/test_jws.py`` holds it to PyJWT's own on every kind of
segment, so a PyJWT upgrade that changes the rule fails there rather than passing here.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import jwt

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_ALPHABET = re.compile(rb"[A-Za-z0-9_-]*")
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


class _SegmentCheckingJWS(jwt.PyJWS):
    @staticmethod
    def _decode_base64url_segment(segment: bytes, name: str) -> bytes:
        # PyJWS._decode_base64url_segment, with the alphabet checked by _ALPHABET.
        stripped = segment.rstrip(b"=")
        padding = len(segment) - len(stripped)
        if padding > 2:
            raise jwt.DecodeError(f"Invalid {name} padding")
        if padding and len(segment) % 4 != 0:
            raise jwt.DecodeError(f"Invalid {name} padding")
        if len(stripped) % 4 == 1 or _ALPHABET.fullmatch(stripped) is None:
            raise jwt.DecodeError(f"Invalid {name} padding")
        try:
            decoded = base64.urlsafe_b64decode(stripped + b"=" * (-len(stripped) % 4))
        except (TypeError, binascii.Error) as err:
            raise jwt.DecodeError(f"Invalid {name} padding") from err
        if base64.urlsafe_b64encode(decoded).rstrip(b"=") != stripped:
            raise jwt.DecodeError(f"Invalid {name} padding")
        return decoded


def _decoder() -> jwt.PyJWT:
    decoder = jwt.PyJWT()
    # As PyJWT builds its own module-level decoder: a PyJWT around a PyJWS (jwt/api_jwt.py).
    decoder._jws = _SegmentCheckingJWS(options=decoder._get_sig_options())
    return decoder


decoder = _decoder()
"""``decoder.decode(...)`` is ``jwt.decode(...)``, with the faster segment check."""
