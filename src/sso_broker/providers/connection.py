"""The connection test (``POST /api/v1/sso-providers/{id}/test``): the provider's metadata,
signing keys and client credentials checked against the live identity provider, each with a
verdict an administrator can act on (README, *Keeping SSO healthy*).

The most common set-up mistake is a wrong client ID or secret that nobody notices until the
first user fails; this finds it before the provider is enabled. The credentials are proven
with a ``client_credentials`` request to the token endpoint, which needs no API permission:
a token, or a refusal of that grant after the client was authenticated
(``unauthorized_client`` and the like), proves them good; ``invalid_client`` (or Entra's
AADSTS7000215, 7000222, 700016) proves them bad (``Adapter.credentials_verdict``).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import update

from sso_broker.database import session_scope, utcnow
from sso_broker.deps import AppContext
from sso_broker.errors import RateLimited
from sso_broker.http import ResponseTooLarge, TransportError
from sso_broker.idp import Adapter
from sso_broker.idp.base import Actionable
from sso_broker.metrics import RATE_LIMITED
from sso_broker.providers.models import SSOProvider
from sso_broker.ratelimit import Limit, take
from sso_broker.sso.client_auth import client_authentication
from sso_broker.sso.discovery import DiscoveryError, ProviderMetadata, overall_deadline
from sso_broker.sso.service import TENANT_MOVED, post_to_token_endpoint

METADATA, SIGNING_KEYS, CLIENT_CREDENTIALS = "metadata", "signing_keys", "client_credentials"
CHECKS = (METADATA, SIGNING_KEYS, CLIENT_CREDENTIALS)
# Tests of one provider per minute, every replica together: each asks the provider three
# times, and an administrator clicking away must not get the client throttled there.
TESTS_PER_MINUTE = 6
COMPANY_TESTS_PER_MINUTE = 30


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    code: str
    detail: str
    # What a failure makes the provider's last_error; None for a pass.
    actionable: Actionable | None = None


def _failed(name: str, actionable: Actionable) -> Check:
    return Check(name, False, actionable.code, actionable.message, actionable)


async def check_rate(context: AppContext, provider: SSOProvider) -> None:
    """Refuses a test beyond :data:`TESTS_PER_MINUTE` for this provider, or
    :data:`COMPANY_TESTS_PER_MINUTE` for all of its company's (``429``): many providers, or
    one deleted and made again, must not multiply what the service asks of a host. Counted
    as every rate limit is (``ratelimit.take``), store outage included."""
    if not context.settings.rate_limit_enabled:
        return
    retry_after = await take(
        context,
        lambda window: [
            Limit(f"provider-test:{provider.id}:{window}", TESTS_PER_MINUTE),
            Limit(
                f"provider-test:company:{provider.company_id}:{window}", COMPANY_TESTS_PER_MINUTE
            ),
        ],
    )
    if retry_after is not None:
        RATE_LIMITED.labels("connection_test").inc()
        raise RateLimited(
            f"Too many connection tests this minute (at most {TESTS_PER_MINUTE} of a provider, "
            f"{COMPANY_TESTS_PER_MINUTE} of a company's); test again in {retry_after} seconds.",
            retry_after=retry_after,
        )


async def test(context: AppContext, provider: SSOProvider) -> list[Check]:
    """Runs the three checks in order within one total deadline; a check that could not
    run (its predecessor failed, or time ran out) fails as ``skipped`` or ``timeout``."""
    checks: list[Check] = []
    # Three calls to the provider, each bounded by the HTTP timeout, and no more in all.
    deadline = 3 * overall_deadline(context.http)
    try:
        async with asyncio.timeout(deadline):
            await _run(context, provider, checks)
    except TimeoutError:
        pass
    for name in CHECKS[len(checks) :]:
        # Only the metadata's failure stops the others; anything else missing ran out of time.
        timed_out = not any(check.name == METADATA and not check.ok for check in checks)
        checks.append(
            _failed(
                name,
                Actionable(
                    "timeout",
                    f"The identity provider did not answer within {deadline:g} seconds: "
                    "try again, and check that it can be reached from this service.",
                ),
            )
            if timed_out
            else Check(name, False, "skipped", "Not checked: fix the check above first.")
        )
    return checks


async def _run(context: AppContext, provider: SSOProvider, checks: list[Check]) -> None:
    adapter = context.adapters[provider.type]
    metadata_check, metadata = await _metadata(context, adapter, provider)
    checks.append(metadata_check)
    if metadata is None:
        return
    checks.append(await _signing_keys(context, metadata))
    checks.append(await _client_credentials(context, adapter, provider, metadata))


async def _metadata(
    context: AppContext, adapter: Adapter, provider: SSOProvider
) -> tuple[Check, ProviderMetadata | None]:
    try:
        metadata = await context.directory.fetch_metadata(adapter, provider.base_url)
    except DiscoveryError as e:
        actionable = adapter.discovery_failed(e.status, e.provider_code) or Actionable(
            "metadata_unavailable",
            f"The identity provider's OpenID metadata could not be used ({e.reason}): check "
            "the base_url you pasted, and that the provider can be reached from this service.",
        )
        return _failed(METADATA, actionable), None
    pin = adapter.pin_of(provider.base_url, metadata.tenant_id)
    if pin is not None and provider.pinned_tenant is not None and pin != provider.pinned_tenant:
        return _failed(METADATA, TENANT_MOVED), None
    return Check(
        METADATA, True, "ok", f"The metadata names the issuer {metadata.issuer}."
    ), metadata


async def _signing_keys(context: AppContext, metadata: ProviderMetadata) -> Check:
    try:
        keys = await context.directory.fetch_keys(metadata)
    except DiscoveryError as e:
        return _failed(
            SIGNING_KEYS,
            Actionable(
                "signing_keys_unavailable",
                f"The identity provider's signing keys could not be used ({e.reason}); "
                "ID tokens cannot be verified until it publishes an RS256 key.",
            ),
        )
    count = len(keys)
    return Check(
        SIGNING_KEYS,
        True,
        "ok",
        f"The key set holds {count} usable RS256 signing key{'s' if count != 1 else ''}.",
    )


async def _client_credentials(
    context: AppContext, adapter: Adapter, provider: SSOProvider, metadata: ProviderMetadata
) -> Check:
    if not provider.client_id:
        return _failed(
            CLIENT_CREDENTIALS,
            Actionable(
                "credentials_missing",
                f"Paste the client ID and a client secret from {adapter.console} "
                "(client_id and client_secret), or make a certificate.",
            ),
        )
    auth = await client_authentication(context, provider, provider.client_id, metadata)
    if isinstance(auth, Actionable):
        return _failed(CLIENT_CREDENTIALS, auth)
    fields = [("grant_type", "client_credentials")]
    fields += adapter.credentials_test_params(provider.client_id).items()
    fields += auth.fields.items()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "application/json",
        **auth.headers,
    }
    try:
        body = urlencode(fields).encode("ascii")
        status, answer = await post_to_token_endpoint(context, metadata, body, headers)
    except (TransportError, TimeoutError, ResponseTooLarge) as e:
        return _unavailable(f"could not be reached ({type(e).__name__})")
    document = _json_object(answer)
    if document is None:
        return _unavailable(f"answered {status} without a JSON object")
    error = document.get("error") if isinstance(document.get("error"), str) else None
    provider_code = adapter.error_code(
        document.get("error_codes"), document.get("error_description")
    )
    if status >= 500:
        return _unavailable(f"answered {status}")
    if status == 200 and error is None and not isinstance(document.get("access_token"), str):
        return _unavailable("answered 200 without an access token")
    verdict = adapter.credentials_verdict(status, error, provider_code)
    # The provider's own words, bounded: a hostile one must not fill the answer (as the
    # sign-in's own messages cut them).
    shown = (error or str(status))[:64]
    said = f"{shown!r}{f', {provider_code}' if provider_code else ''}"
    if verdict.proven is True:
        how = "issued a token" if error is None else f"refused only the grant itself ({said})"
        what = "certificate" if "client_assertion" in auth.fields else "secret"
        return Check(
            CLIENT_CREDENTIALS,
            True,
            "ok",
            f"The token endpoint accepted the client ID and {what}: it {how}.",
        )
    if verdict.proven is False:
        assert verdict.actionable is not None  # noqa: S101 - a refutation says what to fix
        return _failed(CLIENT_CREDENTIALS, verdict.actionable)
    return Check(
        CLIENT_CREDENTIALS,
        True,
        "not_verified",
        f"The token endpoint refused the test before it checked the credentials ({said}): "
        "they are checked at the first sign-in.",
    )


def _unavailable(what: str) -> Check:
    return _failed(
        CLIENT_CREDENTIALS,
        Actionable(
            "token_endpoint_unavailable",
            f"The identity provider's token endpoint {what}: sign-ins fail while it does; "
            "try again later.",
        ),
    )


def _json_object(answer: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(answer)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


async def record(context: AppContext, provider_id: uuid.UUID, checks: list[Check]) -> None:
    """A failure becomes the provider's last_error (the first failing check's); a full pass
    clears it. A test that proved nothing either way (``not_verified``) leaves it as it is."""
    failed = next((check.actionable for check in checks if check.actionable is not None), None)
    if failed is None and any(check.code != "ok" for check in checks):
        return
    last_error = (
        None
        if failed is None
        else {"code": failed.code, "message": failed.message, "at": utcnow().isoformat()}
    )
    async with session_scope(context.sessionmaker) as session:
        await session.execute(
            update(SSOProvider).where(SSOProvider.id == provider_id).values(last_error=last_error)
        )
