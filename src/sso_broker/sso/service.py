"""The browser sign-in: initiate → Entra → callback → a login code for the frontend.

Follow it with a finger: :func:`initiate` seals a fresh :class:`LoginState` and builds
Entra's authorization URL; :func:`complete` opens and consumes the state, exchanges the code
(PKCE, ``client_secret_post``), validates the ID token, resolves the user, opens a sign-in
session and returns the frontend URL carrying a one-time login code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import urlencode

from sso_broker.audit import service as audit
from sso_broker.audit.service import EventType
from sso_broker.crypto import token_hash
from sso_broker.database import session_scope, utcnow
from sso_broker.deps import AppContext
from sso_broker.errors import SignInError, SignInErrorCode
from sso_broker.hotpath import LinkConflict
from sso_broker.http import ResponseTooLarge, TransportError
from sso_broker.providers.models import SSOProvider
from sso_broker.sessions import service as sessions_service
from sso_broker.sso import id_token, repository, state
from sso_broker.sso.discovery import (
    DiscoveryError,
    ProviderMetadata,
    aadsts_code,
    overall_deadline,
)
from sso_broker.sso.identity import choose_account, not_provisioned
from sso_broker.sso.redirects import safe_return_to
from sso_broker.users.repository import normalize_email

logger = logging.getLogger(__name__)

SCOPES = "openid profile email offline_access"
PROMPTS = frozenset({"login", "none", "consent", "select_account"})
MAX_HINT = 256
MAX_TOKEN_RESPONSE = 64 * 1024
PURGE_PROBABILITY = 0.02

# Entra errors an administrator can fix, and what to tell them (shown as last_error).
ACTIONABLE_AADSTS: dict[str, tuple[str, str]] = {
    "AADSTS7000215": (
        "invalid_client_secret",
        "Entra rejected the client secret (AADSTS7000215): paste the secret's Value, not its "
        "Secret ID (App registration → Certificates & secrets).",
    ),
    "AADSTS7000222": (
        "client_secret_expired",
        "The client secret has expired (AADSTS7000222): create a new one in Entra "
        "(Certificates & secrets) and paste its Value here.",
    ),
    "AADSTS700016": (
        "unknown_client_id",
        "Entra does not know this client ID in this tenant (AADSTS700016): paste the "
        "Application (client) ID of the app registration in this tenant.",
    ),
    "AADSTS50011": (
        "redirect_uri_mismatch",
        "Entra refused the callback URL (AADSTS50011): add this provider's callback URL to "
        "the app registration's Redirect URIs (platform Web), exactly as shown.",
    ),
    "AADSTS90002": (
        "tenant_not_found",
        "Entra does not know this tenant (AADSTS90002): check the Directory (tenant) ID or "
        "domain in base_url.",
    ),
    # The plain OAuth error, when no AADSTS code says more (RFC 6749 §5.2).
    "invalid_client": (
        "invalid_client",
        "The identity provider rejected the client credentials (invalid_client): check the "
        "client ID and paste the client secret's Value again.",
    ),
}
# Errors the user caused or chose: cancelled, not assigned to the app, consent declined.
ACCESS_DENIED_AADSTS = frozenset({"AADSTS50105", "AADSTS65004", "AADSTS50126"})


@dataclass(frozen=True, slots=True)
class InitiateResult:
    authorization_url: str
    login: state.LoginState


@dataclass(frozen=True, slots=True)
class CallbackParams:
    state: str | None
    code: str | None
    error: str | None
    error_description: str | None
    iss: str | None


def callback_url(context: AppContext, provider_id: uuid.UUID) -> str:
    return f"{context.settings.public_base}/sso/{provider_id}/callback"


def logout_url(context: AppContext, provider_id: uuid.UUID) -> str:
    return f"{context.settings.public_base}/sso/{provider_id}/logout"


def credentials(provider: SSOProvider) -> tuple[str, str]:
    """The client ID and encrypted secret of an enabled provider."""
    if not provider.enabled or not provider.client_id or not provider.client_secret_encrypted:
        raise SignInError(SignInErrorCode.PROVIDER_DISABLED, "the provider is not enabled")
    return provider.client_id, provider.client_secret_encrypted


async def cached_provider(context: AppContext, provider_id: uuid.UUID) -> SSOProvider | None:
    """The provider as stored at most a second ago (``caches.py``), or None: initiate and
    callback then read nothing (README, *Performance*)."""
    provider: SSOProvider | None = await context.caches.providers.get(
        provider_id, lambda: context.fast.provider(provider_id)
    )
    return provider


async def load_provider(context: AppContext, provider_id: uuid.UUID) -> SSOProvider:
    """The provider, if it exists and is enabled with its credentials."""
    provider = await cached_provider(context, provider_id)
    if provider is None:
        # Only the log hears of it: an unknown id belongs to no company's audit log, and a
        # bot must not fill the database (the id is a UUID, so the log line is bounded).
        raise SignInError(SignInErrorCode.PROVIDER_NOT_FOUND, f"no provider {provider_id}")
    credentials(provider)
    return provider


async def record_failure(
    context: AppContext, provider: SSOProvider, error: SignInError, *, stage: str
) -> None:
    """Writes a failed sign-in to the company's audit log (its own transaction).

    A failure to write it is logged, never allowed to replace the sign-in's own error.
    """
    try:
        async with session_scope(context.sessionmaker) as session:
            audit.record(
                session, provider.company_id, EventType.SIGN_IN_FAILED,
                provider_id=provider.id, idp_subject=error.idp_subject, error=error.code.value,
                details={"stage": stage},
            )  # fmt: skip
    except Exception as e:
        logger.warning("could not audit a failed sign-in", extra={"error": type(e).__name__})


async def provider_metadata(context: AppContext, provider: SSOProvider) -> ProviderMetadata:
    try:
        return await context.directory.metadata(provider.base_url)
    except DiscoveryError as e:
        if e.aadsts in ACTIONABLE_AADSTS and not e.cached:
            await record_error(context, provider.id, e.aadsts)
        raise SignInError(SignInErrorCode.IDP_ERROR, f"discovery failed: {e.reason}") from e


@lru_cache(maxsize=4096)
def _authorization_prefix(endpoint: str, client_id: str, redirect_uri: str) -> str:
    """The part of a provider's authorization request that never changes (RFC 6749 §4.1.1,
    OIDC Core §3.1.2.1, RFC 7636), encoded once instead of on every initiate (README,
    *Performance*)."""
    fixed = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": SCOPES,
            "response_mode": "query",
            "code_challenge_method": "S256",
        }
    )
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{fixed}"


def _hint(value: str | None) -> str | None:
    if value and len(value) <= MAX_HINT and value.isprintable():
        return value
    return None


async def initiate(
    context: AppContext,
    provider_id: uuid.UUID,
    *,
    return_to: str | None,
    login_hint: str | None,
    domain_hint: str | None,
    prompt: str | None,
) -> InitiateResult:
    """Builds the redirect to Entra; writes nothing to the database (the state is sealed)."""
    provider = await load_provider(context, provider_id)
    try:
        metadata = await provider_metadata(context, provider)
    except SignInError as e:
        await record_failure(context, provider, e, stage="initiate")
        raise
    safe_path = safe_return_to(return_to)
    if return_to and safe_path is None:
        logger.info("dropped an unsafe return_to", extra={"provider_id": str(provider_id)})
    login = state.LoginState.new(provider.id, safe_path)
    optional = {
        "login_hint": _hint(login_hint),
        "domain_hint": _hint(domain_hint),
        "prompt": prompt if prompt in PROMPTS else None,
    }
    # state, nonce and the challenge are URL-safe base64 already: nothing to encode.
    prefix = _authorization_prefix(
        metadata.authorization_endpoint,
        credentials(provider)[0],
        callback_url(context, provider.id),
    )
    challenge = s256_code_challenge(login.code_verifier)
    url = f"{prefix}&state={login.state}&nonce={login.nonce}&code_challenge={challenge}"
    extra = {name: value for name, value in optional.items() if value is not None}
    if extra:
        url += "&" + urlencode(extra)
    return InitiateResult(authorization_url=url, login=login)


# PKCE's challenge and the token request's body, as authlib made them: two functions were all
# the service used of it, and importing it cost each worker 0.4 MB (README, *Performance*).


def s256_code_challenge(code_verifier: str) -> str:
    """PKCE's S256 challenge (RFC 7636, 4.2): the verifier's SHA-256 in unpadded URL-safe
    base64."""
    digest = hashlib.sha256(code_verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def token_request_body(*, code: str, redirect_uri: str, **params: str) -> bytes:
    """An authorization code's token request (RFC 6749, 4.1.3), form-encoded: grant_type,
    redirect_uri, code, then ``params`` in their order, leaving out empty ones."""
    fields = [("redirect_uri", redirect_uri), ("code", code), *params.items()]
    return urlencode(
        [("grant_type", "authorization_code"), *((name, value) for name, value in fields if value)]
    ).encode("ascii")


async def record_error(context: AppContext, provider_id: uuid.UUID, aadsts: str) -> None:
    """Stores an actionable failure as the provider's ``last_error`` (its own transaction).

    ``aadsts`` is a key of :data:`ACTIONABLE_AADSTS`: Entra's code, or a plain OAuth error.
    """
    code, message = ACTIONABLE_AADSTS[aadsts]
    logger.warning(
        "sign-in failure an administrator must fix",
        extra={"provider_id": str(provider_id), "aadsts": aadsts, "last_error": code},
    )
    async with session_scope(context.sessionmaker) as session:
        provider = await session.get(SSOProvider, provider_id)
        if provider is not None:
            provider.last_error = {"code": code, "message": message, "at": utcnow().isoformat()}


def _check_idp_error(params: CallbackParams) -> str | None:
    """Maps an error response from Entra to our code; returns its AADSTS code for the log."""
    if params.error is None:
        return None
    aadsts = aadsts_code(params.error_description)
    if params.error == "access_denied" or aadsts in ACCESS_DENIED_AADSTS:
        code = SignInErrorCode.ACCESS_DENIED
    else:
        code = SignInErrorCode.IDP_ERROR
    raise SignInError(code, f"Entra answered {params.error[:64]!r} ({aadsts or 'no AADSTS code'})")


def _check_iss(params: CallbackParams, metadata: ProviderMetadata) -> None:
    """RFC 9207: the response names its issuer when Entra says it will (mix-up defence)."""
    if params.iss is not None and params.iss != metadata.issuer:
        raise SignInError(SignInErrorCode.IDP_ERROR, "the authorization response's iss is wrong")
    if params.iss is None and metadata.iss_parameter_supported:
        raise SignInError(SignInErrorCode.IDP_ERROR, "the authorization response lacks iss")


async def _exchange_code(
    context: AppContext,
    provider: SSOProvider,
    metadata: ProviderMetadata,
    code: str,
    login: state.LoginState,
) -> dict[str, Any]:
    """The token request: ``client_secret_post`` plus the PKCE verifier."""
    client_id, secret_encrypted = credentials(provider)
    body = token_request_body(
        code=code,
        redirect_uri=callback_url(context, provider.id),
        client_id=client_id,
        client_secret=context.box.decrypt(secret_encrypted),
        code_verifier=login.code_verifier,
    )
    try:
        async with asyncio.timeout(overall_deadline(context.http)):
            status, answer = await context.http.fetch(
                "POST",
                metadata.token_endpoint,
                limit=MAX_TOKEN_RESPONSE,
                content=body,
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Accept": "application/json",
                },
            )
    except ResponseTooLarge as e:
        raise SignInError(
            SignInErrorCode.TOKEN_EXCHANGE_FAILED, "token endpoint answered an oversized document"
        ) from e
    except (TransportError, TimeoutError) as e:
        raise SignInError(
            SignInErrorCode.TOKEN_EXCHANGE_FAILED, f"token endpoint unreachable: {type(e).__name__}"
        ) from e
    try:
        document = json.loads(answer)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise SignInError(
            SignInErrorCode.TOKEN_EXCHANGE_FAILED,
            f"token endpoint answered {status} without a JSON object",
        )
    if status != 200 or "error" in document:
        aadsts = aadsts_code(document.get("error_codes"), document.get("error_description"))
        if aadsts in ACTIONABLE_AADSTS:
            await record_error(context, provider.id, aadsts)
        elif document.get("error") == "invalid_client":
            await record_error(context, provider.id, "invalid_client")
        raise SignInError(
            SignInErrorCode.TOKEN_EXCHANGE_FAILED,
            f"token endpoint answered {status} "
            f"{str(document.get('error'))[:64]!r} ({aadsts or 'no AADSTS code'})",
        )
    if not isinstance(document.get("id_token"), str):
        raise SignInError(
            SignInErrorCode.TOKEN_EXCHANGE_FAILED, "the token response has no id_token"
        )
    return document


async def complete(
    context: AppContext,
    provider_id: uuid.UUID,
    params: CallbackParams,
    sealed_state: str | None,
) -> str:
    """Finishes a sign-in and returns the frontend URL with a one-time login code.

    The state is consumed in its own transaction first, so a failure later on (a rejected
    code, a bad token) still leaves it used: an authorization response works once.
    """
    provider: SSOProvider | None = None
    try:
        provider = await cached_provider(context, provider_id)
        if provider is None:
            raise SignInError(SignInErrorCode.PROVIDER_NOT_FOUND, f"no provider {provider_id}")
        credentials(provider)
        login = state.open_state(
            context.box, sealed_state, state=params.state, provider_id=provider_id
        )
        # One statement, committed on its own before anything else can fail.
        await state.consume(context.fast, login)
        if random.random() < PURGE_PROBABILITY:  # noqa: S311 - housekeeping only
            async with session_scope(context.sessionmaker) as session:
                await state.purge_expired(session)
                await sessions_service.purge_expired(session)
        return await _complete(context, provider, params, login)
    except SignInError as e:
        if provider is not None:  # an unknown provider belongs to no company's audit log
            await record_failure(context, provider, e, stage="callback")
        raise


async def _complete(
    context: AppContext,
    provider: SSOProvider,
    params: CallbackParams,
    login: state.LoginState,
) -> str:
    provider_id = provider.id
    _check_idp_error(params)
    metadata = await provider_metadata(context, provider)
    _check_iss(params, metadata)
    if not params.code or len(params.code) > 8192:
        raise SignInError(SignInErrorCode.IDP_ERROR, "the authorization response has no code")
    tokens = await _exchange_code(context, provider, metadata, params.code, login)
    claims = await id_token.validate(
        tokens["id_token"],
        metadata=metadata,
        client_id=credentials(provider)[0],
        nonce=login.nonce,
        access_token=tokens.get("access_token")
        if isinstance(tokens.get("access_token"), str)
        else None,
        signing_key=context.directory.signing_key,
    )

    code = sessions_service.new_secret_token()
    new = await _write_sign_in(context, provider, claims, code)
    logger.info(
        "sign-in succeeded",
        extra={
            "provider_id": str(provider_id),
            "user_id": str(new.account.id),
            "session_id": str(new.session_id),
            "idp_oid": claims.object_id,
        },
    )
    query = {"code": code}
    if login.return_to:
        query["return_to"] = login.return_to
    target = context.settings.sign_in_complete
    return f"{target}{'&' if '?' in target else '?'}{urlencode(query)}"


async def _write_sign_in(
    context: AppContext, provider: SSOProvider, claims: id_token.IdTokenClaims, code: str
) -> repository.NewSignIn:
    """Resolves the account and writes the link, session, login code and audit event: one
    SELECT and one write (on PostgreSQL one statement, ``fastpath.py``)."""
    email = normalize_email(claims.email) if claims.email else None
    found = await context.fast.resolve(provider.id, claims.tenant_id, claims.object_id, email)
    new = _new_sign_in(context, provider, claims, code, found)
    try:
        await context.fast.write_sign_in(new, clear_last_error=_had_error(found))
    except LinkConflict as e:
        # The account is already linked to another identity of this provider (or a
        # concurrent first sign-in linked it a moment ago): it must not be taken over.
        raise not_provisioned("the user is already linked to another identity", claims) from e
    return new


def _had_error(found: repository.Resolution | None) -> bool:
    # It signs people in again: the provider's last failure is history.
    return found is not None and found.last_error is not None


def _new_sign_in(
    context: AppContext,
    provider: SSOProvider,
    claims: id_token.IdTokenClaims,
    code: str,
    found: repository.Resolution | None,
) -> repository.NewSignIn:
    """The rows a sign-in writes, once the provider is known to be enabled still."""
    if found is None or not found.enabled:
        raise SignInError(SignInErrorCode.PROVIDER_DISABLED, "disabled during the sign-in")
    account, link = choose_account(found, provider, claims)
    now = utcnow()
    return repository.NewSignIn(
        provider_id=provider.id,
        account=account,
        tenant_id=claims.tenant_id,
        subject=claims.object_id,
        link=link,
        session_id=uuid.uuid4(),
        idp_sid=claims.sid,
        login_hint=claims.login_hint,
        now=now,
        expires_at=now + timedelta(seconds=context.settings.session_max_age),
        code_hash=token_hash(code),
        code_expires_at=now + sessions_service.LOGIN_CODE_TTL,
        event_type=EventType.SIGN_IN_SUCCEEDED.value,
    )


async def end_session_url(
    context: AppContext, provider: SSOProvider, login_hint: str | None
) -> str | None:
    """Entra's end-session URL for the frontend to send the browser to after sign-out."""
    try:
        metadata = await context.directory.metadata(provider.base_url)
    except DiscoveryError:
        return None
    if metadata.end_session_endpoint is None:
        return None
    params = {"post_logout_redirect_uri": logout_url(context, provider.id)}
    if provider.client_id:
        params["client_id"] = provider.client_id
    if login_hint:
        params["logout_hint"] = login_hint
    separator = "&" if "?" in metadata.end_session_endpoint else "?"
    return f"{metadata.end_session_endpoint}{separator}{urlencode(params)}"
