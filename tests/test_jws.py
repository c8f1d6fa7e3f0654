"""Reading a JWS header before the signature is checked: only well-formed tokens pass."""

from __future__ import annotations

import base64
import json

import jwt
import pytest

from sso_broker.jws import MAX_HEADER_LENGTH, MalformedToken, unverified_header


def segment(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def test_the_header_of_a_real_token_is_read() -> None:
    token = jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256", headers={"kid": "abc"})
    assert unverified_header(token) == jwt.get_unverified_header(token)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c.d",
        segment({"alg": "RS256"}) + "=.e30.",  # padding is not base64url
        segment({"alg": "RS256"}).replace("e", "+", 1) + ".e30.",
        segment([1, 2]) + ".e30.",
        segment({"alg": "RS256", "kid": ["k"]}) + ".e30.",
        segment({"alg": "RS256", "x": "y" * MAX_HEADER_LENGTH}) + ".e30.",
        "e.e30.",  # one character: never a whole base64 quantum
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(MalformedToken):
        unverified_header(token)
