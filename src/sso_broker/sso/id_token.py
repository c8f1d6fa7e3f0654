"""Validation of ID tokens, for every provider type: one function per rule, each saying why
it exists.

:func:`validate` runs them all, then the type's own rules (``Adapter.check_claims``: Entra's
tenant); any failure is a :class:`SignInError` with code ``invalid_id_token`` and a reason for
the log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from sso_broker.errors import SignInError, SignInErrorCode
from sso_broker.idp import Adapter
from sso_broker.jws import MalformedToken, decoder, unverified_header
from sso_broker.sso.discovery import ProviderMetadata

ALGORITHM = "RS256"
LEEWAY = 300  # seconds of clock skew tolerated on exp, nbf and iat
MAX_AGE = 3600  # an ID token is used right after it is issued; older ones are refused
MAX_TOKEN_LENGTH = 16 * 1024
# What every type's tokens carry; a type adds its own (``Adapter.required_claims``).
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "nonce")

KeyLookup = Callable[[ProviderMetadata, str | None], Awaitable[jwt.PyJWK]]


@dataclass(frozen=True, slots=True)
class IdTokenClaims:
    """What a validated token says. The identity is (``namespace``, ``subject``) within the
    provider: Entra's ``tid`` and ``oid``, every other type's ``iss`` and ``sub``; ``email`` is
    the one a first sign-in may match, by the type's rule (``Adapter.first_link_email``)."""

    namespace: str
    subject: str
    email: str | None
    name: str | None
    sid: str | None
    login_hint: str | None
    raw: Mapping[str, Any]


def _fail(reason: str) -> SignInError:
    return SignInError(SignInErrorCode.INVALID_ID_TOKEN, reason)


def check_header(token: str) -> str | None:
    """The algorithm is pinned to RS256 whatever the token or discovery says.

    Never ``none`` (no signature), never HS* (which a client secret or a public key could
    forge), never another asymmetric algorithm the key was not published for.
    """
    if len(token) > MAX_TOKEN_LENGTH:
        raise _fail("the ID token is oversized")
    try:
        header = unverified_header(token)
    except MalformedToken as e:
        raise _fail("the ID token is not a JWT") from e
    if header.get("alg") != ALGORITHM:
        raise _fail(f"the ID token is signed with {str(header.get('alg'))[:16]!r}, not RS256")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or len(kid) > 128):
        raise _fail("the ID token's kid is malformed")
    return kid


def check_signature(token: str, key: jwt.PyJWK) -> dict[str, Any]:
    """The signature must verify with the provider's published key (checked before any
    claim)."""
    try:
        claims: dict[str, Any] = decoder.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            options={
                "verify_signature": True,
                # Each claim rule below runs on its own, with its own reason.
                "verify_aud": False,
                "verify_iss": False,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidSignatureError as e:
        raise _fail("the ID token's signature does not verify") from e
    except jwt.PyJWTError as e:
        raise _fail(f"the ID token cannot be decoded ({type(e).__name__})") from e
    return claims


def check_required(claims: Mapping[str, Any], extra: tuple[str, ...] = ()) -> None:
    """Every claim the other rules and user resolution rely on must be present."""
    missing = [name for name in REQUIRED_CLAIMS + extra if claims.get(name) in (None, "")]
    if missing:
        raise _fail(f"the ID token lacks {', '.join(missing)}")


def check_issuer(claims: Mapping[str, Any], metadata: ProviderMetadata) -> None:
    """``iss`` is exactly the provider's issuer, so another tenant's or server's token is
    refused."""
    if claims["iss"] != metadata.issuer:
        raise _fail("the ID token's issuer is not the configured provider's")


def check_audience(claims: Mapping[str, Any], client_id: str) -> None:
    """``aud`` is our client ID and nothing else; ``azp``, when present, is us too.

    A token minted for another application (or for several) must not sign anyone in here.
    """
    audience = claims["aud"]
    audiences = audience if isinstance(audience, list) else [audience]
    if audiences != [client_id]:
        raise _fail("the ID token's audience is not (only) this provider's client ID")
    azp = claims.get("azp")
    if azp is not None and azp != client_id:
        raise _fail("the ID token's authorized party is another client")


def _numeric_date(value: Any) -> float:
    """A JSON number that is a finite time: not a string, not a boolean, not NaN or Infinity
    (which Python's JSON parser accepts and which would pass or skip every comparison)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail("the ID token's times are not numbers")
    try:
        number = float(value)
    except OverflowError as e:
        raise _fail("the ID token's times are not numbers") from e
    if not math.isfinite(number):
        raise _fail("the ID token's times are not numbers")
    return number


def check_times(claims: Mapping[str, Any], now: float | None = None) -> None:
    """``exp`` not passed, ``nbf`` reached, ``iat`` neither in the future nor long past."""
    current = time.time() if now is None else now
    expires, issued = _numeric_date(claims.get("exp")), _numeric_date(claims.get("iat"))
    not_before = _numeric_date(claims["nbf"]) if claims.get("nbf") is not None else None
    if expires < current - LEEWAY:
        raise _fail("the ID token has expired")
    if not_before is not None and not_before > current + LEEWAY:
        raise _fail("the ID token is not valid yet")
    if issued > current + LEEWAY:
        raise _fail("the ID token was issued in the future")
    if issued < current - MAX_AGE - LEEWAY:
        raise _fail("the ID token was issued too long ago")


def check_nonce(claims: Mapping[str, Any], nonce: str) -> None:
    """``nonce`` equals the one sealed at initiate, binding the token to this attempt."""
    if not hmac.compare_digest(str(claims["nonce"]).encode(), nonce.encode()):
        raise _fail("the ID token's nonce does not match this sign-in")


def check_at_hash(claims: Mapping[str, Any], access_token: str | None) -> None:
    """When ``at_hash`` is present it must match the access token issued with it."""
    at_hash = claims.get("at_hash")
    if at_hash is None:
        return
    if not access_token:
        raise _fail("the ID token has an at_hash but no access token came with it")
    digest = hashlib.sha256(access_token.encode("ascii", "replace")).digest()
    expected = base64.urlsafe_b64encode(digest[: len(digest) // 2]).decode().rstrip("=")
    if not hmac.compare_digest(str(at_hash).encode(), expected.encode()):
        raise _fail("the ID token's at_hash does not match the access token")


def _optional_text(claims: Mapping[str, Any], name: str, limit: int = 1024) -> str | None:
    value = claims.get(name)
    if isinstance(value, str) and value and len(value) <= limit:
        return value
    return None


async def validate(
    token: str,
    *,
    metadata: ProviderMetadata,
    client_id: str,
    nonce: str,
    access_token: str | None,
    signing_key: KeyLookup,
    adapter: Adapter,
) -> IdTokenClaims:
    """Every rule, in order: header, signature, presence, issuer, audience, times, nonce,
    at_hash, then the type's own (Entra: the tenant)."""
    kid = check_header(token)
    claims = check_signature(token, await signing_key(metadata, kid))
    check_required(claims, adapter.required_claims)
    check_issuer(claims, metadata)
    check_audience(claims, client_id)
    check_times(claims)
    check_nonce(claims, nonce)
    check_at_hash(claims, access_token)
    refusal = adapter.check_claims(claims, metadata.tenant_id)
    if refusal is not None:
        raise _fail(refusal)
    namespace, subject = adapter.identity(claims)
    if len(subject) > 255 or len(namespace) > 255:
        raise _fail("the ID token's subject is malformed")
    return IdTokenClaims(
        namespace=namespace,
        subject=subject,
        email=adapter.first_link_email(claims),
        name=_optional_text(claims, "name", 200),
        sid=_optional_text(claims, "sid", 255),
        login_hint=_optional_text(claims, "login_hint"),
        raw=claims,
    )
