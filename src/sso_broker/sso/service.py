"""The browser sign-in: initiate → identity provider → callback → a login code for the
frontend, for every provider type.

Follow it with a finger: :func:`initiate` seals a fresh :class:`LoginState` and builds the
provider's authorization URL; :func:`complete` opens and consumes the state, exchanges the
code (PKCE, the client authentication the provider's metadata asks for), validates the ID
token, resolves the user, opens a sign-in session and returns the frontend URL carrying a
one-time login code. What differs by type is asked of the provider's adapter (``idp/``).
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import urlencode

import jwt
from sqlalchemy import update

from sso_broker.audit import service as audit
from sso_broker.audit.service import EventType
from sso_broker.crypto import token_hash
from sso_broker.database import session_scope, utcnow
from sso_broker.deps import AppContext
from sso_broker.errors import SignInError, SignInErrorCode
from sso_broker.hotpath import LinkConflict, NoLongerServed
from sso_broker.http import ResponseTooLarge, TransportError
from sso_broker.idp import Adapter
from sso_broker.idp.base import Actionable
from sso_broker.metrics import SUCCEEDED, count_sign_in
from sso_broker.providers.certificates import CLIENT_SECRET
from sso_broker.providers.models import SSOProvider
from sso_broker.sessions import service as sessions_service
from sso_broker.sso import id_token, repository, state
from sso_broker.sso.breaker import Breaker, Breakers, CircuitOpen
from sso_broker.sso.client_auth import client_authentication
from sso_broker.sso.discovery import DiscoveryError, ProviderMetadata, call_provider
from sso_broker.sso.identity import choose_account, not_provisioned
from sso_broker.sso.pkce import S256, is_challenge, s256_code_challenge
from sso_broker.sso.redirects import safe_return_to
from sso_broker.users.repository import normalize_email

logger = logging.getLogger(__name__)

SCOPES = "openid profile email offline_access"
PROMPTS = frozenset({"login", "none", "consent", "select_account"})
MAX_HINT = 256
MAX_TOKEN_RESPONSE = 64 * 1024

TENANT_MOVED = Actionable(
    "tenant_changed",
    "The domain in base_url now belongs to another Entra tenant than the one this provider "
    "signed users in from: if that is intended, paste the new Directory (tenant) ID as "
    "base_url; otherwise someone has taken the domain over.",
)


def not_answering(adapter: Adapter, breakers: Breakers) -> Actionable:
    """``last_error`` of a provider whose circuit breaker opened (``breaker.py``)."""
    return Actionable(
        "idp_not_answering",
        f"The identity provider ({adapter.default_display_name}) is not answering: "
        f"{breakers.failures} calls to it in a row timed out, could not connect or were "
        "answered with a server error (5xx). Its sign-ins fail at once (idp_error) while it "
        f"does not answer, and one is let through every {breakers.open_seconds:g} s to try "
        "again; the first that gets an answer ends this. Check the provider's status page, "
        "and that this service can reach it.",
    )


@dataclass(frozen=True, slots=True)
class InitiateResult:
    """Where an initiate sends the browser: the provider, with ``login`` to seal into its
    cookie, or (``login`` None) the frontend's start page to fetch a PKCE challenge first."""

    location: str
    login: state.LoginState | None


@dataclass(frozen=True, slots=True)
class CallbackParams:
    state: str | None
    code: str | None
    error: str | None
    error_description: str | None
    iss: str | None


def callback_url(context: AppContext, provider_id: uuid.UUID) -> str:
    return f"{context.settings.public_base}/sso/{provider_id}/callback"


def credentials(provider: SSOProvider) -> str:
    """The client ID of an enabled provider with its credential: a client secret, or (only
    the token request looks them up: ``client_auth.py``) a certificate."""
    if (
        not provider.enabled
        or not provider.client_id
        or (provider.client_auth_method == CLIENT_SECRET and not provider.client_secret_encrypted)
    ):
        raise SignInError(SignInErrorCode.PROVIDER_DISABLED, "the provider is not enabled")
    return provider.client_id


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
    try:
        credentials(provider)
    except SignInError as e:
        e.provider_type = provider.type  # for the failure's log line (browser.py)
        raise
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


def adapter_of(context: AppContext, provider: SSOProvider) -> Adapter:
    return context.adapters[provider.type]


def breaker_of(context: AppContext, provider: SSOProvider) -> Breaker:
    return context.breakers.of(provider.id, provider.type)


async def provider_metadata(
    context: AppContext, provider: SSOProvider, *, record: bool = True
) -> ProviderMetadata:
    """The provider's metadata; a failure an administrator can fix becomes ``last_error``
    unless ``record`` is off (an initiate writes nothing)."""
    adapter = adapter_of(context, provider)
    try:
        metadata = await context.directory.metadata(
            adapter, provider.base_url, breaker_of(context, provider)
        )
    except CircuitOpen as e:
        raise SignInError(SignInErrorCode.IDP_ERROR, f"discovery failed: {e}") from e
    except DiscoveryError as e:
        actionable = adapter.discovery_failed(e.status, e.provider_code)
        if record and actionable is not None and not e.cached:
            await record_error(context, provider.id, actionable, e.provider_code)
        raise SignInError(SignInErrorCode.IDP_ERROR, f"discovery failed: {e.reason}") from e
    pin = adapter.pin_of(provider.base_url, metadata.tenant_id)
    if pin is not None and provider.pinned_tenant is not None and pin != provider.pinned_tenant:
        if record:
            await record_error(context, provider.id, TENANT_MOVED, None)
        raise SignInError(
            SignInErrorCode.IDP_ERROR, "the domain's metadata names another tenant than its pin"
        )
    return metadata


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
    code_challenge: str | None,
    code_challenge_method: str | None,
    return_to: str | None,
    login_hint: str | None,
    domain_hint: str | None,
    prompt: str | None,
) -> InitiateResult:
    """Builds the redirect to the provider. It writes nothing to the database, failed or
    not: the state is sealed, and an anonymous request must not be able to fill the audit
    log or hold a pooled connection while the provider is asked (README, *Security model*).
    A failure is logged; the callback and the connection test record what an administrator
    must fix.

    The login code the sign-in ends with is bound to the frontend's PKCE challenge, so only
    the browser holding its verifier can use it. Without one (the My Apps tile, a bookmark),
    the browser is sent to the frontend's start page, which makes one and comes back."""
    provider = await load_provider(context, provider_id)
    try:
        return await _initiate(
            context, provider, code_challenge=code_challenge,
            code_challenge_method=code_challenge_method, return_to=return_to,
            login_hint=login_hint, domain_hint=domain_hint, prompt=prompt,
        )  # fmt: skip
    except SignInError as e:
        e.provider_type = provider.type
        raise


async def _initiate(
    context: AppContext,
    provider: SSOProvider,
    *,
    code_challenge: str | None,
    code_challenge_method: str | None,
    return_to: str | None,
    login_hint: str | None,
    domain_hint: str | None,
    prompt: str | None,
) -> InitiateResult:
    provider_id = provider.id
    safe_path = safe_return_to(return_to)
    if return_to and safe_path is None:
        logger.info("dropped an unsafe return_to", extra={"provider_id": str(provider_id)})
    if code_challenge is None and code_challenge_method is None:
        return InitiateResult(_start_page(context, provider.id, safe_path, login_hint), None)
    if code_challenge is None or code_challenge_method != S256 or not is_challenge(code_challenge):
        raise SignInError(
            SignInErrorCode.INVALID_REQUEST,
            "code_challenge must be an S256 challenge (43 characters of URL-safe base64) with "
            "code_challenge_method=S256",
        )
    metadata = await provider_metadata(context, provider, record=False)
    login = state.LoginState.new(provider.id, safe_path, code_challenge)
    optional = {
        "login_hint": _hint(login_hint),
        "prompt": prompt if prompt in PROMPTS else None,
        **adapter_of(context, provider).authorization_params(domain_hint=_hint(domain_hint)),
    }
    # state, nonce and the challenge are URL-safe base64 already: nothing to encode.
    prefix = _authorization_prefix(
        metadata.authorization_endpoint,
        credentials(provider),
        callback_url(context, provider.id),
    )
    challenge = s256_code_challenge(login.code_verifier)
    url = f"{prefix}&state={login.state}&nonce={login.nonce}&code_challenge={challenge}"
    extra = {name: value for name, value in optional.items() if value is not None}
    if extra:
        url += "&" + urlencode(extra)
    return InitiateResult(url, login)


def _start_page(
    context: AppContext, provider_id: uuid.UUID, return_to: str | None, login_hint: str | None
) -> str:
    """``SIGN_IN_START_URL?provider_id=…`` with the safe ``return_to`` and ``login_hint``."""
    query = {"provider_id": str(provider_id)}
    if return_to:
        query["return_to"] = return_to
    hint = _hint(login_hint)
    if hint:
        query["login_hint"] = hint
    target = context.settings.sign_in_start
    return f"{target}{'&' if '?' in target else '?'}{urlencode(query)}"


# The token request's body, as authlib made it: one function was all the service used of it
# besides PKCE's challenge (``pkce.py``), and importing it cost each worker 0.4 MB (README,
# *Performance*).


def token_request_body(*, code: str, redirect_uri: str, **params: str) -> bytes:
    """An authorization code's token request (RFC 6749, 4.1.3), form-encoded: grant_type,
    redirect_uri, code, then ``params`` in their order, leaving out empty ones."""
    fields = [("redirect_uri", redirect_uri), ("code", code), *params.items()]
    return urlencode(
        [("grant_type", "authorization_code"), *((name, value) for name, value in fields if value)]
    ).encode("ascii")


async def record_error(
    context: AppContext, provider_id: uuid.UUID, actionable: Actionable, provider_code: str | None
) -> None:
    """Stores an actionable failure as the provider's ``last_error`` (its own transaction)."""
    code, message = actionable.code, actionable.message
    logger.warning(
        "sign-in failure an administrator must fix",
        extra={
            "provider_id": str(provider_id),
            "provider_code": provider_code,
            "last_error": code,
        },
    )
    async with session_scope(context.sessionmaker) as session:
        provider = await session.get(SSOProvider, provider_id)
        if provider is not None:
            provider.last_error = {"code": code, "message": message, "at": utcnow().isoformat()}


def _check_idp_error(adapter: Adapter, params: CallbackParams) -> None:
    """Maps an error response from the provider to our code, its own code in the log."""
    if params.error is None:
        return
    provider_code = adapter.error_code(params.error_description)
    if adapter.user_refused(params.error, provider_code):
        code = SignInErrorCode.ACCESS_DENIED
    else:
        code = SignInErrorCode.IDP_ERROR
    raise SignInError(
        code,
        f"{adapter.name} answered {params.error[:64]!r} ({provider_code or 'no provider code'})",
    )


def _check_iss(params: CallbackParams, metadata: ProviderMetadata) -> None:
    """RFC 9207: the response names its issuer when the provider says it will (mix-up
    defence)."""
    if params.iss is not None and params.iss != metadata.issuer:
        raise SignInError(SignInErrorCode.IDP_ERROR, "the authorization response's iss is wrong")
    if params.iss is None and metadata.iss_parameter_supported:
        raise SignInError(SignInErrorCode.IDP_ERROR, "the authorization response lacks iss")


async def post_to_token_endpoint(
    context: AppContext,
    metadata: ProviderMetadata,
    body: bytes,
    headers: dict[str, str],
    breaker: Breaker | None = None,
) -> tuple[int, bytes]:
    """One form POST to the provider's token endpoint within the call's total deadline,
    through its circuit breaker when given (:class:`CircuitOpen` at once while it is open);
    its status and body (at most MAX_TOKEN_RESPONSE bytes)."""
    return await call_provider(
        context.http, metadata.provider_type, "token", "POST", metadata.token_endpoint,
        limit=MAX_TOKEN_RESPONSE, content=body, headers=headers, breaker=breaker,
    )  # fmt: skip


async def _exchange_code(
    context: AppContext,
    provider: SSOProvider,
    metadata: ProviderMetadata,
    code: str,
    login: state.LoginState,
    breaker: Breaker,
) -> dict[str, Any]:
    """The token request: the PKCE verifier, and the provider's chosen client
    authentication (``client_auth.py``), through the provider's ``breaker``."""
    client_id = credentials(provider)
    adapter = adapter_of(context, provider)
    auth = await client_authentication(context, provider, client_id, metadata)
    if isinstance(auth, Actionable):
        await record_error(context, provider.id, auth, None)
        raise SignInError(SignInErrorCode.TOKEN_EXCHANGE_FAILED, auth.code)
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "application/json",
        **auth.headers,
    }
    body = token_request_body(
        code=code,
        redirect_uri=callback_url(context, provider.id),
        **auth.fields,
        code_verifier=login.code_verifier,
    )
    try:
        status, answer = await post_to_token_endpoint(context, metadata, body, headers, breaker)
    except CircuitOpen as e:
        raise SignInError(SignInErrorCode.IDP_ERROR, f"token endpoint not called: {e}") from e
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
        error = document.get("error")
        provider_code = adapter.error_code(
            document.get("error_codes"), document.get("error_description")
        )
        actionable = adapter.actionable(
            error if isinstance(error, str) else None, provider_code, status
        )
        if actionable is not None:
            await record_error(context, provider.id, actionable, provider_code)
        raise SignInError(
            SignInErrorCode.TOKEN_EXCHANGE_FAILED,
            f"token endpoint answered {status} "
            f"{str(error)[:64]!r} ({provider_code or 'no provider code'})",
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
    opened: state.LoginState | None = None,
) -> str:
    """Finishes a sign-in and returns the frontend URL with a one-time login code.

    ``opened`` is the login state already opened from exactly this ``state`` and cookie in
    this request (``state.opened_before``), which spares opening it again.

    The state is consumed in its own transaction first, so a failure later on (a rejected
    code, a bad token) still leaves it used: an authorization response works once.
    """
    provider: SSOProvider | None = None
    try:
        provider = await cached_provider(context, provider_id)
        if provider is None:
            raise SignInError(SignInErrorCode.PROVIDER_NOT_FOUND, f"no provider {provider_id}")
        credentials(provider)
        login = (
            opened
            if opened is not None and opened.provider_id == provider_id
            else state.open_state(
                context.sealer, sealed_state, state=params.state, provider_id=provider_id
            )
        )
        # One statement, committed on its own before anything else can fail.
        await state.consume(context.fast, login)
        target = await _complete(context, provider, params, login)
    except SignInError as e:
        if provider is not None:  # an unknown provider belongs to no company's audit log
            e.provider_type = provider.type
            await _report_not_answering(context, provider)
            await record_failure(context, provider, e, stage="callback")
        raise
    count_sign_in(provider.type, SUCCEEDED)
    return target


async def _report_not_answering(context: AppContext, provider: SSOProvider) -> None:
    """Says in the provider's ``last_error`` that its breaker opened, once per opening (the
    first failed callback after it does); a failure to write it is logged, never allowed to
    replace the sign-in's own error."""
    breaker = context.breakers.peek(provider.id)
    if breaker is None or not breaker.take_unreported():
        return
    try:
        actionable = not_answering(adapter_of(context, provider), context.breakers)
        await record_error(context, provider.id, actionable, None)
    except Exception as e:
        breaker.unreported = True  # the next failed callback tries again
        logger.warning(
            "could not record a provider's last_error", extra={"error": type(e).__name__}
        )


async def _complete(
    context: AppContext,
    provider: SSOProvider,
    params: CallbackParams,
    login: state.LoginState,
) -> str:
    provider_id = provider.id
    adapter = adapter_of(context, provider)
    metadata = await provider_metadata(context, provider)
    # RFC 9207 before anything else, error responses included: an answer that names another
    # issuer is a mix-up, whatever it says.
    _check_iss(params, metadata)
    _check_idp_error(adapter, params)
    if not params.code or len(params.code) > 8192:
        raise SignInError(SignInErrorCode.IDP_ERROR, "the authorization response has no code")
    breaker = breaker_of(context, provider)
    tokens = await _exchange_code(context, provider, metadata, params.code, login, breaker)

    async def signing_key(metadata: ProviderMetadata, kid: str | None) -> jwt.PyJWK:
        return await context.directory.signing_key(metadata, kid, breaker)

    claims = await id_token.validate(
        tokens["id_token"],
        metadata=metadata,
        client_id=credentials(provider),
        nonce=login.nonce,
        access_token=tokens.get("access_token")
        if isinstance(tokens.get("access_token"), str)
        else None,
        signing_key=signing_key,
        adapter=adapter,
    )

    code = sessions_service.new_secret_token()
    kept = context.box.encrypt(tokens["id_token"]) if adapter.logout_needs_id_token else None
    new = await _write_sign_in(context, provider, claims, code, login.client_challenge, kept)
    pin = adapter.pin_of(provider.base_url, metadata.tenant_id)
    if pin is not None and provider.pinned_tenant is None:
        await _pin(context, provider, pin)
    logger.info(
        "sign-in succeeded",
        extra={
            "provider_id": str(provider_id),
            "user_id": str(new.account.id),
            "session_id": str(new.session_id),
            "idp_subject": claims.subject,
        },
    )
    query = {"code": code}
    if login.return_to:
        query["return_to"] = login.return_to
    target = context.settings.sign_in_complete
    return f"{target}{'&' if '?' in target else '?'}{urlencode(query)}"


async def _pin(context: AppContext, provider: SSOProvider, tenant: str) -> None:
    """Pins a domain provider to the tenant of its first successful sign-in (once: a
    concurrent first sign-in that pinned first wins, and a changed base_url is not pinned)."""
    async with session_scope(context.sessionmaker) as session:
        await session.execute(
            update(SSOProvider)
            .where(
                SSOProvider.id == provider.id,
                SSOProvider.base_url == provider.base_url,
                SSOProvider.pinned_tenant.is_(None),
            )
            .values(pinned_tenant=tenant)
        )


async def _write_sign_in(
    context: AppContext,
    provider: SSOProvider,
    claims: id_token.IdTokenClaims,
    code: str,
    code_challenge: str,
    id_token_encrypted: str | None,
) -> repository.NewSignIn:
    """Resolves the account and writes the session, login code and audit event: for an
    identity already linked, one statement (one transaction on SQLite), which writes only
    when the link is good as ``choose_account`` judges it; a first sign-in then writes its
    link with the rest in a second (``repository.py``)."""
    email = normalize_email(claims.email) if claims.email else None
    draft = _draft(context, provider, claims, code, code_challenge, id_token_encrypted)
    found, written = await context.fast.sign_in(draft, email)
    if found is None or not found.enabled:
        raise SignInError(SignInErrorCode.PROVIDER_DISABLED, "disabled during the sign-in")
    account, link = choose_account(found, provider, claims)
    new = draft.for_account(account, link=link)
    if written:
        return new
    try:
        # It signs people in again: the provider's last failure is history.
        await context.fast.write_sign_in(new, clear_last_error=found.last_error is not None)
    except LinkConflict as e:
        # The account is already linked to another identity of this provider (or a
        # concurrent first sign-in linked it a moment ago): it must not be taken over.
        raise not_provisioned("the user is already linked to another identity", claims) from e
    except NoLongerServed as e:
        # An administrator disabled the provider, or moved the user off it, after the
        # resolution: the sign-in ends as it would have had the change come first.
        if not e.provider_enabled:
            raise SignInError(
                SignInErrorCode.PROVIDER_DISABLED, "disabled during the sign-in"
            ) from e
        raise not_provisioned(
            "the user was moved off the provider during the sign-in", claims
        ) from e
    return new


def _draft(
    context: AppContext,
    provider: SSOProvider,
    claims: id_token.IdTokenClaims,
    code: str,
    code_challenge: str,
    id_token_encrypted: str | None,
) -> repository.SignInDraft:
    """The rows a sign-in writes, but for the account."""
    now = utcnow()
    return repository.SignInDraft(
        provider_id=provider.id,
        namespace=claims.namespace,
        subject=claims.subject,
        session_id=uuid.uuid4(),
        idp_sid=claims.sid,
        login_hint=claims.login_hint,
        id_token_encrypted=id_token_encrypted,
        now=now,
        expires_at=now + timedelta(seconds=context.settings.session_max_age),
        code_hash=token_hash(code),
        code_challenge=code_challenge,
        code_expires_at=now + sessions_service.LOGIN_CODE_TTL,
        event_type=EventType.SIGN_IN_SUCCEEDED.value,
        audit_event_id=uuid.uuid4(),
    )
