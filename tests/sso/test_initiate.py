"""``GET /sso/{id}/initiate``: the redirect to Entra, the login-state cookie, and its failures.

README, *Signing in*. Initiate is the hottest, most exposed route, so besides the redirect
itself these tests pin that it writes nothing to the database, and that ``return_to`` can
never send the browser anywhere but a path on the frontend.
"""

from __future__ import annotations

import logging
import uuid
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sso_broker.database import session_scope
from sso_broker.main import create_app
from sso_broker.models import Base, Company, SSOProvider
from sso_broker.sso.redirects import MAX_RETURN_TO, safe_return_to
from sso_broker.users.models import Role
from tests.conftest import Factory, make_settings
from tests.fixtures.entra import (
    CLIENT_ID,
    CLIENT_SECRET,
    TENANT_ID,
    EntraUser,
    FakeEntra,
    s256,
)
from tests.pkce import PKCE

PUBLIC = "https://sso.example.com"
FRONTEND = "https://app.example.com"
ERROR_URL = f"{FRONTEND}/sso/error"
COMPLETE_URL = f"{FRONTEND}/sso/complete"
SCOPE = "openid profile email offline_access"


# --- helpers ------------------------------------------------------------------------------


async def enabled_provider(factory: Factory, **overrides: Any) -> SSOProvider:
    company = await factory.company()
    values: dict[str, Any] = {
        "base_url": TENANT_ID,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "enabled": True,
    }
    values.update(overrides)
    return await factory.provider(company, **values)


async def provisioned(factory: Factory, provider: SSOProvider) -> EntraUser:
    """An Entra user with a matching user of the provider's company, associated with it."""
    person = EntraUser.make()
    assert person.email is not None
    company = await _company_of(factory, provider)
    await factory.user(company, email=person.email, provider=provider)
    return person


async def _company_of(factory: Factory, provider: SSOProvider) -> Company:
    async with session_scope(factory.context.sessionmaker) as session:
        company = await session.get(Company, provider.company_id)
    assert company is not None
    return company


def query_of(url: str) -> dict[str, str]:
    """The query of ``url`` as a dict, each parameter appearing exactly once."""
    parsed = parse_qs(urlsplit(url).query, keep_blank_values=True)
    for name, values in parsed.items():
        assert len(values) == 1, f"{name} appears {len(values)} times in {url}"
    return {name: values[0] for name, values in parsed.items()}


def without_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def set_cookies(response: httpx.Response) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        jar.load(header)
    return jar


def raw_set_cookie(response: httpx.Response, name: str) -> str:
    for header in response.headers.get_list("set-cookie"):
        if header.startswith(f"{name}="):
            return header
    raise AssertionError(f"no Set-Cookie for {name}: {response.headers.get_list('set-cookie')}")


def assert_error_redirect(response: httpx.Response, code: str) -> None:
    assert response.status_code == 302, response.text
    assert response.headers["location"] == f"{ERROR_URL}?error={code}"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.content == b""
    assert not response.headers.get_list("set-cookie"), "a failed initiate sets no cookie"


async def row_counts(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    async with session_scope(sessionmaker) as session:
        return {
            table.name: int(await session.scalar(select(func.count()).select_from(table)) or 0)
            for table in Base.metadata.sorted_tables
        }


async def admin_headers(factory: Factory, provider: SSOProvider) -> dict[str, str]:
    admin = await factory.user(await _company_of(factory, provider), Role.ADMINISTRATOR)
    return await factory.headers(admin)


async def finish(
    client: httpx.AsyncClient, entra: FakeEntra, location: str, user: EntraUser
) -> str:
    """Plays Entra and the browser's return; the location the callback answers with."""
    back = entra.authorize(location, user=user)
    finished = await client.get(back)
    assert finished.status_code == 302, finished.text
    return str(finished.headers["location"])


# --- the redirect to Entra ----------------------------------------------------------------


class TestInitiate:
    async def test_initiate_redirects_to_the_authorization_endpoint_with_every_parameter(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        provider = await enabled_provider(factory)
        response = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)

        assert response.status_code == 302, response.text
        location = response.headers["location"]
        assert without_query(location) == entra.authorization_endpoint
        params = query_of(location)
        assert params["response_type"] == "code"
        assert params["client_id"] == CLIENT_ID
        assert params["redirect_uri"] == f"{PUBLIC}/sso/{provider.id}/callback"
        assert params["scope"] == SCOPE
        assert params["code_challenge_method"] == "S256"
        assert len(params["state"]) >= 32
        assert len(params["nonce"]) >= 32
        assert len(params["code_challenge"]) == 43  # base64url of a SHA-256 digest
        assert params.get("response_mode", "query") == "query"
        assert not {"login_hint", "domain_hint", "prompt"} & params.keys()
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["referrer-policy"] == "no-referrer"

    async def test_code_challenge_is_s256_of_the_verifier_sent_to_the_token_endpoint(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        provider = await enabled_provider(factory)
        person = await provisioned(factory, provider)
        response = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)
        challenge = query_of(response.headers["location"])["code_challenge"]

        target = await finish(client, entra, response.headers["location"], person)

        assert without_query(target) == COMPLETE_URL
        assert len(entra.token_requests) == 1
        sent = entra.token_requests[0]
        verifier = sent["code_verifier"]
        assert 43 <= len(verifier) <= 128
        assert s256(verifier) == challenge
        # client_secret_post, with the same redirect_uri as the authorization request.
        assert sent["client_id"] == CLIENT_ID
        assert sent["client_secret"] == CLIENT_SECRET
        assert sent["grant_type"] == "authorization_code"
        assert sent["redirect_uri"] == f"{PUBLIC}/sso/{provider.id}/callback"

    async def test_every_attempt_gets_a_fresh_state_nonce_and_verifier(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        """Two attempts (two tabs) share nothing, and both can finish."""
        provider = await enabled_provider(factory)
        person = await provisioned(factory, provider)
        first = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)
        second = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)
        one, two = query_of(first.headers["location"]), query_of(second.headers["location"])
        for name in ("state", "nonce", "code_challenge"):
            assert one[name] != two[name], name
        assert set(set_cookies(first)) != set(set_cookies(second)), "one cookie per attempt"

        # Finished in the opposite order: neither attempt overwrote the other's cookie.
        assert without_query(await finish(client, entra, second.headers["location"], person)) == (
            COMPLETE_URL
        )
        assert without_query(await finish(client, entra, first.headers["location"], person)) == (
            COMPLETE_URL
        )
        verifiers = [request["code_verifier"] for request in entra.token_requests]
        assert len(set(verifiers)) == 2
        assert s256(verifiers[0]) == two["code_challenge"]
        assert s256(verifiers[1]) == one["code_challenge"]

    async def test_hints_and_a_known_prompt_pass_through(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        provider = await enabled_provider(factory)
        response = await client.get(
            f"/sso/{provider.id}/initiate",
            params={
                **PKCE,
                "login_hint": "adele@contoso.com",
                "domain_hint": "contoso.com",
                "prompt": "select_account",
            },
        )
        assert response.status_code == 302
        params = query_of(response.headers["location"])
        assert params["login_hint"] == "adele@contoso.com"
        assert params["domain_hint"] == "contoso.com"
        assert params["prompt"] == "select_account"

    @pytest.mark.parametrize("prompt", ["login", "none", "consent", "select_account"])
    async def test_each_known_prompt_passes_through(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, prompt: str
    ) -> None:
        provider = await enabled_provider(factory)
        response = await client.get(
            f"/sso/{provider.id}/initiate", params={**PKCE, "prompt": prompt}
        )
        assert query_of(response.headers["location"])["prompt"] == prompt

    @pytest.mark.parametrize(
        "prompt", ["bogus", "LOGIN", "login consent", "admin_consent", "create", "login\n"]
    )
    async def test_an_invalid_prompt_is_dropped(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, prompt: str
    ) -> None:
        provider = await enabled_provider(factory)
        response = await client.get(
            f"/sso/{provider.id}/initiate", params={**PKCE, "prompt": prompt}
        )
        assert response.status_code == 302
        assert without_query(response.headers["location"]) == entra.authorization_endpoint
        assert "prompt" not in query_of(response.headers["location"])

    async def test_an_unprintable_hint_is_dropped(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        provider = await enabled_provider(factory)
        response = await client.get(
            f"/sso/{provider.id}/initiate",
            params={
                **PKCE,
                "login_hint": "adele@contoso.com\r\nX-Injected: 1",
                "domain_hint": "ok.com",
            },
        )
        assert response.status_code == 302
        params = query_of(response.headers["location"])
        assert "login_hint" not in params
        assert params["domain_hint"] == "ok.com"

    async def test_a_domain_tenant_redirects_to_its_guid_endpoint(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        """The endpoints come from discovery, which names the tenant's GUID."""
        provider = await enabled_provider(factory, base_url="contoso.onmicrosoft.com")
        response = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)
        assert response.status_code == 302
        assert without_query(response.headers["location"]) == entra.authorization_endpoint


class TestStateCookie:
    async def test_the_cookie_is_a_host_cookie_httponly_lax_secure_for_ten_minutes(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        provider = await enabled_provider(factory)
        response = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)

        cookies = set_cookies(response)
        assert len(cookies) == 1
        ((name, morsel),) = cookies.items()
        # __Host-: the browser insists on Secure, Path=/ and no Domain, so no other host of
        # the domain can plant or shadow a login state.
        assert name.startswith("__Host-sso_login_")
        assert morsel["httponly"] is True
        assert morsel["secure"] is True
        assert morsel["samesite"].lower() == "lax"
        assert morsel["path"] == "/"
        assert morsel["max-age"] == "600"
        assert not morsel["domain"], "host-only: no Domain attribute"
        raw = raw_set_cookie(response, name).lower()
        for attribute in ("httponly", "secure", "samesite=lax", "max-age=600"):
            assert attribute in raw, raw

    async def test_the_cookie_reveals_nothing_of_the_state(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        """The verifier and nonce are sealed: neither appears in the cookie in clear."""
        provider = await enabled_provider(factory)
        person = await provisioned(factory, provider)
        response = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)
        params = query_of(response.headers["location"])
        ((_, morsel),) = set_cookies(response).items()
        await finish(client, entra, response.headers["location"], person)
        verifier = entra.token_requests[0]["code_verifier"]
        for secret in (verifier, params["nonce"], params["state"]):
            assert secret not in morsel.value
            assert secret not in unquote(morsel.value)

    async def test_the_cookie_is_not_secure_when_public_url_is_http(
        self, factory: Factory, entra: FakeEntra, app: FastAPI
    ) -> None:
        provider = await enabled_provider(factory)
        settings = make_settings(
            app.state.context.settings.database_url, public_url="http://localhost:8000"
        )
        local = create_app(settings)
        async with local.router.lifespan_context(local):
            transport = httpx.ASGITransport(app=local)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://localhost:8000"
            ) as http:
                response = await http.get(f"/sso/{provider.id}/initiate", params=PKCE)
        assert response.status_code == 302, response.text
        ((name, morsel),) = set_cookies(response).items()
        assert not morsel["secure"]
        assert name.startswith("sso_login_"), "no __Host- prefix without https"
        assert morsel["httponly"] is True
        assert query_of(response.headers["location"])["redirect_uri"] == (
            f"http://localhost:8000/sso/{provider.id}/callback"
        )


class TestCookieBudget:
    """A browser holds a bounded number of login states (README, *Security model*): a page
    that keeps opening /initiate must not grow its Cookie header past what proxies take."""

    async def test_twelve_initiates_keep_the_cookie_header_small_and_the_latest_works(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        provider = await enabled_provider(factory)
        person = await provisioned(factory, provider)
        long_path = "/reports/" + "a" * (MAX_RETURN_TO - len("/reports/"))
        for _ in range(12):
            response = await client.get(
                f"/sso/{provider.id}/initiate", params={**PKCE, "return_to": long_path}
            )
            assert response.status_code == 302, response.text
        header = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
        assert len(header) <= 4096, len(header)
        assert 1 <= len(client.cookies) <= 4
        # The latest attempt is among those kept, and completes.
        location = await finish(client, entra, response.headers["location"], person)
        assert location.startswith(COMPLETE_URL), location

    async def test_the_oldest_attempts_are_expired_first(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        provider = await enabled_provider(factory)
        names = []
        for _ in range(6):
            response = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)
            names.append(next(iter(set_cookies(response))))
        assert set(client.cookies.keys()) == set(names[-4:])

    async def test_a_return_to_over_the_cap_is_dropped(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        provider = await enabled_provider(factory)
        person = await provisioned(factory, provider)
        too_long = "/" + "a" * MAX_RETURN_TO
        response = await client.get(
            f"/sso/{provider.id}/initiate", params={**PKCE, "return_to": too_long}
        )
        location = await finish(client, entra, response.headers["location"], person)
        assert "return_to" not in location


class TestNoDatabaseWrites:
    async def test_initiate_writes_nothing_to_the_database(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        provider = await enabled_provider(factory)
        before = await row_counts(sessionmaker)
        for params in (
            {},
            {"return_to": "/reports", "login_hint": "a@b.c", "prompt": "login"},
            {"return_to": "//evil.example"},
        ):
            response = await client.get(f"/sso/{provider.id}/initiate", params={**PKCE, **params})
            assert response.status_code == 302
            assert without_query(response.headers["location"]) == entra.authorization_endpoint
        await client.get(f"/sso/{uuid.uuid4()}/initiate", params=PKCE)
        after = await row_counts(sessionmaker)
        assert after == before
        async with session_scope(sessionmaker) as session:
            stored = await session.get(SSOProvider, provider.id)
        assert stored is not None
        assert stored.last_error is None
        assert stored.updated_at == provider.updated_at


# --- failures -------------------------------------------------------------------------------


class TestInitiateFailures:
    async def test_unknown_provider_is_provider_not_found(
        self, client: httpx.AsyncClient, entra: FakeEntra
    ) -> None:
        response = await client.get(f"/sso/{uuid.uuid4()}/initiate", params=PKCE)
        assert_error_redirect(response, "provider_not_found")
        assert entra.discovery_calls == 0

    @pytest.mark.parametrize(
        "provider_id", ["not-a-uuid", "1", "%00", "00000000-0000-0000-0000-00000000000g"]
    )
    async def test_malformed_provider_id_is_provider_not_found(
        self, client: httpx.AsyncClient, entra: FakeEntra, provider_id: str
    ) -> None:
        response = await client.get(f"/sso/{provider_id}/initiate", params=PKCE)
        assert_error_redirect(response, "provider_not_found")

    @pytest.mark.parametrize(
        "params",
        [
            {"login_hint": "a" * 300},
            {"domain_hint": "d" * 300},
            {"prompt": "p" * 100},
            {"return_to": "/" + "r" * 5000},
        ],
    )
    async def test_an_oversized_parameter_is_dropped_not_a_422(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, params: dict[str, str]
    ) -> None:
        provider = await enabled_provider(factory)
        response = await client.get(f"/sso/{provider.id}/initiate", params={**PKCE, **params})
        assert response.status_code == 302
        location = response.headers["location"]
        assert location.startswith(entra.authorization_endpoint), location
        (value,) = params.values()
        assert value not in location

    async def test_disabled_provider_is_provider_disabled(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        provider = await enabled_provider(factory, enabled=False)
        response = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)
        assert_error_redirect(response, "provider_disabled")
        assert entra.discovery_calls == 0

    async def test_provider_without_credentials_is_provider_disabled(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        provider = await enabled_provider(factory, client_secret=None)
        response = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)
        assert_error_redirect(response, "provider_disabled")

    async def test_disabling_takes_effect_at_once(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        provider = await enabled_provider(factory)
        assert (await client.get(f"/sso/{provider.id}/initiate", params=PKCE)).status_code == 302
        async with session_scope(sessionmaker) as session:
            await session.execute(
                update(SSOProvider).where(SSOProvider.id == provider.id).values(enabled=False)
            )
        assert_error_redirect(
            await client.get(f"/sso/{provider.id}/initiate", params=PKCE), "provider_disabled"
        )

    async def test_discovery_unreachable_is_idp_error(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        provider = await enabled_provider(factory)
        entra.discovery_response_override = httpx.ConnectError("connection refused")
        assert_error_redirect(
            await client.get(f"/sso/{provider.id}/initiate", params=PKCE), "idp_error"
        )
        assert entra.discovery_calls == 1

    async def test_discovery_timeout_is_idp_error(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        provider = await enabled_provider(factory)
        entra.discovery_response_override = httpx.ReadTimeout("timed out")
        assert_error_redirect(
            await client.get(f"/sso/{provider.id}/initiate", params=PKCE), "idp_error"
        )

    @pytest.mark.parametrize(
        "answer",
        [
            httpx.Response(500, text="<html><body>Internal Server Error</body></html>"),
            httpx.Response(500, json={"error": "server_error"}),
            httpx.Response(503, text=""),
            httpx.Response(200, text="not json"),
            httpx.Response(200, json=["not", "an", "object"]),
        ],
    )
    async def test_discovery_failure_is_idp_error(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        answer: httpx.Response,
    ) -> None:
        provider = await enabled_provider(factory)
        entra.discovery_response_override = answer
        assert_error_redirect(
            await client.get(f"/sso/{provider.id}/initiate", params=PKCE), "idp_error"
        )

    @pytest.mark.parametrize("tenant", [str(uuid.uuid4()), "fabrikam.onmicrosoft.com"])
    async def test_unknown_tenant_is_idp_error_and_writes_nothing(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        tenant: str,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """An initiate writes nothing, failed or not: anonymous requests must not fill the
        audit log or change the provider (README, *Security model*); the log says why."""
        provider = await enabled_provider(factory, base_url=tenant)
        headers = await admin_headers(factory, provider)
        caplog.set_level(logging.INFO, logger="sso_broker")

        for _ in range(3):
            response = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)
            assert_error_redirect(response, "idp_error")

        read = await client.get(f"/api/v1/sso-providers/{provider.id}", headers=headers)
        assert read.status_code == 200, read.text
        assert read.json()["last_error"] is None
        events = await client.get(
            "/api/v1/audit-events", params={"type": "sign_in.failed"}, headers=headers
        )
        assert events.status_code == 200, events.text
        assert events.json()["items"] == []
        assert any("discovery failed" in str(getattr(r, "reason", "")) for r in caplog.records)

    async def test_a_plain_discovery_failure_records_no_last_error(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        """Only failures an administrator can fix become ``last_error``."""
        provider = await enabled_provider(factory)
        headers = await admin_headers(factory, provider)
        entra.discovery_response_override = httpx.ConnectError("connection refused")
        assert_error_redirect(
            await client.get(f"/sso/{provider.id}/initiate", params=PKCE), "idp_error"
        )
        read = await client.get(f"/api/v1/sso-providers/{provider.id}", headers=headers)
        assert read.json()["last_error"] is None

    async def test_initiate_failures_are_never_json(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        provider = await enabled_provider(factory, enabled=False)
        for path in (
            f"/sso/{uuid.uuid4()}/initiate",
            "/sso/nope/initiate",
            f"/sso/{provider.id}/initiate",
        ):
            response = await client.get(path)
            assert response.status_code == 302, path
            assert response.content == b""
            assert "json" not in response.headers.get("content-type", "")


# --- return_to --------------------------------------------------------------------------------


SAFE_PATHS = [
    "/",
    "/reports",
    "/reports/2024/q1",
    "/reports?tab=summary&range=7d",
    "/a/b#section-2",
    "/dashboard/%E2%9C%93",
    "/users/~admin",
    "/a:b/c@d",
    "/search?q=a+b",
    "/search?q=a%20b",
]

HOSTILE = [
    # absolute and scheme-relative
    "https://evil.example",
    "http://evil.example/",
    "HTTPS://evil.example/reports",
    "https:evil.example",
    "https:/evil.example",
    "https:///evil.example",
    "ftp://evil.example",
    "//evil.example",
    "///evil.example",
    "////evil.example",
    "//evil.example/reports",
    "//evil.example@app.example.com",
    "//app.example.com@evil.example",
    "//",
    "/\\evil.example",
    "\\\\evil.example",
    "\\/evil.example",
    "/\\/evil.example",
    "/./\\evil.example",
    "http:\\\\evil.example",
    # other schemes
    "javascript:alert(1)",
    "JaVaScRiPt:alert(document.cookie)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "blob:https://evil.example/x",
    # not a path at all
    "",
    "evil.example",
    "reports",
    "./reports",
    "../reports",
    "?next=/",
    "#top",
    "@evil.example",
    # encoded slashes and backslashes
    "/%2F%2Fevil.example",
    "/%2f%2fevil.example",
    "/%2F/evil.example",
    "%2F%2Fevil.example",
    "/%5Cevil.example",
    "/%5cevil.example",
    "/%5C%5Cevil.example",
    "/%252F%252Fevil.example",
    "/%25252F%25252Fevil.example",
    "/%25%32%46%25%32%46evil.example",
    "/%2F%5Cevil.example",
    "%2Fevil.example",
    "%68ttps://evil.example",
    "https%3A%2F%2Fevil.example",
    "/%0a/evil.example",
    "/%0D%0ALocation:%20https://evil.example",
    "/%09/evil.example",
    "/%00",
    "/%7F",
    "/%",
    "/%zz",
    "/%2",
    # white space and control characters
    "/\t/evil.example",
    "/\n/evil.example",
    "/\r/evil.example",
    "/\r\nSet-Cookie: a=b",
    "\t//evil.example",
    " //evil.example",
    "  /reports",
    "/reports ",
    "/ /evil.example",
    "/\x00",
    "/\x7f",
    "/\x0b/evil.example",
    "/\x0c/evil.example",
    "\x01/reports",
    # unicode look-alikes and invisibles
    "/\u2215\u2215evil.example",
    "/\uff0f\uff0fevil.example",
    "/\uff3cevil.example",
    "/\u29f5evil.example",
    "/\u200b/evil.example",
    "/\u2028/evil.example",
    "/\u3000/evil.example",
    "/\u00a0/evil.example",
    "/\ufeff/evil.example",
    "/\u0435vil",
    "/r\u00e9ports",
    "\u3002/evil.example",
    "/%C0%AF%C0%AFevil.example",
    "/%E2%88%95%E2%88%95evil.example",
    # too long
    "/" + "a" * 3000,
]


# Encoded non-ASCII: decoded, neither is a slash to a browser (overlong UTF-8 and U+2215), so
# they may be kept as paths; the corpus assertion still holds for them.
ODD_BUT_ON_ORIGIN = frozenset({"/%C0%AF%C0%AFevil.example", "/%E2%88%95%E2%88%95evil.example"})


def _browser_join(base: str, value: str) -> str:
    """How a WHATWG parser reads ``value`` against ``base``, near enough for this purpose.

    Leading and trailing C0 controls and spaces are stripped, tabs and newlines removed
    anywhere, and backslashes count as slashes in special (http/https) URLs.
    """
    stripped = value.strip("".join(chr(c) for c in range(0x21)))
    cleaned = stripped.replace("\t", "").replace("\n", "").replace("\r", "").replace("\\", "/")
    return urljoin(base, cleaned)


def _stays_on_frontend(path: str) -> bool:
    for candidate in {path, unquote(path), unquote(unquote(path))}:
        for joined in (
            urljoin(FRONTEND, candidate),
            _browser_join(FRONTEND, candidate),
            str(httpx.URL(FRONTEND).join(candidate)),
        ):
            parts = urlsplit(joined)
            if (parts.scheme, parts.netloc) != ("https", "app.example.com"):
                return False
    return True


class TestSafeReturnTo:
    def test_the_corpus_is_big_enough(self) -> None:
        assert len(set(HOSTILE)) == len(HOSTILE)
        assert len(HOSTILE) >= 60

    @pytest.mark.parametrize("value", HOSTILE)
    def test_a_hostile_return_to_is_refused_or_stays_on_the_frontend(self, value: str) -> None:
        result = safe_return_to(value)
        if result is not None:
            assert result == value
            assert result.startswith("/")
            assert not result.startswith(("//", "/\\"))
            assert _stays_on_frontend(result), result

    @pytest.mark.parametrize("value", [v for v in HOSTILE if v not in ODD_BUT_ON_ORIGIN])
    def test_a_hostile_return_to_is_dropped(self, value: str) -> None:
        """Stricter than staying on the frontend: each of these is dropped outright."""
        assert safe_return_to(value) is None

    @pytest.mark.parametrize("value", sorted(ODD_BUT_ON_ORIGIN))
    def test_an_encoded_look_alike_is_at_most_a_path_on_the_frontend(self, value: str) -> None:
        """Percent-encoded non-ASCII is a legitimate path; decoded once it is still a path."""
        assert safe_return_to(value) in (None, value)
        assert _stays_on_frontend(value)

    @pytest.mark.parametrize("value", SAFE_PATHS)
    def test_a_plain_path_is_kept_exactly(self, value: str) -> None:
        assert safe_return_to(value) == value
        assert _stays_on_frontend(value)

    def test_none_is_none(self) -> None:
        assert safe_return_to(None) is None


class TestReturnTo:
    @pytest.mark.parametrize("path", ["/reports", "/reports?tab=summary&range=7d", "/a/b#frag"])
    async def test_a_safe_path_is_carried_to_the_complete_url(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, path: str
    ) -> None:
        provider = await enabled_provider(factory)
        person = await provisioned(factory, provider)
        started = await client.get(
            f"/sso/{provider.id}/initiate", params={**PKCE, "return_to": path}
        )
        assert started.status_code == 302
        assert path not in started.headers["location"], "return_to never goes to Entra"
        assert "return_to" not in query_of(started.headers["location"])

        target = await finish(client, entra, started.headers["location"], person)

        assert without_query(target) == COMPLETE_URL
        query = query_of(target)
        assert set(query) == {"code", "return_to"}
        assert query["return_to"] == path

    @pytest.mark.parametrize(
        "path",
        [
            "https://evil.example/reports",
            "//evil.example",
            "/\\evil.example",
            "/%2F%2Fevil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\uff0f\uff0fevil.example",
            "javascript:alert(1)",
            "reports",
        ],
    )
    async def test_an_unsafe_return_to_is_dropped_and_sign_in_still_works(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, path: str
    ) -> None:
        provider = await enabled_provider(factory)
        person = await provisioned(factory, provider)
        started = await client.get(
            f"/sso/{provider.id}/initiate", params={**PKCE, "return_to": path}
        )
        assert started.status_code == 302
        assert without_query(started.headers["location"]) == entra.authorization_endpoint

        target = await finish(client, entra, started.headers["location"], person)

        assert without_query(target) == COMPLETE_URL
        assert set(query_of(target)) == {"code"}
        assert "evil" not in target


async def test_a_hostile_cookie_flood_is_expired_without_opening_it(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cookies named like login states are the browser's to invent: an initiate opens at
    most a few of them, and expires every one that does not open."""
    from sso_broker.sealing import Sealer

    provider = await enabled_provider(factory)
    opened: list[str] = []
    decrypt = Sealer.decrypt

    def counting(self: Sealer, token: str) -> str:
        opened.append(token)
        return decrypt(self, token)

    monkeypatch.setattr(Sealer, "decrypt", counting)
    forged = "; ".join(f"__Host-sso_login_{i:016x}=garbage{i}" for i in range(200))
    response = await client.get(
        f"/sso/{provider.id}/initiate", params=PKCE, headers={"Cookie": forged}
    )
    assert response.status_code == 302, response.text
    assert len(opened) <= 8
    expired = [c for c in response.headers.get_list("set-cookie") if "Max-Age=0" in c]
    assert len(expired) == 200
