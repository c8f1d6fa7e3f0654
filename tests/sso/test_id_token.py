"""ID-token validation (README, *Security model*): one test, or parametrized group, per rule.

Each token is minted by the fake Entra tenant and validated the way the callback does it:
``id_token.validate`` with the metadata and the key lookup of an ``TenantDirectory`` talking
to the respx-mocked tenant. No database is involved.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from dataclasses import dataclass
from functools import cache
from types import EllipsisType
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sso_broker.errors import SignInError, SignInErrorCode
from sso_broker.sso import id_token
from sso_broker.sso.discovery import JWKS_REFETCH_INTERVAL, JWKS_TTL
from sso_broker.sso.id_token import LEEWAY, MAX_AGE, MAX_TOKEN_LENGTH, IdTokenClaims
from tests.fixtures.entra import (
    AUTHORITY,
    CLIENT_ID,
    CLIENT_SECRET,
    TENANT_ID,
    EntraUser,
    FakeEntra,
    at_hash,
)
from tests.sso.conftest import ENTRA, FakeClock, TenantDirectory

NONCE = "0S6_WzA2Mj-nonce-of-this-sign-in"
ACCESS_TOKEN = "eyJ0eXAiOiJKV1QiLCJub25jZSI6.access-token-issued-with-the-id-token"
OTHER_TENANT = "0d2e1c3b-5a4f-4e6d-8c7b-1a2b3c4d5e6f"
OTHER_CLIENT = "f1e2d3c4-b5a6-4978-8a6b-5c4d3e2f1a0b"


@cache
def other_rsa_key() -> rsa.RSAPrivateKey:
    """An RSA key Entra never published."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def user() -> EntraUser:
    return EntraUser.make()


@dataclass
class Validator:
    """Validates tokens as the callback does, against the fake tenant."""

    entra: FakeEntra
    directory: TenantDirectory
    user: EntraUser

    def mint(self, *, nonce: str | EllipsisType | None = NONCE, **options: Any) -> str:
        """A token for ``user``; ``nonce=...`` (like any claim set to ``...``) omits it."""
        return self.entra.id_token(user=self.user, nonce=None if nonce is ... else nonce, **options)

    async def validate(
        self, token: str, *, nonce: str = NONCE, access_token: str | None = None
    ) -> IdTokenClaims:
        return await id_token.validate(
            token,
            metadata=await self.directory.metadata(TENANT_ID),
            client_id=CLIENT_ID,
            nonce=nonce,
            access_token=access_token,
            signing_key=self.directory.signing_key,
            adapter=ENTRA,
        )

    async def accept(self, token: str, **kwargs: Any) -> IdTokenClaims:
        return await self.validate(token, **kwargs)

    async def reject(self, token: str, reason: str, **kwargs: Any) -> SignInError:
        with pytest.raises(SignInError) as caught:
            await self.validate(token, **kwargs)
        assert caught.value.code is SignInErrorCode.INVALID_ID_TOKEN
        assert reason in caught.value.reason, caught.value.reason
        return caught.value


@pytest.fixture
def v(entra: FakeEntra, directory: TenantDirectory, user: EntraUser) -> Validator:
    return Validator(entra=entra, directory=directory, user=user)


def now() -> int:
    return int(time.time())


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")

    def decode(part: str) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        return value

    return decode(header), decode(payload), signature


def b64url_json(value: dict[str, Any]) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# ---------------------------------------------------------------------------------------------
# A valid token, and what validate() returns
# ---------------------------------------------------------------------------------------------


async def test_a_valid_token_is_accepted(v: Validator, entra: FakeEntra) -> None:
    claims = await v.accept(v.mint(access_token=ACCESS_TOKEN), access_token=ACCESS_TOKEN)
    assert claims.namespace == TENANT_ID
    assert claims.subject == v.user.oid
    assert claims.email == v.user.email
    assert claims.name == v.user.name
    assert claims.sid == v.user.sid
    assert claims.login_hint == v.user.login_hint
    assert claims.raw["sub"] == entra.subject(v.user)
    assert entra.discovery_calls == 1
    assert entra.jwks_calls == 1


async def test_a_second_token_uses_the_cached_keys(v: Validator, entra: FakeEntra) -> None:
    await v.accept(v.mint())
    await v.accept(v.mint())
    assert entra.jwks_calls == 1


async def test_email_falls_back_to_preferred_username(v: Validator) -> None:
    v.user = EntraUser.make(email=None, preferred_username="AdeleV@contoso.onmicrosoft.com")
    claims = await v.accept(v.mint())
    assert "email" not in claims.raw
    assert claims.email == "AdeleV@contoso.onmicrosoft.com"

    claims = await v.accept(v.mint(email=""))
    assert claims.email == "AdeleV@contoso.onmicrosoft.com"

    # Entra's email is the user's mail attribute, which guests and user administrators set:
    # only with xms_edov (the domain owner verified it) does it beat the UPN.
    claims = await v.accept(v.mint(email="adele@contoso.com"))
    assert claims.email == "AdeleV@contoso.onmicrosoft.com"
    claims = await v.accept(v.mint(email="adele@contoso.com", xms_edov=True))
    assert claims.email == "adele@contoso.com"
    for edov in (False, "true", 1, None):
        claims = await v.accept(v.mint(email="adele@contoso.com", xms_edov=edov))
        assert claims.email == "AdeleV@contoso.onmicrosoft.com", edov
    # xms_edov without an email falls back to the UPN too.
    claims = await v.accept(v.mint(email=..., xms_edov=True))
    assert claims.email == "AdeleV@contoso.onmicrosoft.com"


async def test_a_upn_that_is_not_an_email_links_nobody(v: Validator) -> None:
    for upn in ("adele", "adele@", "adele@contoso.com\n", "adele@cont\u212aso.com"):
        claims = await v.accept(v.mint(email=..., preferred_username=upn))
        assert claims.email is None, upn


async def test_no_email_at_all_gives_none(v: Validator) -> None:
    claims = await v.accept(v.mint(email=..., preferred_username=...))
    assert claims.email is None


async def test_tenant_and_object_ids_are_lower_cased(v: Validator) -> None:
    oid = "A1B2C3D4-0000-4000-8000-00000000ABCD"
    claims = await v.accept(v.mint(tid=TENANT_ID.upper(), oid=oid))
    assert claims.namespace == TENANT_ID
    assert claims.subject == oid.lower()


async def test_an_overlong_oid_is_refused(v: Validator) -> None:
    await v.reject(v.mint(oid="a" * 65), "oid is malformed")


# ---------------------------------------------------------------------------------------------
# Signature and algorithm
# ---------------------------------------------------------------------------------------------


async def test_a_signature_by_another_key_with_the_right_kid_is_refused(
    v: Validator, entra: FakeEntra
) -> None:
    token = v.mint(key=other_rsa_key(), kid=entra.signing_key.kid)
    await v.reject(token, "signature does not verify")


async def test_a_tampered_payload_is_refused(v: Validator) -> None:
    token = v.mint()
    header, _, signature = token.split(".")
    claims = segments(token)[1]
    claims["oid"] = "00000000-0000-4000-8000-000000000666"
    await v.reject(f"{header}.{b64url_json(claims)}.{signature}", "signature does not verify")


@pytest.mark.parametrize("with_kid", [True, False])
async def test_alg_none_is_refused(v: Validator, entra: FakeEntra, with_kid: bool) -> None:
    token = v.mint(alg="none", kid=entra.signing_key.kid if with_kid else None)
    assert token.endswith(".")
    await v.reject(token, "not RS256")


async def test_hs256_signed_with_the_client_secret_is_refused(
    v: Validator, entra: FakeEntra
) -> None:
    token = v.mint(alg="HS256", kid=entra.signing_key.kid)
    assert jwt.decode(token, CLIENT_SECRET, algorithms=["HS256"], audience=CLIENT_ID)
    await v.reject(token, "not RS256")


async def test_hs256_signed_with_the_public_key_is_refused(v: Validator, entra: FakeEntra) -> None:
    public_jwk = json.dumps(entra.signing_key.public_jwk())
    await v.reject(v.mint(alg="HS256", key=public_jwk, kid=entra.signing_key.kid), "not RS256")


@pytest.mark.parametrize("alg", ["RS384", "RS512"])
async def test_other_rsa_pkcs1_algorithms_are_refused(
    v: Validator, entra: FakeEntra, alg: str
) -> None:
    # Signed with the published key itself: only the pinned algorithm stands in the way.
    await v.reject(v.mint(alg=alg), "not RS256")


async def test_ps256_with_the_published_key_is_refused(v: Validator, entra: FakeEntra) -> None:
    claims = segments(v.mint())[1]
    token = jwt.encode(
        claims,
        entra.signing_key.private_pem,
        algorithm="PS256",
        headers={"kid": entra.signing_key.kid},
    )
    await v.reject(token, "not RS256")


async def test_es256_is_refused(v: Validator, entra: FakeEntra) -> None:
    claims = segments(v.mint())[1]
    token = jwt.encode(
        claims,
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": entra.signing_key.kid},
    )
    await v.reject(token, "not RS256")


async def test_a_refused_algorithm_costs_no_key_lookup(v: Validator, entra: FakeEntra) -> None:
    await v.reject(v.mint(alg="none"), "not RS256")
    assert entra.jwks_calls == 0


async def test_an_oversized_token_is_refused_before_any_request(
    v: Validator, entra: FakeEntra
) -> None:
    token = v.mint(padding="x" * MAX_TOKEN_LENGTH)
    assert len(token) > MAX_TOKEN_LENGTH
    await v.reject(token, "oversized")
    assert entra.jwks_calls == 0


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "not-a-jwt",
        "a.b.c",
        "a.b",
        "....",
        "eyJhbGciOiJSUzI1NiJ9",
        "%%%.%%%.%%%",
        base64.urlsafe_b64encode(b"[1,2,3]").decode() + ".e30.",
        base64.urlsafe_b64encode(b'{"alg":"RS256","kid":7}').decode().rstrip("=") + ".e30.",
    ],
)
async def test_garbage_is_refused(v: Validator, garbage: str) -> None:
    await v.reject(garbage, "not a JWT")


# ---------------------------------------------------------------------------------------------
# Key lookup: kid, unknown kids, rotation, unusable JWKS entries
# ---------------------------------------------------------------------------------------------


async def test_no_kid_with_a_single_key_uses_that_key(v: Validator) -> None:
    await v.accept(v.mint(kid=None))


async def test_no_kid_with_several_keys_is_refused(v: Validator, entra: FakeEntra) -> None:
    entra.rotate_keys(keep_old=True)
    assert len(entra.jwks()["keys"]) == 2
    await v.reject(v.mint(kid=None), "names no key and the key set holds several")
    # A token naming its key still works.
    await v.accept(v.mint())


async def test_an_unknown_kid_fetches_the_keys_again_once_per_interval(
    v: Validator, entra: FakeEntra, clock: FakeClock
) -> None:
    await v.accept(v.mint())
    assert entra.jwks_calls == 1

    clock.advance(JWKS_REFETCH_INTERVAL)  # the cached set is no longer fresh
    await v.reject(v.mint(kid="unknown-kid-1"), "not in the provider's key set")
    assert entra.jwks_calls == 2, "an unknown kid fetches the set again"

    clock.advance(JWKS_REFETCH_INTERVAL - 1)
    await v.reject(v.mint(kid="unknown-kid-2"), "not in the provider's key set")
    assert entra.jwks_calls == 2, "a second unknown kid within 5 minutes must not fetch"

    await v.accept(v.mint())
    assert entra.jwks_calls == 2

    clock.advance(1)
    await v.reject(v.mint(kid="unknown-kid-3"), "not in the provider's key set")
    assert entra.jwks_calls == 3


async def test_unknown_kids_refetch_once_then_wait_for_the_interval(
    v: Validator, entra: FakeEntra, clock: FakeClock
) -> None:
    # The first lookup fetches the set: fresh, it answers for that kid without a refetch.
    await v.reject(v.mint(kid="unknown-kid"), "not in the provider's key set")
    assert entra.jwks_calls == 1
    # The next unknown kid fetches the set once more, at once ...
    await v.reject(v.mint(kid="another-unknown-kid"), "not in the provider's key set")
    assert entra.jwks_calls == 2
    # ... and then no request until the interval has passed.
    await v.reject(v.mint(kid="a-third-unknown-kid"), "not in the provider's key set")
    assert entra.jwks_calls == 2
    clock.advance(JWKS_REFETCH_INTERVAL)
    await v.reject(v.mint(kid="a-fourth-unknown-kid"), "not in the provider's key set")
    assert entra.jwks_calls == 3


async def test_a_flood_of_unknown_kids_fetches_once(
    v: Validator, entra: FakeEntra, clock: FakeClock
) -> None:
    await v.accept(v.mint())
    clock.advance(JWKS_REFETCH_INTERVAL)
    tokens = [v.mint(kid=f"forged-{n}") for n in range(20)]
    results = await asyncio.gather(*(v.validate(token) for token in tokens), return_exceptions=True)
    assert all(
        isinstance(result, SignInError) and result.code is SignInErrorCode.INVALID_ID_TOKEN
        for result in results
    ), results
    assert entra.jwks_calls == 2


async def test_key_rotation_between_two_sign_ins(
    v: Validator, entra: FakeEntra, clock: FakeClock
) -> None:
    old_token = v.mint()
    await v.accept(old_token)
    assert entra.jwks_calls == 1

    new_kid = entra.rotate_keys()
    new_token = v.mint()
    assert segments(new_token)[0]["kid"] == new_kid

    clock.advance(JWKS_REFETCH_INTERVAL)
    await v.accept(new_token)
    assert entra.jwks_calls == 2, "exactly one refetch"
    await v.accept(v.mint())
    assert entra.jwks_calls == 2

    # The retired key left the published set: a token it signed is refused, with no fetch.
    await v.reject(old_token, "not in the provider's key set")
    assert entra.jwks_calls == 2


async def test_rotation_moments_after_a_fetch_is_picked_up_at_once(
    v: Validator, entra: FakeEntra
) -> None:
    await v.accept(v.mint())
    entra.rotate_keys()
    await v.accept(v.mint())  # the new kid is unknown: one refetch finds it
    assert entra.jwks_calls == 2
    entra.rotate_keys()
    await v.reject(v.mint(), "not in the provider's key set")  # a second rotation must wait
    assert entra.jwks_calls == 2


async def test_keys_are_fetched_again_after_their_ttl(
    v: Validator, entra: FakeEntra, clock: FakeClock
) -> None:
    await v.accept(v.mint())
    clock.advance(JWKS_TTL)
    await v.accept(v.mint())
    assert entra.jwks_calls == 2


async def test_cached_keys_serve_while_the_key_set_is_unreachable(
    v: Validator, entra: FakeEntra, clock: FakeClock
) -> None:
    await v.accept(v.mint())
    entra.jwks_response_override = httpx.ConnectError("down")
    clock.advance(JWKS_TTL)
    await v.accept(v.mint())
    assert entra.jwks_calls == 2


async def test_an_unreachable_key_set_with_nothing_cached_is_an_idp_error(
    v: Validator, entra: FakeEntra
) -> None:
    entra.jwks_response_override = httpx.Response(503, text="Service Unavailable")
    with pytest.raises(SignInError) as caught:
        await v.validate(v.mint())
    assert caught.value.code is SignInErrorCode.IDP_ERROR


async def test_an_unparseable_jwks_entry_does_not_spoil_the_good_key(
    v: Validator, entra: FakeEntra
) -> None:
    entra.add_jwks_entry({"kty": "RSA", "kid": "bad", "n": "!!", "e": "AQAB"})
    entra.add_jwks_entry({"kty": "RSA", "kid": "no-modulus", "e": "AQAB"})
    entra.add_jwks_entry({"kty": "EC", "kid": "no-curve"})
    entra.add_jwks_entry("not an object")  # type: ignore[arg-type]
    await v.accept(v.mint())
    assert entra.jwks_calls == 1
    # The unusable entries are not keys: a token naming one is refused.
    await v.reject(v.mint(kid="bad"), "not in the provider's key set")


@pytest.mark.parametrize(
    "extra",
    [{"use": "enc"}, {"alg": "RS384"}],
    ids=["encryption key", "other algorithm"],
)
async def test_a_key_published_for_something_else_is_not_used(
    v: Validator, entra: FakeEntra, extra: dict[str, str]
) -> None:
    (published,) = entra.jwks()["keys"]
    entra.keys = []
    entra.add_jwks_entry({**published, **extra})
    with pytest.raises(SignInError) as caught:
        await v.validate(v.mint())
    assert caught.value.code is SignInErrorCode.IDP_ERROR  # no usable key at all


# ---------------------------------------------------------------------------------------------
# Claims: iss, tid, aud, azp, presence
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "issuer",
    [
        f"{AUTHORITY}/{OTHER_TENANT}/v2.0",
        f"{AUTHORITY}/{TENANT_ID}/v2.0/",
        f"{AUTHORITY}/{TENANT_ID.upper()}/v2.0",
        f"https://sts.windows.net/{TENANT_ID}/",
        f"{AUTHORITY}/{{tenantid}}/v2.0",
        f"https://evil.test/{TENANT_ID}/v2.0",
    ],
)
async def test_a_wrong_issuer_is_refused(v: Validator, issuer: str) -> None:
    await v.reject(v.mint(iss=issuer), "issuer")


async def test_a_wrong_tenant_is_refused(v: Validator) -> None:
    await v.reject(v.mint(tid=OTHER_TENANT), "tenant")


async def test_a_wrong_audience_is_refused(v: Validator) -> None:
    await v.reject(v.mint(aud=OTHER_CLIENT), "audience")


@pytest.mark.parametrize(
    "audience",
    [[CLIENT_ID, OTHER_CLIENT], [OTHER_CLIENT, CLIENT_ID], [CLIENT_ID, CLIENT_ID], []],
)
async def test_an_extra_untrusted_audience_is_refused(v: Validator, audience: list[str]) -> None:
    await v.reject(v.mint(aud=audience), "audience")


async def test_an_audience_list_of_only_us_is_accepted(v: Validator) -> None:
    await v.accept(v.mint(aud=[CLIENT_ID]))


async def test_azp_of_another_client_is_refused(v: Validator) -> None:
    await v.reject(v.mint(azp=OTHER_CLIENT), "authorized party")
    await v.accept(v.mint(azp=CLIENT_ID))


@pytest.mark.parametrize("claim", ["sub", "iat", "exp", "nonce", "tid", "oid", "iss", "aud"])
async def test_a_missing_claim_is_refused(v: Validator, claim: str) -> None:
    await v.reject(v.mint(**{claim: ...}), f"lacks {claim}")


@pytest.mark.parametrize("claim", ["sub", "nonce", "tid", "oid", "iss", "aud"])
async def test_an_empty_claim_is_refused(v: Validator, claim: str) -> None:
    await v.reject(v.mint(**{claim: ""}), f"lacks {claim}")


# ---------------------------------------------------------------------------------------------
# Times
# ---------------------------------------------------------------------------------------------


async def test_expired_beyond_the_leeway_is_refused(v: Validator) -> None:
    t = now()
    await v.reject(v.mint(iat=t - 900, nbf=t - 900, exp=t - LEEWAY - 30), "expired")


async def test_expired_within_the_leeway_is_accepted(v: Validator) -> None:
    t = now()
    await v.accept(v.mint(iat=t - 900, nbf=t - 900, exp=t - LEEWAY + 30))


async def test_not_before_in_the_future_beyond_the_leeway_is_refused(v: Validator) -> None:
    await v.reject(v.mint(nbf=now() + LEEWAY + 30), "not valid yet")


async def test_not_before_in_the_future_within_the_leeway_is_accepted(v: Validator) -> None:
    await v.accept(v.mint(nbf=now() + LEEWAY - 30))


async def test_issued_in_the_future_is_refused(v: Validator) -> None:
    t = now()
    await v.reject(v.mint(iat=t + LEEWAY + 30, nbf=t), "issued in the future")


@pytest.mark.parametrize("age", [7 * 24 * 3600, 2 * 3600], ids=["a week", "two hours"])
async def test_issued_too_long_ago_is_refused(v: Validator, age: int) -> None:
    t = now()
    await v.reject(v.mint(iat=t - age, nbf=t - age, exp=t + 600), "issued too long ago")


async def test_a_token_minted_by_a_clock_a_few_minutes_off_is_accepted(
    v: Validator, entra: FakeEntra
) -> None:
    entra.clock = lambda: time.time() + LEEWAY - 30
    await v.accept(v.mint())
    entra.clock = lambda: time.time() - LEEWAY + 30
    await v.accept(v.mint())


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": float("inf")},
        {"exp": float("nan")},
        {"iat": float("nan")},
        {"nbf": float("nan")},
        {"exp": 10**400},
        {"exp": "4102444800"},
        {"exp": True},
    ],
    ids=["exp Infinity", "exp NaN", "iat NaN", "nbf NaN", "exp huge", "exp string", "exp true"],
)
async def test_times_that_are_not_finite_numbers_are_refused(
    v: Validator, claims: dict[str, Any]
) -> None:
    await v.reject(v.mint(**claims), "not numbers")


# ---------------------------------------------------------------------------------------------
# nonce and at_hash
# ---------------------------------------------------------------------------------------------


async def test_a_nonce_mismatch_is_refused(v: Validator) -> None:
    await v.reject(v.mint(nonce="the-nonce-of-another-sign-in"), "nonce does not match")


async def test_at_hash_mismatch_is_refused(v: Validator) -> None:
    token = v.mint(access_token="another access token")
    await v.reject(token, "at_hash does not match", access_token=ACCESS_TOKEN)


async def test_at_hash_without_an_access_token_is_refused(v: Validator) -> None:
    token = v.mint(access_token=ACCESS_TOKEN)
    await v.reject(token, "no access token came with it")


async def test_a_correct_at_hash_is_accepted(v: Validator) -> None:
    claims = await v.accept(v.mint(access_token=ACCESS_TOKEN), access_token=ACCESS_TOKEN)
    assert claims.raw["at_hash"] == at_hash(ACCESS_TOKEN)


async def test_no_at_hash_with_an_access_token_is_accepted(v: Validator) -> None:
    await v.accept(v.mint(), access_token=ACCESS_TOKEN)


# ---------------------------------------------------------------------------------------------
# Each check_* function on its own
# ---------------------------------------------------------------------------------------------


def refused(reason: str) -> Any:
    return pytest.raises(SignInError, match=reason)


def test_check_header(entra: FakeEntra, user: EntraUser) -> None:
    assert id_token.check_header(entra.id_token(user=user, nonce=NONCE)) == entra.signing_key.kid
    assert id_token.check_header(entra.id_token(user=user, nonce=NONCE, kid=None)) is None
    assert id_token.check_header(entra.id_token(user=user, nonce=NONCE, kid="k" * 128)) == "k" * 128
    with refused("kid is malformed"):
        id_token.check_header(entra.id_token(user=user, nonce=NONCE, kid="k" * 129))
    with refused("not a JWT"):
        id_token.check_header(entra.id_token(user=user, nonce=NONCE, kid=12345))  # type: ignore[arg-type]
    for alg in ("rs256", "RS256 ", "", None):
        token = entra.id_token(user=user, nonce=NONCE, headers={"alg": alg})
        with refused("not RS256"):
            id_token.check_header(token)
    with refused("not RS256"):
        id_token.check_header(entra.id_token(user=user, nonce=NONCE, headers={"alg": ...}))
    with refused("oversized"):
        id_token.check_header("x" * (MAX_TOKEN_LENGTH + 1))
    with refused("not a JWT"):  # at the limit the length rule lets it through
        id_token.check_header("x" * MAX_TOKEN_LENGTH)


def test_check_header_errors_carry_the_invalid_id_token_code() -> None:
    with pytest.raises(SignInError) as caught:
        id_token.check_header("garbage")
    assert caught.value.code is SignInErrorCode.INVALID_ID_TOKEN
    assert isinstance(caught.value.__cause__, jwt.PyJWTError)


def test_check_signature(entra: FakeEntra, user: EntraUser) -> None:
    key = jwt.PyJWK(entra.signing_key.public_jwk(), algorithm="RS256")
    good = entra.id_token(user=user, nonce=NONCE)
    assert id_token.check_signature(good, key)["oid"] == user.oid
    with refused("signature does not verify"):
        id_token.check_signature(entra.id_token(user=user, nonce=NONCE, key=other_rsa_key()), key)
    header, payload, _ = good.split(".")
    with refused("cannot be decoded"):
        id_token.check_signature(f"{header}.{payload}.A", key)  # not base64url
    not_json = jwt.api_jws.encode(
        b"not json",
        entra.signing_key.private_pem,
        algorithm="RS256",
        headers={"kid": entra.signing_key.kid},
    )
    with refused("cannot be decoded"):  # correctly signed, but the payload is no claim set
        id_token.check_signature(not_json, key)
    # Times are left to check_times: an expired token still passes the signature rule.
    expired = entra.id_token(user=user, nonce=NONCE, exp=1, iat=1, nbf=1)
    assert id_token.check_signature(expired, key)["exp"] == 1


def claim_set(**overrides: Any) -> dict[str, Any]:
    t = now()
    claims: dict[str, Any] = {
        "iss": f"{AUTHORITY}/{TENANT_ID}/v2.0",
        "sub": "pairwise-subject",
        "aud": CLIENT_ID,
        "exp": t + 3600,
        "iat": t,
        "nbf": t,
        "nonce": NONCE,
        "tid": TENANT_ID,
        "oid": "a1b2c3d4-0000-4000-8000-000000000001",
    }
    for name, value in overrides.items():
        if value is ...:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def test_check_required() -> None:
    id_token.check_required(claim_set())
    id_token.check_required(claim_set(iat=0))  # zero is present (check_times judges it)
    for name in id_token.REQUIRED_CLAIMS:
        for value in (..., None, ""):
            with refused(f"lacks {name}"):
                id_token.check_required(claim_set(**{name: value}))
    with refused("lacks sub, nonce"):
        id_token.check_required(claim_set(sub=..., nonce=None))
    # Entra's identity claims are required of Entra's tokens only.
    id_token.check_required(claim_set(tid=..., oid=...))
    for name in ("tid", "oid"):
        with refused(f"lacks {name}"):
            id_token.check_required(claim_set(**{name: ...}), ENTRA.required_claims)


async def test_check_issuer_and_tenant(directory: TenantDirectory) -> None:
    metadata = await directory.metadata(TENANT_ID)
    id_token.check_issuer(claim_set(), metadata)
    for issuer in (f"{AUTHORITY}/{TENANT_ID}/v2.0/", f"{AUTHORITY}/{OTHER_TENANT}/v2.0", [1]):
        with refused("issuer"):
            id_token.check_issuer(claim_set(iss=issuer), metadata)
    assert ENTRA.check_claims(claim_set(), metadata.tenant_id) is None
    assert ENTRA.check_claims(claim_set(tid=TENANT_ID.upper()), metadata.tenant_id) is None
    for tenant in (OTHER_TENANT, f" {TENANT_ID}", [TENANT_ID]):
        reason = ENTRA.check_claims(claim_set(tid=tenant), metadata.tenant_id)
        assert reason is not None
        assert "tenant" in reason


def test_check_audience() -> None:
    id_token.check_audience(claim_set(), CLIENT_ID)
    id_token.check_audience(claim_set(aud=[CLIENT_ID]), CLIENT_ID)
    id_token.check_audience(claim_set(azp=CLIENT_ID), CLIENT_ID)
    for audience in (
        OTHER_CLIENT,
        CLIENT_ID.upper(),
        [CLIENT_ID, OTHER_CLIENT],
        [CLIENT_ID, CLIENT_ID],
        [],
        [[CLIENT_ID]],
    ):
        with refused("audience"):
            id_token.check_audience(claim_set(aud=audience), CLIENT_ID)
    for azp in (OTHER_CLIENT, ""):
        with refused("authorized party"):
            id_token.check_audience(claim_set(azp=azp), CLIENT_ID)


def test_check_times_at_the_edges() -> None:
    t = 1_700_000_000.0
    check = id_token.check_times

    def claims(**overrides: Any) -> dict[str, Any]:
        return {"exp": t + 3600, "iat": t, "nbf": t, **overrides}

    check(claims(), now=t)
    check({"exp": t + 1, "iat": t}, now=t)  # nbf is optional
    check(claims(nbf=None), now=t)

    check(claims(exp=t - LEEWAY), now=t)
    with refused("expired"):
        check(claims(exp=t - LEEWAY - 1), now=t)

    check(claims(nbf=t + LEEWAY), now=t)
    with refused("not valid yet"):
        check(claims(nbf=t + LEEWAY + 1), now=t)

    check(claims(iat=t + LEEWAY), now=t)
    with refused("issued in the future"):
        check(claims(iat=t + LEEWAY + 1), now=t)

    check(claims(iat=t - MAX_AGE - LEEWAY), now=t)
    with refused("issued too long ago"):
        check(claims(iat=t - MAX_AGE - LEEWAY - 1), now=t)

    # Floats are NumericDates too.
    check(claims(exp=t + 0.5, iat=t - 0.5, nbf=t - 0.5), now=t)


def test_check_times_uses_the_wall_clock_by_default() -> None:
    t = time.time()
    id_token.check_times({"exp": t + 60, "iat": t})
    with refused("expired"):
        id_token.check_times({"exp": t - LEEWAY - 60, "iat": t - 600})


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": "soon"},
        {"exp": "4102444800"},
        {"iat": None},
        {"exp": [1]},
        {"nbf": {}},
        {"exp": True},
        {"iat": False},
        {"exp": float("inf")},
        {"exp": float("nan")},
        {"iat": float("nan")},
        {"iat": float("-inf")},
        {"nbf": float("nan")},
        {"nbf": float("-inf")},
        {"exp": 10**400},
        {"iat": -(10**400)},
    ],
    ids=lambda overrides: ", ".join(f"{k}={str(v)[:12]}" for k, v in overrides.items()),
)
def test_check_times_refuses_what_is_not_a_finite_number(overrides: dict[str, Any]) -> None:
    t = 1_700_000_000
    with refused("not numbers"):
        id_token.check_times({"exp": t + 3600, "iat": t, "nbf": t, **overrides}, now=t)


def test_check_nonce() -> None:
    id_token.check_nonce(claim_set(), NONCE)
    id_token.check_nonce(claim_set(nonce="nonce-é-ü"), "nonce-é-ü")
    for nonce in ("other", NONCE[:-1], NONCE + "x", NONCE.upper(), "é"):
        with refused("nonce does not match"):
            id_token.check_nonce(claim_set(nonce=nonce), NONCE)


def test_check_at_hash() -> None:
    id_token.check_at_hash(claim_set(), None)
    id_token.check_at_hash(claim_set(), ACCESS_TOKEN)
    id_token.check_at_hash(claim_set(at_hash=at_hash(ACCESS_TOKEN)), ACCESS_TOKEN)
    for access_token in (None, ""):
        with refused("no access token"):
            id_token.check_at_hash(claim_set(at_hash=at_hash(ACCESS_TOKEN)), access_token)
    for value in (at_hash("other"), at_hash(ACCESS_TOKEN) + "=", "", 42):
        with refused("at_hash does not match"):
            id_token.check_at_hash(claim_set(at_hash=value), ACCESS_TOKEN)
    # A full-length (not left-half) hash is not the at_hash.
    full = base64.urlsafe_b64encode(hashlib.sha256(ACCESS_TOKEN.encode()).digest())
    with refused("at_hash does not match"):
        id_token.check_at_hash(claim_set(at_hash=full.decode().rstrip("=")), ACCESS_TOKEN)
    with refused("at_hash does not match"):
        id_token.check_at_hash(claim_set(at_hash=at_hash(ACCESS_TOKEN)), "accès non-ASCII")


async def test_a_key_the_provider_withdrew_stops_verifying_within_an_hour(
    v: Validator, entra: FakeEntra, clock: FakeClock
) -> None:
    """A withdrawn key (say, a compromised one) is dropped at the next refresh of the key set,
    an hour at most after the last: tokens it signs are refused from then on."""
    old = entra.signing_key
    await v.accept(v.mint())
    entra.rotate_keys(keep_old=False)
    clock.advance(3600)
    await v.reject(v.mint(key=old), "not in the provider's key set")


def short_key(entra: FakeEntra, bits: int) -> rsa.RSAPrivateKey:
    """A key of ``bits`` bits, published in ``entra``'s key set (``extra_jwks``) as ``weak``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    entra.add_jwks_entry({**jwk, "use": "sig", "kid": "weak"})
    return key


@pytest.mark.parametrize("bits", [1024, 2047], ids=["1024 bits", "2047 bits"])
async def test_a_key_too_short_to_trust_is_never_used(
    v: Validator, entra: FakeEntra, bits: int
) -> None:
    """RFC 7518 (3.3): RS256 keys have 2048 bits or more. A shorter one in the key set is
    skipped, so a token it signs is refused, while the provider's good key goes on working."""
    weak = short_key(entra, bits)
    await v.accept(v.mint())
    await v.reject(v.mint(key=weak, kid="weak"), "not in the provider's key set")


async def test_a_key_set_of_short_keys_only_has_no_usable_key(
    v: Validator, entra: FakeEntra
) -> None:
    entra.keys = []
    weak = short_key(entra, 1024)
    with pytest.raises(SignInError) as caught:
        await v.validate(v.mint(key=weak, kid="weak"))
    assert caught.value.code is SignInErrorCode.IDP_ERROR  # no usable key at all


async def test_a_key_published_with_its_private_part_is_never_used(
    v: Validator, entra: FakeEntra
) -> None:
    """A key set entry with its private members signs for anyone who read it; built, a
    ``d`` without its primes would also have them recovered on the event loop (seconds, for
    a large modulus)."""
    leaked = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(leaked, as_dict=True)
    entra.add_jwks_entry({**jwk, "use": "sig", "kid": "leaked"})
    await v.accept(v.mint())
    await v.reject(v.mint(key=leaked, kid="leaked"), "not in the provider's key set")
