"""A hostile identity provider through the whole sign-in (README, *Security model*).

Each ID-token misbehaviour runs the real flow: ``/initiate``, the fake Entra tenant's
authorization endpoint (which mints the misbehaving token at its token endpoint), then the
callback. Every one must end at ``SIGN_IN_ERROR_URL?error=invalid_id_token`` for the reason
meant (read from the "sign-in failed" log record), with no sign-in session, login code or
identity link written. The rules themselves have unit tests in ``test_id_token.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sso_broker.models import LoginCode, SignInSession
from tests.conftest import Factory
from tests.fixtures.entra import CLIENT_ID, FakeEntra
from tests.sso.helpers import (
    OTHER_TENANT,
    assert_error,
    assert_nothing_created,
    count,
    login_code,
    setup,
    start,
    unpublished_key,
)

OTHER_CLIENT = "f1e2d3c4-b5a6-4978-8a6b-5c4d3e2f1a0b"
HOUR = 3600
WEEK = 7 * 24 * HOUR


@dataclass(frozen=True)
class Hostile:
    """A misbehaviour: what it does to the tenant, the ``authorize`` options, the reason."""

    name: str
    reason: str
    options: Callable[[FakeEntra], dict[str, Any]]


def unpublished_key_with_published_kid(entra: FakeEntra) -> dict[str, Any]:
    return {"key": unpublished_key(), "kid": entra.signing_key.kid}


def no_kid_among_several_keys(entra: FakeEntra) -> dict[str, Any]:
    entra.rotate_keys(keep_old=True)
    assert len(entra.jwks()["keys"]) == 2
    return {"kid": None}


def expired(entra: FakeEntra) -> dict[str, Any]:
    now = int(time.time())
    return {"iat": now - 2 * HOUR, "nbf": now - 2 * HOUR, "exp": now - HOUR}


def issued_a_week_ago(entra: FakeEntra) -> dict[str, Any]:
    now = int(time.time())
    return {"iat": now - WEEK, "nbf": now - WEEK}


def missing(claim: str) -> Hostile:
    return Hostile(f"missing-{claim}", f"lacks {claim}", lambda entra: {claim: ...})


HOSTILE = [
    Hostile(
        "unpublished-key-published-kid",
        "signature does not verify",
        unpublished_key_with_published_kid,
    ),
    Hostile("alg-none", "signed with 'none', not RS256", lambda e: {"alg": "none"}),
    Hostile(
        "hs256-client-secret",
        "signed with 'HS256', not RS256",
        lambda e: {"alg": "HS256", "kid": e.signing_key.kid},
    ),
    Hostile("rs384", "signed with 'RS384', not RS256", lambda e: {"alg": "RS384"}),
    Hostile(
        "wrong-iss",
        "issuer is not the configured provider's",
        lambda e: {"iss": f"{e.authority}/{OTHER_TENANT}/v2.0"},
    ),
    Hostile("wrong-tid", "tenant is not the configured tenant", lambda e: {"tid": OTHER_TENANT}),
    Hostile("wrong-aud", "audience is not (only)", lambda e: {"aud": OTHER_CLIENT}),
    Hostile(
        "extra-untrusted-aud",
        "audience is not (only)",
        lambda e: {"aud": [CLIENT_ID, OTHER_CLIENT]},
    ),
    *(missing(claim) for claim in ("sub", "iat", "exp", "nonce", "oid", "tid")),
    Hostile("expired", "has expired", expired),
    Hostile("iat-a-week-old", "issued too long ago", issued_a_week_ago),
    Hostile(
        "nonce-mismatch",
        "nonce does not match this sign-in",
        lambda e: {"nonce": "the-nonce-of-another-sign-in"},
    ),
    Hostile(
        "no-kid-several-keys",
        "names no key and the key set holds several",
        no_kid_among_several_keys,
    ),
    Hostile(
        "unknown-kid",
        "key is not in the provider's key set",
        lambda e: {"kid": "a-kid-entra-never-published"},
    ),
]


def failure_reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        str(getattr(record, "reason", ""))
        for record in caplog.records
        if record.getMessage() == "sign-in failed"
    ]


@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.name for h in HOSTILE])
async def test_a_hostile_id_token_fails_the_sign_in_and_writes_nothing(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    sessionmaker: async_sessionmaker[AsyncSession],
    caplog: pytest.LogCaptureFixture,
    hostile: Hostile,
) -> None:
    s = await setup(factory)
    options = hostile.options(entra)
    started = await start(client, s.provider)
    caplog.set_level(logging.WARNING, logger="sso_broker")  # not httpx: it logs the code

    response = await client.get(entra.authorize(started.location, user=s.person, **options))

    assert_error(response, "invalid_id_token")
    assert entra.token_calls == 1, "the code was exchanged: the ID token itself was refused"
    assert [r for r in failure_reasons(caplog) if hostile.reason in r], failure_reasons(caplog)
    await assert_nothing_created(sessionmaker, s.provider)


async def test_an_unknown_kid_refetches_the_keys_once_then_fails(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """With the keys cached by an earlier sign-in, an unknown kid fetches them once more."""
    s = await setup(factory)
    started = await start(client, s.provider)
    login_code(await client.get(entra.authorize(started.location, user=s.person)))
    assert entra.jwks_calls == 1
    sessions_before = await count(sessionmaker, SignInSession)
    codes_before = await count(sessionmaker, LoginCode)

    for kid in ("forged-kid-1", "forged-kid-2"):
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person, kid=kid)
        assert_error(await client.get(back), "invalid_id_token")
    assert entra.jwks_calls == 2, "one refetch for the first unknown kid, none for the second"
    assert await count(sessionmaker, SignInSession) == sessions_before
    assert await count(sessionmaker, LoginCode) == codes_before


def no_kid_with_one_key(entra: FakeEntra) -> dict[str, Any]:
    assert len(entra.jwks()["keys"]) == 1
    return {"kid": None}


def one_unparseable_key_beside_the_good_one(entra: FakeEntra) -> dict[str, Any]:
    entra.add_jwks_entry({"kty": "RSA", "kid": "unparseable", "n": "!!", "e": "AQAB"})
    return {}


@pytest.mark.parametrize(
    "options",
    [no_kid_with_one_key, one_unparseable_key_beside_the_good_one],
    ids=["no-kid-one-key", "unparseable-jwks-entry"],
)
async def test_a_tolerable_quirk_still_signs_in(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    sessionmaker: async_sessionmaker[AsyncSession],
    options: Callable[[FakeEntra], dict[str, Any]],
) -> None:
    s = await setup(factory)
    quirk = options(entra)
    started = await start(client, s.provider)

    response = await client.get(entra.authorize(started.location, user=s.person, **quirk))

    login_code(response)  # a 302 to SIGN_IN_COMPLETE_URL?code=...
    assert entra.jwks_calls == 1
    assert await count(sessionmaker, SignInSession, SignInSession.user_id == s.user.id) == 1
    assert await count(sessionmaker, LoginCode) == 1
