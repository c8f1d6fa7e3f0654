"""Unit tests of the Okta, PingOne and generic OpenID Provider adapters (README, *Identity
providers*): what may be pasted, client IDs, which endpoints are trusted, first-link emails,
and error mapping. The Entra adapter has its own file (``test_entra.py``)."""

from __future__ import annotations

from typing import Any

import pytest

from sso_broker.errors import ErrorCode
from sso_broker.idp import AdapterConfig, Adapters
from sso_broker.idp.base import WELL_KNOWN
from tests.idp.helpers import refused

ENV = "5c6e7f80-91a2-4b3c-8d4e-5f60718293a4"
ADAPTERS = Adapters(AdapterConfig())
DEV = Adapters(AdapterConfig(allow_http_issuers=True, pingone_authority="http://127.0.0.1:9/p1"))
OKTA, PINGONE, OIDC = ADAPTERS["okta"], ADAPTERS["pingone"], ADAPTERS["oidc"]


class TestOktaBaseUrl:
    @pytest.mark.parametrize(
        ("value", "stored"),
        [
            ("https://acme.okta.com", "https://acme.okta.com"),
            ("https://acme.okta.com/", "https://acme.okta.com"),
            ("  https://ACME.Okta.com  ", "https://acme.okta.com"),
            ("https://acme.okta.com" + WELL_KNOWN, "https://acme.okta.com"),
            (
                "https://acme.oktapreview.com/oauth2/default",
                "https://acme.oktapreview.com/oauth2/default",
            ),
            (
                "https://acme.okta-emea.com/oauth2/default/",
                "https://acme.okta-emea.com/oauth2/default",
            ),
            (
                "https://acme.okta.com/oauth2/aus1a2b3c4D5e6F7g8h9" + WELL_KNOWN,
                "https://acme.okta.com/oauth2/aus1a2b3c4D5e6F7g8h9",
            ),
            (
                "https://login.acme.example/oauth2/default",
                "https://login.acme.example/oauth2/default",
            ),
            # The Admin Console's own address names the org too.
            ("https://acme-admin.okta.com/", "https://acme.okta.com"),
            ("https://acme.okta.com:443/oauth2/default", "https://acme.okta.com/oauth2/default"),
            ("https://acme.okta.com./", "https://acme.okta.com"),
            ("https://acme.okta.com:8443", "https://acme.okta.com:8443"),
        ],
    )
    def test_accepts_an_org_or_authorization_server_url(self, value: str, stored: str) -> None:
        assert OKTA.normalize_base_url(value) == stored
        assert OKTA.issuer(stored) == stored
        assert OKTA.discovery_url(stored) == stored + WELL_KNOWN

    @pytest.mark.parametrize(
        "value",
        [
            "acme.okta.com",
            "http://acme.okta.com",
            "https://acme.okta.com/app/UserHome",
            "https://acme.okta.com/oauth2",
            "https://acme.okta.com/oauth2/default/v1/authorize",
            "https://acme.okta.com/oauth2/de fault",
            "https://acme.okta.com?x=1",
            "https://acme.okta.com#top",
            "https://user:pw@acme.okta.com",
            "https://",
            "",
            "https://acme.okta.com/oauth2/../admin",
            "https://acme.ökta.com",
        ],
    )
    def test_refuses_anything_else(self, value: str) -> None:
        error = refused(OKTA.normalize_base_url, value, ErrorCode.INVALID_BASE_URL)
        assert "https://acme.okta.com" in error.detail  # says what to paste
        assert "pw" not in error.detail
        assert "UserHome" not in error.detail

    def test_http_only_on_loopback_and_only_when_allowed(self) -> None:
        okta = DEV["okta"]
        assert okta.normalize_base_url("http://127.0.0.1:8080/oauth2/default") == (
            "http://127.0.0.1:8080/oauth2/default"
        )
        assert okta.normalize_base_url("http://localhost:8080") == "http://localhost:8080"
        refused(okta.normalize_base_url, "http://acme.okta.com", ErrorCode.INVALID_BASE_URL)
        refused(OKTA.normalize_base_url, "http://127.0.0.1:8080", ErrorCode.INVALID_BASE_URL)

    def test_client_id_is_any_printable_text_without_spaces(self) -> None:
        assert OKTA.normalize_client_id("  0oa1b2c3d4E5f6G7h8i9  ") == "0oa1b2c3d4E5f6G7h8i9"
        for bad in ("", "   ", "0oa1 b2", "0oa\x00"):
            refused(OKTA.normalize_client_id, bad, ErrorCode.INVALID_CLIENT_ID)


class TestPingOneBaseUrl:
    @pytest.mark.parametrize(
        ("value", "stored", "issuer"),
        [
            (ENV, ENV, f"https://auth.pingone.com/{ENV}/as"),
            (ENV.upper(), ENV, f"https://auth.pingone.com/{ENV}/as"),
            (f"https://auth.pingone.eu/{ENV}/as", None, f"https://auth.pingone.eu/{ENV}/as"),
            (f"https://auth.pingone.eu/{ENV}/as/", None, f"https://auth.pingone.eu/{ENV}/as"),
            (f"https://auth.pingone.asia/{ENV}", None, f"https://auth.pingone.asia/{ENV}/as"),
            (
                f"https://AUTH.PINGONE.COM.AU/{ENV.upper()}/as{WELL_KNOWN}",
                None,
                f"https://auth.pingone.com.au/{ENV}/as",
            ),
            (f"https://auth.pingone.ca/{ENV}/as", None, f"https://auth.pingone.ca/{ENV}/as"),
        ],
    )
    def test_accepts_an_environment_id_or_issuer_url(
        self, value: str, stored: str | None, issuer: str
    ) -> None:
        normalized = PINGONE.normalize_base_url(value)
        assert normalized == (stored or issuer)
        assert PINGONE.issuer(normalized) == issuer

    def test_a_bare_id_names_the_configured_authority(self) -> None:
        pingone = DEV["pingone"]
        assert pingone.issuer(ENV) == f"http://127.0.0.1:9/p1/{ENV}/as"
        assert pingone.normalize_base_url(f"http://127.0.0.1:9/{ENV}/as") == (
            f"http://127.0.0.1:9/{ENV}/as"
        )

    @pytest.mark.parametrize(
        "value",
        [
            "not-an-id",
            f"https://auth.pingone.evil/{ENV}/as",
            f"https://auth.pingone.com.evil.example/{ENV}/as",
            "https://auth.pingone.com/",
            "https://auth.pingone.com/not-a-guid/as",
            f"https://auth.pingone.com/{ENV}/as/authorize",
            f"http://auth.pingone.com/{ENV}/as",
            f"https://console.pingone.com/?env={ENV}",
        ],
    )
    def test_refuses_anything_else(self, value: str) -> None:
        error = refused(PINGONE.normalize_base_url, value, ErrorCode.INVALID_BASE_URL)
        assert "environment ID" in error.detail

    def test_client_id_is_a_guid(self) -> None:
        assert PINGONE.normalize_client_id(ENV.upper()) == ENV
        refused(PINGONE.normalize_client_id, "my-client", ErrorCode.INVALID_CLIENT_ID)


class TestOidcBaseUrl:
    @pytest.mark.parametrize(
        ("value", "stored"),
        [
            ("https://id.example.com", "https://id.example.com"),
            ("https://id.example.com/", "https://id.example.com"),
            ("https://ID.Example.com/Realms/Acme/", "https://id.example.com/Realms/Acme"),
            (
                "https://id.example.com/realms/acme" + WELL_KNOWN,
                "https://id.example.com/realms/acme",
            ),
        ],
    )
    def test_accepts_an_issuer_url(self, value: str, stored: str) -> None:
        assert OIDC.normalize_base_url(value) == stored
        assert OIDC.issuer(stored) == stored

    @pytest.mark.parametrize(
        "value",
        [
            "id.example.com",
            "http://id.example.com",
            "https://id.example.com?tenant=1",
            "ftp://x",
            "https://id.example.com/realms/my realm",
            'https://id.example.com/"quoted"',
            "https://id.example.com/<script>",
        ],
    )
    def test_refuses_anything_else(self, value: str) -> None:
        refused(OIDC.normalize_base_url, value, ErrorCode.INVALID_BASE_URL)

    def test_endpoints_may_live_on_another_https_host(self) -> None:
        issuer = "https://accounts.example.com"
        assert OIDC.endpoint_allowed(issuer, "https://oauth2.example-apis.com/token")
        assert not OIDC.endpoint_allowed(issuer, "http://oauth2.example-apis.com/token")
        assert not DEV["oidc"].endpoint_allowed(issuer, "http://10.0.0.1/token")
        assert DEV["oidc"].endpoint_allowed(issuer, "http://127.0.0.1:9/token")

    def test_okta_and_pingone_endpoints_stay_on_the_issuer_origin(self) -> None:
        issuer = "https://acme.okta.com/oauth2/default"
        assert OKTA.endpoint_allowed(issuer, "https://acme.okta.com/oauth2/default/v1/token")
        assert not OKTA.endpoint_allowed(issuer, "https://evil.example/oauth2/default/v1/token")
        assert not PINGONE.endpoint_allowed(
            f"https://auth.pingone.com/{ENV}/as", "https://auth.pingone.eu/x/as/token"
        )


class TestIssuerCheck:
    @pytest.mark.parametrize("adapter", [OKTA, OIDC])
    def test_the_metadata_issuer_must_equal_the_base_url_exactly(self, adapter: Any) -> None:
        base = "https://acme.okta.com/oauth2/default"
        assert adapter.check_issuer(base, base) is None
        for other in (base + "/", base.upper(), "https://acme.okta.com", "https://evil.example"):
            with pytest.raises(ValueError, match="issuer"):
                adapter.check_issuer(base, other)


def claims(**extra: Any) -> dict[str, Any]:
    return {"iss": "https://id.example.com", "sub": "00u1", "email": "Ada@Example.com", **extra}


class TestIdentityAndFirstLink:
    @pytest.mark.parametrize("adapter", [OKTA, PINGONE, OIDC])
    def test_the_identity_is_issuer_and_subject(self, adapter: Any) -> None:
        assert adapter.identity(claims()) == ("https://id.example.com", "00u1")
        assert adapter.required_claims == ()

    @pytest.mark.parametrize("adapter", [OKTA, PINGONE, OIDC])
    def test_only_a_verified_email_links(self, adapter: Any) -> None:
        assert adapter.first_link_email(claims(email_verified=True)) == "Ada@Example.com"
        for verified in (False, "true", 1, None):
            assert adapter.first_link_email(claims(email_verified=verified)) is None
        assert adapter.first_link_email(claims()) is None
        # A Unicode look-alike (KELVIN SIGN for k) is no email of ours.
        assert (
            adapter.first_link_email(claims(email="\u212aate@example.com", email_verified=True))
            is None
        )

    def test_only_entra_knows_domain_hint(self) -> None:
        for adapter in (OKTA, PINGONE, OIDC):
            assert adapter.authorization_params(domain_hint="contoso.com") == {}
        assert ADAPTERS["entra"].authorization_params(domain_hint="contoso.com") == {
            "domain_hint": "contoso.com"
        }


class TestErrors:
    def test_invalid_client_says_where_to_look(self) -> None:
        found = OKTA.actionable("invalid_client", None, 401)
        assert found is not None
        assert found.code == "invalid_client"
        assert "Okta Admin Console" in found.message
        found = PINGONE.actionable("invalid_client", None, 401)
        assert found is not None
        assert "PingOne" in found.message

    def test_unknown_errors_blame_nobody(self) -> None:
        for adapter in (OKTA, PINGONE, OIDC):
            assert adapter.actionable("invalid_grant", None, 400) is None
            assert adapter.actionable(None, None, 500) is None

    def test_okta_error_codes_are_found(self) -> None:
        assert OKTA.error_code("E0000011: Invalid token provided") == "E0000011"
        assert OKTA.error_code("nothing here", None, ["E0000011"]) is None

    def test_a_missing_issuer_is_actionable(self) -> None:
        found = OIDC.discovery_failed(404, None)
        assert found is not None
        assert found.code == "issuer_not_found"
        assert OIDC.discovery_failed(500, None) is None

    def test_access_denied_is_the_users_choice(self) -> None:
        assert OKTA.user_refused("access_denied", None)
        assert not OKTA.user_refused("server_error", None)


def test_oktas_error_document_names_its_code() -> None:
    """Okta's API errors are {"errorCode": "E0000007", "errorSummary": …}: the code reaches
    last_error for a base_url whose authorization server does not exist."""
    document = {
        "errorCode": "E0000007",
        "errorSummary": "Not found: Resource not found: nope (AuthorizationServer)",
        "errorLink": "E0000007",
        "errorId": "oaeAbc",
        "errorCauses": [],
    }
    code = OKTA.error_code(*document.values())
    assert code == "E0000007"
    found = OKTA.discovery_failed(404, code)
    assert found is not None
    assert found.code == "issuer_not_found"
    assert "E0000007" in found.message


class TestNoInternalAddresses:
    """A provider is named by its DNS name: a bare IP or localhost would let an administrator
    make the service call (with a client secret) an internal address."""

    @pytest.mark.parametrize(
        "value",
        [
            "https://10.0.0.5",
            "https://169.254.169.254/latest",
            "https://[::1]",
            "https://127.0.0.1:8443",
            "https://localhost",
            "https://intranet.localhost",
            "https://2130706433",
        ],
    )
    def test_ip_literals_and_localhost_are_refused(self, value: str) -> None:
        for adapter in (OKTA, OIDC):
            refused(adapter.normalize_base_url, value, ErrorCode.INVALID_BASE_URL)

    def test_oidc_endpoints_must_not_name_internal_addresses(self) -> None:
        issuer = "https://id.example.com"
        for url in (
            "https://10.0.0.5/token",
            "https://169.254.169.254/token",
            "https://[fd00::1]/token",
            "https://localhost/token",
        ):
            assert not OIDC.endpoint_allowed(issuer, url), url
        assert OIDC.endpoint_allowed(issuer, "https://oauth2.example-apis.com/token")
