"""Unit tests of the Entra adapter's rules: what may be pasted as the tenant (README,
*Setting up Entra ID*), client ID and secret, first-link email, and Entra's errors."""

from __future__ import annotations

import pytest

from sso_broker.errors import ErrorCode
from sso_broker.idp import ADAPTER_TYPES, AdapterConfig, Adapters
from sso_broker.idp.base import is_domain_name, is_guid
from sso_broker.idp.entra import EntraAdapter
from tests.idp.helpers import refused

GUID = "3f2b8c4e-1a2b-4c3d-9e8f-0a1b2c3d4e5f"
CONSUMER_TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
LOCAL_AUTHORITY = "http://127.0.0.1:8123/entra"
ENTRA = EntraAdapter(AdapterConfig(entra_authority=LOCAL_AUTHORITY))


def _long_domain(total: int) -> str:
    """A syntactically valid domain of exactly ``total`` characters (labels of 63 at most)."""
    tail = ".com"
    labels: list[str] = []
    remaining = total - len(tail)
    letter = ord("a")
    while remaining > 0:
        size = min(63, remaining - (1 if labels else 0))
        if labels:
            remaining -= 1
        labels.append(chr(letter) * size)
        remaining -= size
        letter += 1
    domain = ".".join(labels) + tail
    assert len(domain) == total
    return domain


class TestIsGuid:
    @pytest.mark.parametrize(
        "value",
        [
            GUID,
            GUID.upper(),
            "3F2b8C4e-1A2b-4c3D-9e8F-0a1B2c3D4e5F",
            "00000000-0000-0000-0000-000000000000",
            CONSUMER_TENANT,
        ],
    )
    def test_accepts_hyphenated_hex_guids_in_any_case(self, value: str) -> None:
        assert is_guid(value) is True

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "not-a-guid",
            "{" + GUID + "}",
            "urn:uuid:" + GUID,
            GUID.replace("-", ""),
            GUID + "0",
            GUID[:-1],
            GUID + "\n",
            "\n" + GUID,
            " " + GUID,
            GUID + " ",
            GUID.replace("f", "g"),
            "3f2b8c4e-1a2b-4c3d-9e8f0a1b-2c3d4e5f",
            # Unicode look-alikes: fullwidth digit 3, Cyrillic a (U+0430) and e (U+0435).
            "\uff13" + GUID[1:],
            GUID.replace("a", "\u0430"),
            GUID.replace("e", "\u0435"),
            # Arabic-Indic digit zero where a 0 should be.
            GUID.replace("0", "\u0660"),
            "https://login.microsoftonline.com/" + GUID + "/v2.0",
        ],
    )
    def test_refuses_anything_else(self, value: str) -> None:
        assert is_guid(value) is False


class TestIsDomainName:
    @pytest.mark.parametrize(
        "value",
        [
            "contoso.onmicrosoft.com",
            "CONTOSO.OnMicrosoft.COM",
            "contoso.com",
            "login.contoso.co.uk",
            "my-company.com",
            "123.com",
            "a.io",
            "xn--bcher-kva.example",
            "contoso.xn--p1ai",
            "a" * 63 + ".com",
            _long_domain(253),
        ],
    )
    def test_accepts_domain_names(self, value: str) -> None:
        assert is_domain_name(value) is True

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "contoso",
            "localhost",
            ".",
            "contoso.onmicrosoft.com.",
            ".contoso.onmicrosoft.com",
            "contoso..com",
            "a" * 64 + ".com",
            "contoso." + "c" * 64,
            _long_domain(254),
            "-contoso.com",
            "contoso-.com",
            "contoso.-com.org",
            "contoso.com-",
            "contoso_tenant.com",
            "contoso.c0m",
            "contoso.c",
            "contoso.123",
            "10.0.0.1",
            "127.0.0.1",
            "[::1]",
            "::1",
            "contoso.com:443",
            "contoso.com/",
            "https://contoso.com",
            "user@contoso.com",
            "contoso .com",
            "contoso.com\n",
            "contoso.com\x00",
            " contoso.com",
            "*.contoso.com",
            # Unicode: not ASCII, even when it looks like it or folds to it.
            "münchen.de",
            "c\u043entoso.onmicrosoft.com",  # Cyrillic o (U+043E)
            "contoso\uff0ecom",  # fullwidth full stop
            "contoso\u3002com",  # ideographic full stop
            "\u212aontoso.com",  # Kelvin sign, lower-cases to "k"
            "\ufb00.com",  # "ff" ligature
            "contoso.onmicrosoft.com\u200b",  # zero-width space
            "https://login.microsoftonline.com/" + GUID + "/v2.0",
        ],
    )
    def test_refuses_anything_else(self, value: str) -> None:
        assert is_domain_name(value) is False


class TestProviderTypes:
    def test_the_four_types_are_registered_under_their_names(self) -> None:
        adapters = Adapters(AdapterConfig())
        assert [kind.name for kind in ADAPTER_TYPES] == ["entra", "okta", "pingone", "oidc"]
        assert isinstance(adapters["entra"], EntraAdapter)

    def test_entra_default_display_name(self) -> None:
        assert EntraAdapter.default_display_name == "Azure AD / Entra"


_refused = refused


class TestNormalizeBaseUrl:
    @pytest.mark.parametrize(
        ("value", "stored"),
        [
            (GUID, GUID),
            (GUID.upper(), GUID),
            (f"  {GUID}\t\n", GUID),
            ("contoso.onmicrosoft.com", "contoso.onmicrosoft.com"),
            ("Contoso.OnMicrosoft.com", "contoso.onmicrosoft.com"),
            ("  contoso.com  ", "contoso.com"),
            ("\u00a0contoso.com\u00a0", "contoso.com"),
            # Domains that merely contain an alias are ordinary tenants.
            ("common.onmicrosoft.com", "common.onmicrosoft.com"),
            ("consumers-inc.com", "consumers-inc.com"),
        ],
    )
    def test_keeps_a_tenant_id_or_domain_lower_cased_without_surrounding_space(
        self, value: str, stored: str
    ) -> None:
        assert ENTRA.normalize_base_url(value) == stored

    @pytest.mark.parametrize(
        "value",
        [
            "common",
            "organizations",
            "consumers",
            "COMMON",
            "Organizations",
            "cOnSuMeRs",
            "  common  ",
            "\torganizations\n",
            "\u00a0consumers\u00a0",
            CONSUMER_TENANT,
            CONSUMER_TENANT.upper(),
            f"  {CONSUMER_TENANT}  ",
        ],
    )
    def test_refuses_multi_tenant_endpoints_as_unsupported(self, value: str) -> None:
        _refused(ENTRA.normalize_base_url, value, ErrorCode.UNSUPPORTED_TENANT)

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "   ",
            "contoso",
            "not a tenant",
            "contoso.onmicrosoft.com.",
            "a" * 64 + ".onmicrosoft.com",
            "-contoso.onmicrosoft.com",
            "10.0.0.1",
            "[2001:db8::1]",
            "{" + GUID + "}",
            GUID.replace("-", ""),
            f"login.microsoftonline.com/{GUID}",
            f"{GUID}/v2.0",
            "https://contoso.onmicrosoft.com",
            f"https://login.microsoftonline.com/{GUID}/oauth2/v2.0/authorize",
            f"https://login.microsoftonline.com/{GUID}/v2.0?x=1",
            f"https://login.microsoftonline.com/{GUID}#v2.0",
            "https://login.microsoftonline.com/",
            f"https://login.microsoftonline.com.evil.example/{GUID}",
            f"ftp://login.microsoftonline.com/{GUID}",
            "contoso.onmicrosoft.com:443",
            "c\u043entoso.onmicrosoft.com",
            "\u0441ommon",  # Cyrillic es (U+0441): looks like "common"
            "\uff43\uff4f\uff4d\uff4d\uff4f\uff4e",  # fullwidth "common"
            "common\u200b",
            "common.",
            "GUID" + GUID,
        ],
    )
    def test_refuses_anything_else_as_invalid_base_url(self, value: str) -> None:
        _refused(ENTRA.normalize_base_url, value, ErrorCode.INVALID_BASE_URL)

    @pytest.mark.parametrize(
        "value", ["zz-hostile-tenant-zz", "https://evil.example/zz-hostile-tenant-zz"]
    )
    def test_never_echoes_the_input_in_the_error(self, value: str) -> None:
        error = _refused(ENTRA.normalize_base_url, value, ErrorCode.INVALID_BASE_URL)
        assert "zz-hostile-tenant-zz" not in error.detail
        assert "evil.example" not in error.detail
        assert "Directory (tenant) ID" in error.detail  # what to paste instead

    @pytest.mark.parametrize(
        "value",
        [
            f"https://login.microsoftonline.com/{GUID}/v2.0",
            f"https://login.microsoftonline.com/{GUID}/v2.0/",
            f"https://login.microsoftonline.com/{GUID}",
            f"https://login.microsoftonline.com/{GUID}/",
            f"https://login.microsoftonline.com/{GUID}/v2.0/.well-known/openid-configuration",
            f"https://login.microsoftonline.com/{GUID}/.well-known/openid-configuration",
            f"HTTPS://LOGIN.MICROSOFTONLINE.COM/{GUID.upper()}/V2.0",
            f"https://sts.windows.net/{GUID}/",
            f"  https://sts.windows.net/{GUID}  ",
            f"{LOCAL_AUTHORITY}/{GUID}/v2.0",
            f"{LOCAL_AUTHORITY.upper()}/{GUID}/v2.0",
        ],
    )
    def test_takes_the_tenant_out_of_a_pasted_entra_url(self, value: str) -> None:
        assert ENTRA.normalize_base_url(value) == GUID

    def test_takes_a_domain_out_of_a_pasted_url(self) -> None:
        url = "https://login.microsoftonline.com/Contoso.onmicrosoft.com/v2.0"
        assert ENTRA.normalize_base_url(url) == "contoso.onmicrosoft.com"

    @pytest.mark.parametrize(
        "alias", ["common", "organizations", "consumers", CONSUMER_TENANT.upper()]
    )
    def test_a_pasted_multi_tenant_url_is_still_unsupported(self, alias: str) -> None:
        url = f"https://login.microsoftonline.com/{alias}/v2.0"
        _refused(ENTRA.normalize_base_url, url, ErrorCode.UNSUPPORTED_TENANT)


class TestNormalizeClientId:
    @pytest.mark.parametrize(
        ("value", "stored"),
        [
            (GUID, GUID),
            (GUID.upper(), GUID),
            (f"  {GUID}\n", GUID),
        ],
    )
    def test_keeps_a_guid_lower_cased_and_stripped(self, value: str, stored: str) -> None:
        assert ENTRA.normalize_client_id(value) == stored

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "   ",
            "my-app",
            "{" + GUID + "}",
            GUID.replace("-", ""),
            "api://" + GUID,
            GUID.replace("a", "\u0430"),
            "contoso.onmicrosoft.com",
        ],
    )
    def test_refuses_anything_but_a_guid(self, value: str) -> None:
        _refused(ENTRA.normalize_client_id, value, ErrorCode.INVALID_CLIENT_ID)


class TestNormalizeClientSecret:
    @pytest.mark.parametrize(
        ("value", "stored"),
        [
            ("Abc8Q~x1y2z3.w4v5u6t7s8r9q0p_o-n~m", "Abc8Q~x1y2z3.w4v5u6t7s8r9q0p_o-n~m"),
            ("  Abc8Q~secret-value \n", "Abc8Q~secret-value"),
            ("x", "x"),
            # Not a GUID: braces or missing hyphens make it an ordinary string.
            (GUID.replace("-", ""), GUID.replace("-", "")),
        ],
    )
    def test_keeps_the_value_without_surrounding_space(self, value: str, stored: str) -> None:
        assert ENTRA.normalize_client_secret(value) == stored

    @pytest.mark.parametrize("value", ["", " ", "\t\n", "\u00a0"])
    def test_refuses_an_empty_secret(self, value: str) -> None:
        _refused(ENTRA.normalize_client_secret, value, ErrorCode.INVALID_CLIENT_SECRET)

    @pytest.mark.parametrize("value", [GUID, GUID.upper(), f"  {GUID}  "])
    def test_refuses_the_secret_id_in_place_of_the_value(self, value: str) -> None:
        error = _refused(ENTRA.normalize_client_secret, value, ErrorCode.INVALID_CLIENT_SECRET)
        assert "Secret ID" in error.detail
        assert GUID not in error.detail.lower()
