"""Entra discovery (README, *Setting up Entra ID*): which metadata documents are accepted,
and the caches.

``TenantDirectory`` talks to the respx-mocked fake tenant; no database is involved.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from sso_broker.errors import SignInError, SignInErrorCode
from sso_broker.http import IdentityProviderClient
from sso_broker.idp.entra import EntraAdapter, aadsts_code
from sso_broker.sso.discovery import (
    JWKS_REFETCH_INTERVAL,
    JWKS_TTL,
    MAX_DOCUMENT_BYTES,
    METADATA_RETRY_AFTER_FAILURE,
    METADATA_TTL,
    DiscoveryError,
)
from tests.fixtures.entra import AUTHORITY, TENANT_DOMAIN, TENANT_ID, FakeEntra
from tests.sso.conftest import FakeClock, TenantDirectory

OTHER_TENANT = "0d2e1c3b-5a4f-4e6d-8c7b-1a2b3c4d5e6f"
CONSUMERS = EntraAdapter.CONSUMER_TENANT_ID
ISSUER = f"{AUTHORITY}/{TENANT_ID}/v2.0"


async def refused(directory: TenantDirectory, tenant: str, reason: str) -> DiscoveryError:
    with pytest.raises(DiscoveryError) as caught:
        await directory.metadata(tenant)
    assert reason in caught.value.reason, caught.value.reason
    return caught.value


# ---------------------------------------------------------------------------------------------
# Accepted documents
# ---------------------------------------------------------------------------------------------


async def test_metadata_by_tenant_id(directory: TenantDirectory, entra: FakeEntra) -> None:
    metadata = await directory.metadata(TENANT_ID)
    assert metadata.issuer == ISSUER == entra.issuer
    assert metadata.tenant_id == TENANT_ID
    assert metadata.authorization_endpoint == entra.authorization_endpoint
    assert metadata.token_endpoint == entra.token_endpoint
    assert metadata.jwks_uri == entra.jwks_uri
    assert metadata.end_session_endpoint == entra.end_session_endpoint
    assert metadata.iss_parameter_supported is False
    assert entra.discovery_calls == 1


async def test_metadata_by_verified_domain_yields_the_tenant_guid(
    directory: TenantDirectory, entra: FakeEntra
) -> None:
    metadata = await directory.metadata(TENANT_DOMAIN)
    assert metadata.tenant_id == TENANT_ID
    assert metadata.issuer == ISSUER
    assert metadata.token_endpoint == entra.token_endpoint
    assert entra.discovery_calls == 1


async def test_the_tenant_guid_is_lower_cased(directory: TenantDirectory, entra: FakeEntra) -> None:
    entra.discovery["issuer"] = f"{AUTHORITY}/{TENANT_ID.upper()}/v2.0"
    metadata = await directory.metadata(TENANT_ID)
    assert metadata.tenant_id == TENANT_ID
    assert metadata.issuer == f"{AUTHORITY}/{TENANT_ID.upper()}/v2.0"  # exactly as published


async def test_a_document_without_end_session_endpoint_is_accepted(
    directory: TenantDirectory, entra: FakeEntra
) -> None:
    del entra.discovery["end_session_endpoint"]
    assert (await directory.metadata(TENANT_ID)).end_session_endpoint is None


async def test_an_authority_with_a_trailing_slash(entra: FakeEntra) -> None:
    async with IdentityProviderClient() as http:
        directory = TenantDirectory(http, AUTHORITY + "/")
        assert directory.discovery_url(TENANT_ID) == entra.discovery_url
        assert (await directory.metadata(TENANT_ID)).issuer == ISSUER


def test_the_discovery_url_escapes_the_tenant() -> None:
    directory = TenantDirectory(IdentityProviderClient(), AUTHORITY)
    assert directory.discovery_url("a/../b?x#y") == (
        f"{AUTHORITY}/a%2F..%2Fb%3Fx%23y/v2.0/.well-known/openid-configuration"
    )


@pytest.mark.parametrize(
    ("advertised", "expected"),
    [(True, True), (False, False), ("true", False), (None, False)],
)
async def test_iss_parameter_supported_reflects_the_document(
    directory: TenantDirectory, entra: FakeEntra, advertised: Any, expected: bool
) -> None:
    if advertised is not None:
        entra.discovery["authorization_response_iss_parameter_supported"] = advertised
    assert (await directory.metadata(TENANT_ID)).iss_parameter_supported is expected


# ---------------------------------------------------------------------------------------------
# Refused documents
# ---------------------------------------------------------------------------------------------


async def test_an_issuer_naming_another_tenant_than_the_configured_guid_is_refused(
    directory: TenantDirectory, entra: FakeEntra
) -> None:
    entra.discovery["issuer"] = f"{AUTHORITY}/{OTHER_TENANT}/v2.0"
    await refused(directory, TENANT_ID, "another tenant than the one configured")


@pytest.mark.parametrize(
    "issuer",
    [
        f"https://sts.windows.net/{TENANT_ID}/",
        f"{AUTHORITY}/{TENANT_ID}/v2.0/",
        f"{AUTHORITY}/{TENANT_ID}",
        f"{AUTHORITY}/{TENANT_ID}/v1.0",
        f"{AUTHORITY}/{TENANT_ID}/extra/v2.0",
        f"{AUTHORITY}//{TENANT_ID}/v2.0",
        f"{AUTHORITY}/{{tenantid}}/v2.0",
        f"{AUTHORITY}/common/v2.0",
        f"{AUTHORITY}/{TENANT_DOMAIN}/v2.0",
        f"{AUTHORITY}.evil.test/{TENANT_ID}/v2.0",
        f"https://evil.test/{TENANT_ID}/v2.0",
        f"http://login.entra.test/{TENANT_ID}/v2.0",
        f"{AUTHORITY}/v2.0",
        "",
        None,
        42,
        [ISSUER],
    ],
)
async def test_an_issuer_not_of_the_entra_v2_form_is_refused(
    directory: TenantDirectory, entra: FakeEntra, issuer: Any
) -> None:
    if issuer is None:
        del entra.discovery["issuer"]
    else:
        entra.discovery["issuer"] = issuer
    for tenant in (TENANT_ID, TENANT_DOMAIN):
        with pytest.raises(DiscoveryError, match="issuer"):
            await directory.metadata(tenant)


async def test_the_consumers_tenant_is_refused(
    entra: FakeEntra, directory: TenantDirectory
) -> None:
    FakeEntra(entra.router, tenant_id=CONSUMERS, domain=None)
    await refused(directory, CONSUMERS, "personal-accounts tenant")


async def test_a_domain_resolving_to_the_consumers_tenant_is_refused(
    directory: TenantDirectory, entra: FakeEntra
) -> None:
    entra.discovery["issuer"] = f"{AUTHORITY}/{CONSUMERS.upper()}/v2.0"
    await refused(directory, TENANT_DOMAIN, "personal-accounts tenant")


@pytest.mark.parametrize(
    "endpoint", ["authorization_endpoint", "token_endpoint", "jwks_uri", "end_session_endpoint"]
)
@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.test",
        "http://login.entra.test",
        "https://login.entra.test:8443",
        "https://login.entra.test@evil.test",
        "https://login.entra.test.evil.test",
        "https://LOGIN.ENTRA.TEST.evil.test",
        "//evil.test",
        "",
    ],
)
async def test_an_endpoint_off_the_authority_is_refused(
    directory: TenantDirectory, entra: FakeEntra, endpoint: str, origin: str
) -> None:
    entra.discovery[endpoint] = f"{origin}/{TENANT_ID}/oauth2/v2.0/whatever"
    await refused(directory, TENANT_ID, f"{endpoint} is missing or not on the provider's origin")


@pytest.mark.parametrize("endpoint", ["authorization_endpoint", "token_endpoint", "jwks_uri"])
@pytest.mark.parametrize("value", [None, 42, ["https://login.entra.test/x"]])
async def test_a_missing_or_malformed_endpoint_is_refused(
    directory: TenantDirectory, entra: FakeEntra, endpoint: str, value: Any
) -> None:
    if value is None:
        del entra.discovery[endpoint]
    else:
        entra.discovery[endpoint] = value
    await refused(directory, TENANT_ID, f"{endpoint} is missing or not on the provider's origin")


@pytest.mark.parametrize("algorithms", [["RS384"], ["PS256", "ES256"], ["none"], ["HS256"], []])
async def test_signing_algorithms_without_rs256_are_refused(
    directory: TenantDirectory, entra: FakeEntra, algorithms: list[str]
) -> None:
    entra.discovery["id_token_signing_alg_values_supported"] = algorithms
    await refused(directory, TENANT_ID, "RS256")


async def test_signing_algorithms_beside_rs256_are_accepted(
    directory: TenantDirectory, entra: FakeEntra
) -> None:
    # Harmless: the ID-token rules pin RS256 whatever discovery says.
    entra.discovery["id_token_signing_alg_values_supported"] = ["none", "HS256", "RS256"]
    assert (await directory.metadata(TENANT_ID)).issuer == ISSUER


# ---------------------------------------------------------------------------------------------
# Entra answering with errors, or not at all
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tenant", ["fabrikam.onmicrosoft.com", OTHER_TENANT])
async def test_an_unknown_tenant_is_aadsts90002(
    directory: TenantDirectory, entra: FakeEntra, tenant: str
) -> None:
    error = await refused(directory, tenant, "discovery answered 400")
    assert error.provider_code == "AADSTS90002"
    assert entra.discovery_calls == 0  # the catch-all answered, not the tenant


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (httpx.Response(200, text="<html>Sign in</html>"), "answered 200 without JSON"),
        (httpx.Response(200, content=b"\xff\xfe{"), "without JSON"),
        (httpx.Response(200, json=["not", "an", "object"]), "discovery answered 200"),
        (httpx.Response(500, text="Internal Server Error"), "answered 500 without JSON"),
        (httpx.Response(500, json={"error": "server_error"}), "discovery answered 500"),
        (httpx.Response(503, json={}), "discovery answered 503"),
        (httpx.Response(302, headers={"Location": "https://evil.test/"}), "302"),
        (
            httpx.Response(200, json={"padding": "x" * MAX_DOCUMENT_BYTES}),
            "oversized document",
        ),
    ],
    ids=["html", "bytes", "json list", "500 html", "500 json", "503", "redirect", "oversized"],
)
async def test_a_bad_answer_is_a_discovery_error(
    directory: TenantDirectory, entra: FakeEntra, response: httpx.Response, reason: str
) -> None:
    entra.discovery_response_override = response
    error = await refused(directory, TENANT_ID, reason)
    assert error.provider_code is None


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("connection refused"), httpx.ReadTimeout("timed out")],
    ids=["unreachable", "timeout"],
)
async def test_an_unreachable_entra_is_a_discovery_error(
    directory: TenantDirectory, entra: FakeEntra, failure: Exception
) -> None:
    entra.discovery_response_override = failure
    error = await refused(directory, TENANT_ID, "cannot reach login.entra.test")
    assert type(failure).__name__ in error.reason


async def test_a_failure_with_nothing_cached_is_repeated_then_retried_after_a_pause(
    directory: TenantDirectory, entra: FakeEntra, clock: FakeClock
) -> None:
    entra.discovery_response_override = httpx.ConnectError("down")
    first = await refused(directory, TENANT_ID, "cannot reach")
    assert first.cached is False
    entra.discovery_response_override = None
    # Within the pause the failure is repeated without asking Entra (bots cannot hammer it).
    clock.advance(METADATA_RETRY_AFTER_FAILURE - 1)
    repeated = await refused(directory, TENANT_ID, "cannot reach")
    assert repeated.cached is True
    assert entra.discovery_calls == 1
    clock.advance(1)
    assert (await directory.metadata(TENANT_ID)).issuer == ISSUER
    assert entra.discovery_calls == 2


async def test_an_unknown_tenant_keeps_its_aadsts_code_while_repeated(
    directory: TenantDirectory, entra: FakeEntra
) -> None:
    first = await refused(directory, "00000000-0000-4000-8000-0000000000aa", "answered 400")
    again = await refused(directory, "00000000-0000-4000-8000-0000000000aa", "answered 400")
    assert (first.provider_code, again.provider_code) == ("AADSTS90002", "AADSTS90002")
    assert (first.cached, again.cached) == (False, True)


# ---------------------------------------------------------------------------------------------
# The metadata cache
# ---------------------------------------------------------------------------------------------


async def test_metadata_is_cached(directory: TenantDirectory, entra: FakeEntra) -> None:
    first = await directory.metadata(TENANT_ID)
    assert await directory.metadata(TENANT_ID) is first
    assert await directory.metadata(TENANT_ID.upper()) is first  # one cache entry per tenant
    assert entra.discovery_calls == 1


async def test_concurrent_first_calls_fetch_once(
    directory: TenantDirectory, entra: FakeEntra
) -> None:
    results = await asyncio.gather(*(directory.metadata(TENANT_ID) for _ in range(10)))
    assert {id(result) for result in results} == {id(results[0])}
    assert entra.discovery_calls == 1


async def test_metadata_is_refetched_after_its_ttl(
    directory: TenantDirectory, entra: FakeEntra, clock: FakeClock
) -> None:
    await directory.metadata(TENANT_ID)
    clock.advance(METADATA_TTL - 1)
    await directory.metadata(TENANT_ID)
    assert entra.discovery_calls == 1

    entra.discovery["authorization_response_iss_parameter_supported"] = True
    clock.advance(1)
    assert (await directory.metadata(TENANT_ID)).iss_parameter_supported is True
    assert entra.discovery_calls == 2


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("down"),
        httpx.Response(500, text="Internal Server Error"),
        httpx.Response(200, json={"issuer": f"{AUTHORITY}/{OTHER_TENANT}/v2.0"}),
    ],
    ids=["unreachable", "500", "unacceptable document"],
)
async def test_stale_metadata_is_served_when_the_refetch_fails(
    directory: TenantDirectory, entra: FakeEntra, clock: FakeClock, failure: Any
) -> None:
    fresh = await directory.metadata(TENANT_ID)
    clock.advance(METADATA_TTL)
    entra.discovery_response_override = failure
    assert await directory.metadata(TENANT_ID) is fresh
    assert entra.discovery_calls == 2

    # While Entra is failing, it is asked again only every so often.
    clock.advance(METADATA_RETRY_AFTER_FAILURE - 1)
    assert await directory.metadata(TENANT_ID) is fresh
    assert entra.discovery_calls == 2
    clock.advance(1)
    assert await directory.metadata(TENANT_ID) is fresh
    assert entra.discovery_calls == 3

    # Once Entra answers again the metadata is fresh again.
    entra.discovery_response_override = None
    entra.discovery["authorization_response_iss_parameter_supported"] = True
    clock.advance(METADATA_RETRY_AFTER_FAILURE)
    renewed = await directory.metadata(TENANT_ID)
    assert renewed is not fresh
    assert renewed.iss_parameter_supported is True
    assert entra.discovery_calls == 4
    assert await directory.metadata(TENANT_ID) is renewed
    assert entra.discovery_calls == 4


async def test_guid_and_domain_share_one_key_set(
    directory: TenantDirectory, entra: FakeEntra
) -> None:
    by_guid = await directory.metadata(TENANT_ID)
    by_domain = await directory.metadata(TENANT_DOMAIN)
    assert entra.discovery_calls == 2  # cached per configured tenant
    kid = entra.signing_key.kid
    assert await directory.signing_key(by_guid, kid) is await directory.signing_key(by_domain, kid)
    assert entra.jwks_calls == 1  # cached per issuer


async def test_a_failing_key_set_is_not_asked_on_every_unknown_kid(
    directory: TenantDirectory, entra: FakeEntra, clock: FakeClock
) -> None:
    metadata = await directory.metadata(TENANT_ID)
    await directory.signing_key(metadata, entra.signing_key.kid)
    assert entra.jwks_calls == 1
    entra.jwks_response_override = httpx.ConnectError("down")
    clock.advance(JWKS_REFETCH_INTERVAL)
    for n in range(5):
        with pytest.raises(SignInError) as caught:
            await directory.signing_key(metadata, f"forged-{n}")
        assert caught.value.code is SignInErrorCode.INVALID_ID_TOKEN
    assert entra.jwks_calls == 2
    # The known key keeps working meanwhile.
    await directory.signing_key(metadata, entra.signing_key.kid)
    assert entra.jwks_calls == 2

    # An interval later, a rotated-in key is found once Entra answers again.
    entra.jwks_response_override = None
    new_kid = entra.rotate_keys(keep_old=True)
    clock.advance(JWKS_REFETCH_INTERVAL)
    await directory.signing_key(metadata, new_kid)
    assert entra.jwks_calls == 3


async def test_stale_keys_serve_with_one_attempt_per_interval_while_entra_fails(
    directory: TenantDirectory, entra: FakeEntra, clock: FakeClock
) -> None:
    metadata = await directory.metadata(TENANT_ID)
    kid = entra.signing_key.kid
    key = await directory.signing_key(metadata, kid)
    entra.jwks_response_override = httpx.Response(500, text="Internal Server Error")
    clock.advance(JWKS_TTL)
    for _ in range(5):
        assert await directory.signing_key(metadata, kid) is key
    assert entra.jwks_calls == 2
    clock.advance(JWKS_REFETCH_INTERVAL)
    assert await directory.signing_key(metadata, kid) is key
    assert entra.jwks_calls == 3
    entra.jwks_response_override = None
    clock.advance(JWKS_REFETCH_INTERVAL)
    assert await directory.signing_key(metadata, kid) is not key  # a fresh set
    assert entra.jwks_calls == 4
    await directory.signing_key(metadata, kid)
    assert entra.jwks_calls == 4


async def test_with_no_keys_cached_every_lookup_tries_again(
    directory: TenantDirectory, entra: FakeEntra
) -> None:
    # Nothing to serve meanwhile, so a passing outage must not block sign-ins for minutes.
    metadata = await directory.metadata(TENANT_ID)
    entra.jwks_response_override = httpx.ConnectError("down")
    for _ in range(2):
        with pytest.raises(SignInError) as caught:
            await directory.signing_key(metadata, entra.signing_key.kid)
        assert caught.value.code is SignInErrorCode.IDP_ERROR
    assert entra.jwks_calls == 2
    entra.jwks_response_override = None
    await directory.signing_key(metadata, entra.signing_key.kid)
    assert entra.jwks_calls == 3


# ---------------------------------------------------------------------------------------------
# aadsts_code
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (([90002], "AADSTS50105: ..."), "AADSTS90002"),
        (([7000215, 50011],), "AADSTS7000215"),
        ((None, "AADSTS700016: Application with identifier 'x' was not found."), "AADSTS700016"),
        (("Some text before AADSTS50011: The redirect URI ...",), "AADSTS50011"),
        (([], "AADSTS7000222: The provided client secret keys are expired."), "AADSTS7000222"),
        ((["90002"], "no code here"), None),
        (("AADSTS12: too short",), None),
        (("x" * 2000 + "AADSTS90002",), None),
        (("",), None),
        ((None,), None),
        ((), None),
        (({"error_codes": [90002]},), None),
    ],
)
def test_aadsts_code(texts: tuple[object, ...], expected: str | None) -> None:
    assert aadsts_code(*texts) == expected
