"""PKCE's challenge and the token request's body (sso/service.py), as authlib made them when
the service used it: the same bytes go to Entra."""

from __future__ import annotations

import pytest
from authlib.oauth2.rfc6749.parameters import prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from sso_broker.sso.pkce import s256_code_challenge
from sso_broker.sso.service import token_request_body

VERIFIERS = ["a" * 43, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", "~._-" * 20]


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_the_s256_challenge_is_authlibs(verifier: str) -> None:
    assert s256_code_challenge(verifier) == create_s256_code_challenge(verifier)


def test_rfc_7636s_example() -> None:
    challenge = s256_code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
    assert challenge == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


@pytest.mark.parametrize(
    ("code", "secret"),
    [
        ("0.AXoA-code", "plain"),
        ("c&d=e+f g/é", "~!*'();:@&=+$,/?#[]"),
        ("code", ""),  # an empty value is left out, as authlib did
    ],
)
def test_the_token_request_body_is_authlibs(code: str, secret: str) -> None:
    params = {
        "code": code,
        "redirect_uri": "https://broker.example/sso/0f0e/callback?x=1&y=2",
        "client_id": "6a1b2c3d-0000-4000-8000-000000000001",
        "client_secret": secret,
        "code_verifier": VERIFIERS[1],
    }
    expected = prepare_token_request("authorization_code", **params).encode()
    assert token_request_body(**params) == expected
