"""Reading a JWS header before the signature is checked: only well-formed tokens pass."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable

import jwt
import pytest

from sso_broker.jws import MAX_HEADER_LENGTH, MalformedToken, decoder, unverified_header


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


def _segments() -> list[bytes]:
    """Every kind of segment PyJWT's check tells apart: canonical, padded rightly and
    wrongly, non-canonical last characters, foreign characters, every length modulo 4."""
    rng = random.Random(8)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    foreign = b"+/=.!~ \x00\xff\xe9"
    found = [b"", b"=", b"==", b"===", b"A", b"AA", b"AAA", b"AAAA", b"AB==", b"AB=", b"ABC="]
    # More than two "=" where the length is a multiple of 4: only the padding-count rule
    # refuses these (base64 alone would read b"" and b"\0\0\0").
    found += [b"====", b"AAAA====", b"AA======", b"AAA=====", b"AAAAAAAA===="]
    for _ in range(4000):
        data = rng.randbytes(rng.randrange(0, 40))
        canonical = base64.urlsafe_b64encode(data).rstrip(b"=")
        found.append(canonical)
        found.append(base64.urlsafe_b64encode(data))  # with its padding
        found.append(canonical + b"=" * rng.randrange(1, 4))
        chars = bytearray(canonical or b"A")
        chars[rng.randrange(len(chars))] = rng.choice(alphabet + foreign)
        found.append(bytes(chars))
        found.append(bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 9))))
    return found


def _outcome(check: Callable[[bytes, str], bytes], segment: bytes) -> object:
    try:
        return check(segment, "payload")
    except jwt.DecodeError as e:
        return ("refused", str(e))


def test_the_decoder_checks_segments_exactly_as_pyjwt_does() -> None:
    """``jws.decoder`` swaps PyJWT's per-character alphabet loop for a regular expression
    (its docstring); every segment must fare the same, value or message."""
    fast = decoder._jws._decode_base64url_segment
    assert type(decoder._jws) is not jwt.PyJWS, "the decoder is PyJWT's own again"
    reference = jwt.PyJWS._decode_base64url_segment
    differing = [
        segment
        for segment in _segments()
        if _outcome(fast, segment) != _outcome(reference, segment)
    ]
    assert differing == []


def test_the_decoder_verifies_and_refuses_as_jwt_decode() -> None:
    token = jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256")
    assert decoder.decode(token, "k" * 32, algorithms=["HS256"]) == {"sub": "x"}
    header, payload, signature = token.split(".")
    for forged in (f"{header}.{payload}!.{signature}", f"{header}.{payload}.{signature}=="):
        with pytest.raises(jwt.DecodeError, match="padding"):
            decoder.decode(forged, "k" * 32, algorithms=["HS256"])
    with pytest.raises(jwt.InvalidSignatureError):
        decoder.decode(token, "w" * 32, algorithms=["HS256"])


def test_the_decoder_uses_its_own_segment_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should a PyJWT upgrade stop calling the override (a renamed attribute, another code
    path), PyJWT's own slower check would apply and nothing would fail: this notices."""
    calls: list[bytes] = []
    check = type(decoder._jws)._decode_base64url_segment

    def counting(segment: bytes, name: str) -> bytes:
        calls.append(segment)
        return check(segment, name)

    monkeypatch.setattr(type(decoder._jws), "_decode_base64url_segment", staticmethod(counting))
    token = jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256")
    decoder.decode(token, "k" * 32, algorithms=["HS256"])
    assert len(calls) == 3  # header, payload, signature
