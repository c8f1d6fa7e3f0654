"""Identity providers' OpenID metadata and signing keys, fetched over the shared HTTP client
and cached: the generic core every provider type shares (README, *Identity providers*).

Both are public and the same for every replica, so an in-process cache is safe: metadata is
refreshed after :data:`METADATA_TTL` (and a stale copy keeps serving while the provider is
down); a key set is fetched again on an unknown ``kid`` at most once per
:data:`JWKS_REFETCH_INTERVAL` per issuer, so a key rotation between two sign-ins works and a
flood of forged kids does not hammer the provider. What a type accepts as its metadata (its
issuer, where its endpoints may live) is its adapter's say (``idp/``). A sign-in passes its
provider's circuit breaker (``breaker.py``): a fetch the caches need goes through it, and while
it is open a stale copy serves, or :class:`CircuitOpen` says at once that there is none.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt

from sso_broker.errors import SignInError, SignInErrorCode
from sso_broker.http import IdentityProviderClient, ResponseTooLarge, TransportError
from sso_broker.idp import Adapter
from sso_broker.metrics import KEYS_HIT, KEYS_MISS, METADATA_HIT, METADATA_MISS, IdPTimer
from sso_broker.sso.breaker import Breaker, CircuitOpen, guarded

logger = logging.getLogger(__name__)

METADATA_TTL = 3600.0
METADATA_RETRY_AFTER_FAILURE = 30.0
# A key the provider withdrew (a compromised key, say) stops verifying within this time.
JWKS_TTL = 3600.0
JWKS_REFETCH_INTERVAL = 300.0
MAX_DOCUMENT_BYTES = 256 * 1024
# RSA key sizes an ID token's signature is checked with. RFC 7518 (3.3) requires 2048 bits
# or more for RS256: a shorter key is factorable, so its signatures prove nothing. Above
# 8192 no provider goes, and each check would cost a sign-in milliseconds of CPU.
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
# A private key's members (RFC 7518, 6.3.2): published, the key signs for anyone, and
# building it would recover its primes on the event loop, for seconds at a large modulus.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})
_ENDPOINTS = ("authorization_endpoint", "token_endpoint", "jwks_uri", "end_session_endpoint")


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    """What a sign-in needs from the provider's discovery document."""

    issuer: str
    tenant_id: str | None  # the tenant the issuer names, for types that have tenants (Entra)
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None
    iss_parameter_supported: bool
    # token_endpoint_auth_methods_supported as published; None when the document has none.
    token_auth_methods: tuple[str, ...] | None = None
    # The type whose adapter accepted the document: the metrics' label for calls to it.
    provider_type: str = "unknown"


@dataclass(slots=True)
class _Cached:
    metadata: ProviderMetadata | None = None
    fetched_at: float = float("-inf")
    failed_at: float = float("-inf")
    failure: DiscoveryError | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(slots=True)
class _KeySet:
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    fetched_at: float = float("-inf")  # the last successful fetch
    attempted_at: float = float("-inf")  # the last fetch, successful or not
    unknown_kid_at: float = float("-inf")  # the last fetch an unknown kid caused
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class DiscoveryError(Exception):
    """The provider's metadata could not be had or was not acceptable.

    ``status`` is the HTTP status the provider answered, and ``provider_code`` its own error
    code when it gave one (Entra's AADSTS90002: no such tenant).
    """

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        provider_code: str | None = None,
        cached: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.provider_code = provider_code
        # True when this repeats a recent failure without asking the provider again.
        self.cached = cached


def overall_deadline(http: IdentityProviderClient) -> float:
    """One call's total time budget: the client's timeouts bound each read, not the whole
    call, so a server dripping bytes could otherwise hold a sign-in (and a worker's slot)
    forever."""
    return http.timeout or 10.0


async def call_provider(
    http: IdentityProviderClient,
    provider_type: str,
    endpoint: str,
    method: str,
    url: str,
    *,
    limit: int,
    headers: dict[str, str],
    content: bytes | None = None,
    breaker: Breaker | None = None,
) -> tuple[int, bytes]:
    """One request to an identity provider as a sign-in makes it: through ``breaker``
    (``CircuitOpen`` at once while it is open), within the call's total deadline, timed for
    the ``idp_request_duration_seconds`` metric under ``endpoint``."""

    async def call() -> tuple[int, bytes]:
        async with asyncio.timeout(overall_deadline(http)):
            with IdPTimer(provider_type, endpoint):
                return await http.fetch(method, url, limit=limit, content=content, headers=headers)

    return await guarded(breaker, call)


async def _get_json(
    http: IdentityProviderClient,
    url: str,
    provider_type: str,
    endpoint: str,
    breaker: Breaker | None = None,
) -> tuple[int, Any]:
    """GETs a JSON document through ``breaker`` (CircuitOpen when it is open)."""
    try:
        status, body = await call_provider(
            http, provider_type, endpoint, "GET", url,
            limit=MAX_DOCUMENT_BYTES, headers={"Accept": "application/json"}, breaker=breaker,
        )  # fmt: skip
    except ResponseTooLarge as e:
        raise DiscoveryError(f"{urlsplit(url).path} answered with an oversized document") from e
    except (TransportError, TimeoutError) as e:
        raise DiscoveryError(f"cannot reach {urlsplit(url).netloc}: {type(e).__name__}") from e
    try:
        return status, json.loads(body)
    except ValueError as e:
        raise DiscoveryError(f"{urlsplit(url).path} answered {status} without JSON") from e


class ProviderDirectory:
    """Per-process caches of providers' metadata (per discovery URL) and key sets (per
    issuer), for every provider type."""

    def __init__(self, http: IdentityProviderClient) -> None:
        self._http = http
        self._metadata: dict[tuple[str, str], _Cached] = {}
        self._keys: dict[str, _KeySet] = {}

    async def metadata(
        self, adapter: Adapter, base_url: str, breaker: Breaker | None = None
    ) -> ProviderMetadata:
        """The provider's metadata, fetched at most once per TTL (through ``breaker``); stale
        copies serve on failure, and while the breaker is open."""
        # Per type and exact (stored, normalised) base URL: what a document is accepted as
        # (its tenant, the endpoints trusted) is its type's judgement, so an oidc provider
        # pointed at an Entra tenant's URL must not stand in for the Entra provider's checks;
        # and two issuers differing only in their path's letter case are two providers. The
        # discovery URL is built on a miss only (README, *Performance*).
        key = (adapter.name, adapter.same_base_url(base_url))
        cached = self._metadata.get(key)
        if cached is None:
            cached = self._metadata.setdefault(key, _Cached())
        now = time.monotonic()
        if cached.metadata is not None and now - cached.fetched_at < METADATA_TTL:
            METADATA_HIT.inc()
            return cached.metadata
        METADATA_MISS.inc()
        async with cached.lock:
            now = time.monotonic()
            if cached.metadata is not None and now - cached.fetched_at < METADATA_TTL:
                return cached.metadata
            if now - cached.failed_at < METADATA_RETRY_AFTER_FAILURE:
                # A provider that just failed is not asked again for a while, so bots clicking
                # a misconfigured provider's link cannot make us hammer it.
                if cached.metadata is not None:
                    return cached.metadata
                if cached.failure is not None:
                    failure = cached.failure
                    raise DiscoveryError(
                        failure.reason,
                        status=failure.status,
                        provider_code=failure.provider_code,
                        cached=True,
                    )
            try:
                metadata = await self._fetch_metadata(
                    adapter, base_url, adapter.discovery_url(base_url), breaker
                )
            except CircuitOpen:
                if cached.metadata is not None:
                    return cached.metadata
                raise
            except DiscoveryError as e:
                cached.failed_at, cached.failure = time.monotonic(), e
                if cached.metadata is not None:
                    logger.warning(
                        "serving stale provider metadata", extra={"provider_type": adapter.name}
                    )
                    return cached.metadata
                raise
            cached.metadata, cached.fetched_at, cached.failure = metadata, time.monotonic(), None
            return metadata

    async def fetch_metadata(self, adapter: Adapter, base_url: str) -> ProviderMetadata:
        """The provider's metadata as it answers now, past every cache (the connection test:
        README, *Keeping SSO healthy*); DiscoveryError when it cannot be had or accepted."""
        return await self._fetch_metadata(adapter, base_url, adapter.discovery_url(base_url))

    async def fetch_keys(self, metadata: ProviderMetadata) -> dict[str, jwt.PyJWK]:
        """The provider's usable RS256 signing keys as it answers now, past every cache."""
        return await self._fetch_keys(metadata)

    async def _fetch_metadata(
        self, adapter: Adapter, base_url: str, url: str, breaker: Breaker | None = None
    ) -> ProviderMetadata:
        status, document = await _get_json(self._http, url, adapter.name, "metadata", breaker)
        if status != 200 or not isinstance(document, dict):
            details = document if isinstance(document, dict) else {}
            raise DiscoveryError(
                f"discovery answered {status}",
                status=status,
                # Every field: Entra's error_codes and error_description, Okta's errorCode
                # and errorSummary; the adapter knows its own.
                provider_code=adapter.error_code(*details.values()),
            )
        return check_metadata(adapter, base_url, document)

    async def signing_key(
        self, metadata: ProviderMetadata, kid: str | None, breaker: Breaker | None = None
    ) -> jwt.PyJWK:
        """The issuer's key for ``kid`` (or its only key when the token names none), fetched
        through ``breaker`` when it must be.

        An unknown kid fetches the key set again at once, and then not again for the refetch
        interval: a rotation between two sign-ins works, a flood of forged kids costs the
        provider one request per interval. A key set past its TTL is refreshed at most once per
        interval too (failures count), so while the provider's key endpoint fails the cached
        keys serve.
        """
        key_set = self._keys.setdefault(metadata.issuer, _KeySet())
        found = self._pick(key_set, kid)
        if found is not None and time.monotonic() - key_set.fetched_at < JWKS_TTL:
            KEYS_HIT.inc()
            return found
        KEYS_MISS.inc()
        async with key_set.lock:
            found = self._pick(key_set, kid)
            now = time.monotonic()
            # Put back when the breaker refuses the fetch: a refused fetch is no attempt.
            attempted, unknown_kid = key_set.attempted_at, key_set.unknown_kid_at
            if not key_set.keys:
                due = True
            elif found is None:
                due = now - key_set.unknown_kid_at >= JWKS_REFETCH_INTERVAL
                if due:
                    key_set.unknown_kid_at = now
            else:
                due = (
                    now - key_set.fetched_at >= JWKS_TTL
                    and now - key_set.attempted_at >= JWKS_REFETCH_INTERVAL
                )
            if due:
                key_set.attempted_at = now
                try:
                    key_set.keys = await self._fetch_keys(metadata, breaker)
                    key_set.fetched_at = time.monotonic()
                except CircuitOpen as e:
                    key_set.attempted_at, key_set.unknown_kid_at = attempted, unknown_kid
                    if not key_set.keys:
                        raise SignInError(SignInErrorCode.IDP_ERROR, str(e)) from e
                except DiscoveryError as e:
                    if not key_set.keys:
                        raise SignInError(SignInErrorCode.IDP_ERROR, e.reason) from e
                    logger.warning("serving cached signing keys", extra={"reason": e.reason})
                found = self._pick(key_set, kid)
        if found is None:
            raise SignInError(
                SignInErrorCode.INVALID_ID_TOKEN,
                "the ID token's key is not in the provider's key set"
                if kid is not None
                else "the ID token names no key and the key set holds several",
            )
        return found

    @staticmethod
    def _pick(key_set: _KeySet, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return next(iter(key_set.keys.values())) if len(key_set.keys) == 1 else None
        return key_set.keys.get(kid)

    async def _fetch_keys(
        self, metadata: ProviderMetadata, breaker: Breaker | None = None
    ) -> dict[str, jwt.PyJWK]:
        status, document = await _get_json(
            self._http, metadata.jwks_uri, metadata.provider_type, "keys", breaker
        )
        if status != 200 or not isinstance(document, dict):
            raise DiscoveryError(f"the key set answered {status}")
        keys: dict[str, jwt.PyJWK] = {}
        entries = document.get("keys")
        for entry in entries if isinstance(entries, list) else []:
            # Only RSA signing keys; one unusable entry must not spoil the others.
            if not isinstance(entry, dict) or entry.get("kty") != "RSA":
                continue
            if entry.get("use", "sig") != "sig" or entry.get("alg", "RS256") != "RS256":
                continue
            kid = str(entry.get("kid", ""))
            if _PRIVATE_MEMBERS & entry.keys():
                logger.warning(
                    "skipped a key the provider's key set publishes with its private part",
                    extra={"kid": kid[:64]},
                )
                continue
            try:
                key = jwt.PyJWK(entry, algorithm="RS256")
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                logger.info("skipped an unusable key in the provider's key set")
                continue
            bits = getattr(key.key, "key_size", 0)
            if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
                logger.warning(
                    "skipped an RSA key of %d bits in the provider's key set (%d to %d are used)",
                    bits, MIN_RSA_BITS, MAX_RSA_BITS,
                    extra={"kid": kid[:64]},
                )  # fmt: skip
                continue
            keys[kid] = key
        if not keys:
            raise DiscoveryError(
                "the provider's key set holds no usable RSA signing key"
                f" ({MIN_RSA_BITS} to {MAX_RSA_BITS} bits, for RS256)"
            )
        return keys


def check_metadata(adapter: Adapter, base_url: str, document: dict[str, Any]) -> ProviderMetadata:
    """Accepts a discovery document only if it speaks for exactly the configured provider.

    Its ``issuer`` must be the one ``base_url`` names (the adapter's rule: exactly the derived
    issuer, or for an Entra domain an Entra issuer of this authority), and every endpoint must
    be one the adapter trusts (on the issuer's origin, unless the type says otherwise), so a
    tampered or confused document cannot send codes or secrets elsewhere.
    """
    issuer = document.get("issuer")
    if not isinstance(issuer, str):
        raise DiscoveryError("discovery document has no issuer")
    try:
        tenant_id = adapter.check_issuer(base_url, issuer)
    except ValueError as e:
        raise DiscoveryError(str(e)) from e
    endpoints: dict[str, str | None] = {}
    for name in _ENDPOINTS:
        value = document.get(name)
        if value is None and name == "end_session_endpoint":
            endpoints[name] = None
            continue
        if not isinstance(value, str) or not adapter.endpoint_allowed(issuer, value):
            raise DiscoveryError(f"discovery {name} is missing or not on the provider's origin")
        endpoints[name] = value
    algorithms = document.get("id_token_signing_alg_values_supported")
    if isinstance(algorithms, list) and "RS256" not in algorithms:
        raise DiscoveryError("the provider does not sign ID tokens with RS256")
    methods = document.get("token_endpoint_auth_methods_supported")
    return ProviderMetadata(
        issuer=issuer,
        tenant_id=tenant_id,
        authorization_endpoint=str(endpoints["authorization_endpoint"]),
        token_endpoint=str(endpoints["token_endpoint"]),
        jwks_uri=str(endpoints["jwks_uri"]),
        end_session_endpoint=endpoints["end_session_endpoint"],
        iss_parameter_supported=document.get("authorization_response_iss_parameter_supported")
        is True,
        token_auth_methods=tuple(m for m in methods if isinstance(m, str))
        if isinstance(methods, list)
        else None,
        provider_type=adapter.name,
    )
