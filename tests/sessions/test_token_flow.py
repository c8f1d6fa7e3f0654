"""Sessions end to end (README, *Signing in*): login codes, refresh rotation, /me, logout,
front-channel
logout and CORS, with sessions from real sign-ins through the fake Entra tenant."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import string
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from sqlalchemy import func, select, update

from sso_broker.companies.models import Company
from sso_broker.config import Settings
from sso_broker.database import session_scope, utcnow
from sso_broker.deps import AppContext
from sso_broker.models import Base, SSOProvider, User
from sso_broker.sessions import service as sessions_service
from sso_broker.sessions.models import LoginCode, RefreshToken, SignInSession
from sso_broker.users.models import Role
from tests.conftest import PUBLIC_URL, Factory
from tests.fixtures.entra import (
    CLIENT_ID,
    CLIENT_SECRET,
    TENANT_DOMAIN,
    TENANT_ID,
    EntraUser,
    FakeEntra,
)
from tests.pkce import CHALLENGE, PKCE, VERIFIER, code_grant
from tests.problems import assert_problem

TOKEN = "/api/v1/auth/token"
ME = "/api/v1/auth/me"
LOGOUT = "/api/v1/auth/logout"
FRONTEND = "https://app.example.com"
URL_SAFE = frozenset(string.ascii_letters + string.digits + "-_")
CLAIMS = {
    "iss",
    "aud",
    "sub",
    "company_id",
    "role",
    "email",
    "name",
    "sid",
    "provider_id",
    "iat",
    "exp",
    "jti",
}


# --- helpers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignIn:
    """A finished browser sign-in: the login code the frontend received, and who it is."""

    code: str
    session_id: uuid.UUID
    person: EntraUser
    provider: SSOProvider
    user: User


async def entra_provider(factory: Factory) -> SSOProvider:
    company = await factory.company()
    return await factory.provider(
        company, base_url=TENANT_ID, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, enabled=True
    )


async def sign_in(
    client: httpx.AsyncClient,
    entra: FakeEntra,
    factory: Factory,
    *,
    provider: SSOProvider | None = None,
    person: EntraUser | None = None,
) -> SignIn:
    """The happy path up to the login code. A new ``person`` is provisioned first; passing
    one that signed in before signs the same Entra account (same IdP ``sid``) in again."""
    context = factory.context
    if provider is None:
        provider = await entra_provider(factory)
    if person is None:
        person = EntraUser.make()
        assert person.email is not None
        async with context.sessionmaker() as session:
            company = await session.get(Company, provider.company_id)
        assert company is not None
        await factory.user(company, email=person.email, provider=provider)

    started = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)
    assert started.status_code == 302, started.text
    back = entra.authorize(started.headers["location"], user=person)
    finished = await client.get(back)
    assert finished.status_code == 302, finished.text
    location = urlsplit(finished.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == (
        f"{FRONTEND}/sso/complete"
    ), finished.headers["location"]
    code = parse_qs(location.query)["code"][0]

    async with context.sessionmaker() as session:
        row = (
            await session.execute(
                select(SignInSession, User)
                .join(User, User.id == SignInSession.user_id)
                .join(LoginCode, LoginCode.session_id == SignInSession.id)
                .where(LoginCode.code_hash == sha256(code))
            )
        ).one()
    sign_in_session, user = row
    assert sign_in_session.provider_id == provider.id
    assert sign_in_session.idp_sid == person.sid
    return SignIn(
        code=code, session_id=sign_in_session.id, person=person, provider=provider, user=user
    )


async def direct_session(
    context: AppContext,
    user: User,
    *,
    provider_id: uuid.UUID | None = None,
    idp_sid: str | None = None,
    lifetime: timedelta = timedelta(hours=1),
) -> tuple[uuid.UUID, str]:
    """A sign-in session made through sessions.service (no browser), and its login code."""
    async with session_scope(context.sessionmaker) as session:
        sign_in_session = await sessions_service.start(
            session, user, provider_id=provider_id, lifetime=lifetime, idp_sid=idp_sid
        )
        code = await sessions_service.create_login_code(
            session, sign_in_session, code_challenge=CHALLENGE
        )
    return sign_in_session.id, code


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def bearer(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


async def exchange(client: httpx.AsyncClient, code: str) -> dict[str, Any]:
    response = await client.post(TOKEN, json=code_grant(code))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post(
        TOKEN, json={"grant_type": "refresh_token", "refresh_token": refresh_token}
    )


def assert_invalid_grant(response: httpx.Response) -> None:
    assert_problem(response, 400, "invalid_grant")
    assert response.headers["cache-control"] == "no-store"


async def me_status(client: httpx.AsyncClient, access_token: str) -> int:
    return (await client.get(ME, headers=bearer(access_token))).status_code


async def stored_session(context: AppContext, session_id: uuid.UUID) -> SignInSession:
    async with context.sessionmaker() as session:
        found = await session.get(SignInSession, session_id)
    assert found is not None
    return found


async def set_session_expiry(context: AppContext, session_id: uuid.UUID, when: datetime) -> None:
    async with session_scope(context.sessionmaker) as session:
        await session.execute(
            update(SignInSession).where(SignInSession.id == session_id).values(expires_at=when)
        )


async def verified_claims(
    client: httpx.AsyncClient, settings: Settings, access_token: str
) -> dict[str, Any]:
    """The access token's claims, verified against the published JWKS as a relying party."""
    jwks = await client.get("/.well-known/jwks.json")
    assert jwks.status_code == 200
    header = jwt.get_unverified_header(access_token)
    key = jwt.PyJWKSet.from_dict(jwks.json())[header["kid"]]
    claims: dict[str, Any] = jwt.decode(
        access_token,
        key,
        algorithms=[header["alg"]],
        audience=settings.session_audience,
        issuer=PUBLIC_URL,
        options={"require": sorted(CLAIMS - {"provider_id"})},  # null without a provider
    )
    return claims


async def refresh_tokens_of(context: AppContext, session_id: uuid.UUID) -> int:
    """How many refresh tokens the session has: a refused grant must store none (the grant's
    one statement writes the next token only when the grant is good, ``fastpath.py``)."""
    async with context.sessionmaker() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(RefreshToken)
            .where(RefreshToken.session_id == session_id)
        )
    return int(count or 0)


async def everything_stored(context: AppContext) -> list[str]:
    """Every value of every row of every table, as text."""
    values: list[str] = []
    async with context.sessionmaker() as session:
        for table in Base.metadata.sorted_tables:
            for row in (await session.execute(select(table))).all():
                values.extend(str(value) for value in row)
    return values


def assert_high_entropy(samples: list[str]) -> None:
    """At least 128 bits each: URL-safe, all distinct, long enough for the alphabet in use,
    and no position stuck on a few values (no constant prefix, version nibble or counter)."""
    assert len(set(samples)) == len(samples)
    alphabet = set().union(*samples)
    assert alphabet <= URL_SAFE, alphabet - URL_SAFE
    shortest = min(len(sample) for sample in samples)
    assert shortest * math.log2(len(alphabet)) >= 128, (shortest, len(alphabet))
    for position in range(shortest):
        assert len({sample[position] for sample in samples}) >= 8, position


# --- the login-code grant ------------------------------------------------------------------


class TestLoginCodeGrant:
    async def test_a_login_code_buys_an_access_and_a_refresh_token(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, settings: Settings
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        response = await client.post(TOKEN, json=code_grant(signed_in.code))
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == settings.access_token_ttl
        assert isinstance(body["refresh_token"], str)
        assert body["refresh_token"] not in (body["access_token"], signed_in.code)
        assert await me_status(client, body["access_token"]) == 200

    async def test_the_access_token_carries_the_documented_claims(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, settings: Settings
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        before = int(time.time())
        body = await exchange(client, signed_in.code)
        after = int(time.time())

        header = jwt.get_unverified_header(body["access_token"])
        assert header["alg"] in ("ES256", "RS256")
        assert header["kid"]
        claims = await verified_claims(client, settings, body["access_token"])
        assert set(claims) == CLAIMS
        user = signed_in.user
        assert claims["iss"] == PUBLIC_URL
        assert claims["aud"] == settings.session_audience
        assert claims["sub"] == str(user.id)
        assert claims["company_id"] == str(signed_in.provider.company_id)
        assert claims["role"] == Role.USER.value
        assert claims["email"] == user.email
        assert claims["name"] == user.name
        assert claims["sid"] == str(signed_in.session_id)
        assert claims["provider_id"] == str(signed_in.provider.id)
        assert before <= claims["iat"] <= after
        assert claims["exp"] - claims["iat"] == settings.access_token_ttl

        again = await refresh(client, body["refresh_token"])
        assert again.status_code == 200, again.text
        newer = await verified_claims(client, settings, again.json()["access_token"])
        assert newer["jti"] != claims["jti"]
        assert newer["sid"] == claims["sid"]

    async def test_a_code_works_once(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        await exchange(client, signed_in.code)
        again = await client.post(TOKEN, json=code_grant(signed_in.code))
        assert_invalid_grant(again)

    async def test_an_unknown_code_is_an_invalid_grant(self, client: httpx.AsyncClient) -> None:
        response = await client.post(TOKEN, json=code_grant(sessions_service.new_secret_token()))
        assert_invalid_grant(response)

    async def test_a_code_lives_at_most_60_seconds(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, context: AppContext
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        async with context.sessionmaker() as session:
            stored = await session.get(LoginCode, sha256(signed_in.code))
        assert stored is not None
        assert stored.expires_at - utcnow() <= timedelta(seconds=60)

    async def test_an_expired_code_is_an_invalid_grant(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, context: AppContext
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        async with session_scope(context.sessionmaker) as session:
            await session.execute(
                update(LoginCode)
                .where(LoginCode.session_id == signed_in.session_id)
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
        response = await client.post(TOKEN, json=code_grant(signed_in.code))
        assert_invalid_grant(response)
        assert await refresh_tokens_of(context, signed_in.session_id) == 0

    async def test_of_two_concurrent_exchanges_exactly_one_wins(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        body = code_grant(signed_in.code)
        responses = await asyncio.gather(
            client.post(TOKEN, json=body), client.post(TOKEN, json=body)
        )
        assert sorted(r.status_code for r in responses) == [200, 400], [r.text for r in responses]
        loser = next(r for r in responses if r.status_code == 400)
        assert_invalid_grant(loser)

    async def test_many_concurrent_exchanges_of_one_code_yield_one_token(
        self, client: httpx.AsyncClient, factory: Factory, context: AppContext
    ) -> None:
        user = await factory.user(await factory.company())
        _, code = await direct_session(context, user)
        body = code_grant(code)
        responses = await asyncio.gather(*(client.post(TOKEN, json=body) for _ in range(8)))
        statuses = [r.status_code for r in responses]
        assert statuses.count(200) == 1, [r.text for r in responses]
        assert statuses.count(400) == 7, [r.text for r in responses]
        async with context.sessionmaker() as session:
            chains = (await session.scalars(select(RefreshToken))).all()
        assert len(chains) == 1

    async def test_only_hashes_of_codes_and_refresh_tokens_are_stored(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, context: AppContext
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        async with context.sessionmaker() as session:
            codes = (await session.scalars(select(LoginCode))).all()
        assert [c.code_hash for c in codes] == [sha256(signed_in.code)]
        assert not any(signed_in.code in value for value in await everything_stored(context))

        first = await exchange(client, signed_in.code)
        second = (await refresh(client, first["refresh_token"])).json()
        async with context.sessionmaker() as session:
            tokens = (await session.scalars(select(RefreshToken))).all()
        assert {t.token_hash for t in tokens} == {
            sha256(first["refresh_token"]),
            sha256(second["refresh_token"]),
        }
        assert all(t.session_id == signed_in.session_id for t in tokens)
        stored = await everything_stored(context)
        for secret in (signed_in.code, first["refresh_token"], second["refresh_token"]):
            assert not any(secret in value for value in stored)

    async def test_codes_carry_at_least_128_bits(
        self, factory: Factory, context: AppContext
    ) -> None:
        user = await factory.user(await factory.company())
        async with session_scope(context.sessionmaker) as session:
            sign_in_session = await sessions_service.start(
                session, user, provider_id=None, lifetime=timedelta(hours=1)
            )
            codes = [
                await sessions_service.create_login_code(
                    session, sign_in_session, code_challenge=CHALLENGE
                )
                for _ in range(200)
            ]
        assert_high_entropy(codes)

    async def test_refresh_tokens_carry_at_least_128_bits(
        self, factory: Factory, context: AppContext
    ) -> None:
        user = await factory.user(await factory.company())
        tokens = []
        for _ in range(100):
            _, code = await direct_session(context, user)
            pair = await sessions_service.grant(
                context.fast,
                context.sessionmaker,
                context.settings,
                context.keyring,
                context.successor_key,
                login_code=code,
                code_verifier=VERIFIER,
            )
            tokens.append(pair.refresh_token)
        assert_high_entropy(tokens)

    @pytest.mark.parametrize(
        "body",
        [
            {"grant_type": "password", "code": "abc"},
            {"grant_type": "authorization_code", "code": "abc"},
            {"grant_type": "client_credentials"},
            {"code": "abc"},
            {"grant_type": "login_code"},
            {"grant_type": "login_code", "refresh_token": "abc"},
            {"grant_type": "refresh_token"},
            {"grant_type": "refresh_token", "code": "abc"},
            code_grant(""),
            code_grant("x" * 257),
            code_grant(12345),  # type: ignore[arg-type]
            code_grant("abc", client_id="dashboard"),
            {"grant_type": "refresh_token", "refresh_token": "abc", "scope": "admin"},
            {},
            [],
        ],
    )
    async def test_malformed_bodies_are_validation_errors(
        self, client: httpx.AsyncClient, body: Any
    ) -> None:
        response = await client.post(TOKEN, json=body)
        assert_problem(response, 422, "validation_error")

    async def test_a_form_encoded_body_is_a_validation_error(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.post(TOKEN, data=code_grant("abc"))
        assert_problem(response, 422, "validation_error")

    @pytest.mark.parametrize(
        ("content_type", "status"),
        [
            ("application/json", 200),
            ("Application/JSON; charset=utf-8", 200),
            ("application/problem+json", 200),  # FastAPI reads any +json as JSON
            (None, 422),  # no content type is not JSON, as FastAPI reads it
            ("text/plain", 422),
            ("application/x-www-form-urlencoded", 422),
        ],
    )
    async def test_the_body_is_read_by_its_content_type(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        content_type: str | None,
        status: int,
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        headers = {} if content_type is None else {"Content-Type": content_type}
        body = json.dumps(code_grant(signed_in.code)).encode()
        response = await client.post(TOKEN, content=body, headers=headers)
        assert response.status_code == status, response.text
        assert response.headers["cache-control"] == "no-store"
        if status == 200:
            assert set(response.json()) == {
                "access_token", "token_type", "expires_in", "refresh_token"
            }  # fmt: skip

    async def test_validation_errors_do_not_echo_the_secret(
        self, client: httpx.AsyncClient
    ) -> None:
        secret = sessions_service.new_secret_token()
        response = await client.post(TOKEN, json=code_grant(secret, extra=secret))
        assert_problem(response, 422, "validation_error")
        assert secret not in response.text

    async def test_the_code_of_a_revoked_session_is_an_invalid_grant(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, context: AppContext
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        async with session_scope(context.sessionmaker) as session:
            await sessions_service.revoke(session, signed_in.session_id, reason="test")
        response = await client.post(TOKEN, json=code_grant(signed_in.code))
        assert_invalid_grant(response)
        assert await refresh_tokens_of(context, signed_in.session_id) == 0

    async def test_the_code_of_a_session_ended_by_front_channel_logout_is_refused(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        ended = await client.get(
            f"/sso/{signed_in.provider.id}/logout", params={"sid": signed_in.person.sid}
        )
        assert ended.status_code == 200
        response = await client.post(TOKEN, json=code_grant(signed_in.code))
        assert_invalid_grant(response)

    async def test_the_code_of_an_expired_session_is_refused(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, context: AppContext
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        await set_session_expiry(context, signed_in.session_id, utcnow() - timedelta(seconds=1))
        response = await client.post(TOKEN, json=code_grant(signed_in.code))
        assert_invalid_grant(response)
        assert await refresh_tokens_of(context, signed_in.session_id) == 0

    async def test_a_refresh_token_is_not_a_login_code(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        tokens = await exchange(client, signed_in.code)
        response = await client.post(TOKEN, json=code_grant(tokens["refresh_token"]))
        assert_invalid_grant(response)
        assert (await refresh(client, tokens["refresh_token"])).status_code == 200

    async def test_the_access_token_never_outlives_a_short_session(
        self, client: httpx.AsyncClient, factory: Factory, context: AppContext
    ) -> None:
        user = await factory.user(await factory.company())
        session_id, code = await direct_session(context, user, lifetime=timedelta(seconds=120))
        response = await client.post(TOKEN, json=code_grant(code))
        assert response.status_code == 200, response.text
        body = response.json()
        claims = await verified_claims(client, context.settings, body["access_token"])
        ends = (await stored_session(context, session_id)).expires_at
        assert claims["exp"] <= ends.timestamp()
        # expires_in tells the client the truth, not the configured TTL.
        assert 0 < body["expires_in"] <= 120
        assert claims["iat"] + body["expires_in"] == claims["exp"]


# --- the refresh-token grant ---------------------------------------------------------------


class TestRefreshGrant:
    async def test_refresh_tokens_rotate(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, settings: Settings
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        tokens = await exchange(client, signed_in.code)
        seen = {tokens["refresh_token"]}
        for _ in range(3):
            response = await refresh(client, tokens["refresh_token"])
            assert response.status_code == 200, response.text
            assert response.headers["cache-control"] == "no-store"
            tokens = response.json()
            assert tokens["token_type"] == "Bearer"
            assert tokens["expires_in"] == settings.access_token_ttl
            assert tokens["refresh_token"] not in seen
            seen.add(tokens["refresh_token"])
            assert await me_status(client, tokens["access_token"]) == 200

    async def test_a_reused_refresh_token_revokes_the_whole_session(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, context: AppContext
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        first = await exchange(client, signed_in.code)
        second = (await refresh(client, first["refresh_token"])).json()
        third = (await refresh(client, second["refresh_token"])).json()
        assert await me_status(client, third["access_token"]) == 200

        assert_invalid_grant(await refresh(client, first["refresh_token"]))

        assert (await stored_session(context, signed_in.session_id)).revoked_at is not None
        assert_invalid_grant(await refresh(client, third["refresh_token"]))
        assert_problem(
            await client.get(ME, headers=bearer(third["access_token"])), 401, "session_expired"
        )

    async def test_the_latest_token_presented_twice_also_ends_the_session(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        first = await exchange(client, signed_in.code)
        second = (await refresh(client, first["refresh_token"])).json()
        third = (await refresh(client, second["refresh_token"])).json()
        # Its successor was used: no grace, the copy ends the session.
        assert_invalid_grant(await refresh(client, first["refresh_token"]))
        assert_invalid_grant(await refresh(client, third["refresh_token"]))
        assert await me_status(client, third["access_token"]) == 401

    async def test_reuse_ends_only_that_session(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        again = await sign_in(
            client, entra, factory, provider=signed_in.provider, person=signed_in.person
        )
        mine = await exchange(client, signed_in.code)
        other = await exchange(client, again.code)
        next_one = (await refresh(client, mine["refresh_token"])).json()
        await refresh(client, next_one["refresh_token"])
        assert_invalid_grant(await refresh(client, mine["refresh_token"]))
        assert await me_status(client, other["access_token"]) == 200
        assert (await refresh(client, other["refresh_token"])).status_code == 200

    async def test_an_unknown_refresh_token_is_an_invalid_grant(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        tokens = await exchange(client, signed_in.code)
        assert_invalid_grant(await refresh(client, sessions_service.new_secret_token()))
        # Nothing was revoked by the stranger's guess.
        assert await me_status(client, tokens["access_token"]) == 200
        assert (await refresh(client, tokens["refresh_token"])).status_code == 200

    async def test_a_login_code_is_not_a_refresh_token(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        assert_invalid_grant(await refresh(client, signed_in.code))
        await exchange(client, signed_in.code)

    async def test_refresh_after_the_session_expired_is_an_invalid_grant(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, context: AppContext
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        tokens = await exchange(client, signed_in.code)
        await set_session_expiry(context, signed_in.session_id, utcnow() - timedelta(seconds=1))
        assert_invalid_grant(await refresh(client, tokens["refresh_token"]))
        assert await refresh_tokens_of(context, signed_in.session_id) == 1  # the spent one

    async def test_an_expired_refresh_token_is_an_invalid_grant(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, context: AppContext
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        tokens = await exchange(client, signed_in.code)
        async with session_scope(context.sessionmaker) as session:
            await session.execute(
                update(RefreshToken)
                .where(RefreshToken.token_hash == sha256(tokens["refresh_token"]))
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
        assert_invalid_grant(await refresh(client, tokens["refresh_token"]))
        assert await refresh_tokens_of(context, signed_in.session_id) == 1  # the spent one

    async def test_refresh_after_the_user_was_deleted_is_an_invalid_grant(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, context: AppContext
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        tokens = await exchange(client, signed_in.code)
        async with context.sessionmaker() as session:
            company = await session.get(Company, signed_in.provider.company_id)
        assert company is not None
        admin = await factory.user(company, Role.ADMINISTRATOR)
        deleted = await client.delete(
            f"/api/v1/users/{signed_in.user.id}", headers=await factory.headers(admin)
        )
        assert deleted.status_code == 204, deleted.text

        assert_invalid_grant(await refresh(client, tokens["refresh_token"]))
        assert await me_status(client, tokens["access_token"]) == 401

    async def test_a_refreshed_access_token_never_outlives_the_session(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, context: AppContext
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        tokens = await exchange(client, signed_in.code)
        ends = utcnow() + timedelta(seconds=90)
        await set_session_expiry(context, signed_in.session_id, ends)
        response = await refresh(client, tokens["refresh_token"])
        assert response.status_code == 200, response.text
        body = response.json()
        claims = await verified_claims(client, context.settings, body["access_token"])
        assert claims["exp"] <= ends.timestamp()
        assert 0 < body["expires_in"] <= 90
        assert claims["iat"] + body["expires_in"] == claims["exp"]
        async with context.sessionmaker() as session:
            stored = await session.get(RefreshToken, sha256(body["refresh_token"]))
        assert stored is not None
        assert stored.expires_at <= ends


# --- /me ------------------------------------------------------------------------------------


class TestMe:
    async def test_me_describes_user_company_and_session(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, context: AppContext
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        tokens = await exchange(client, signed_in.code)
        response = await client.get(ME, headers=bearer(tokens["access_token"]))
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert set(body) == {"user", "company", "session"}

        user = signed_in.user
        assert set(body["user"]) == {
            "id",
            "email",
            "name",
            "role",
            "sso_provider_id",
            "created_at",
            "updated_at",
        }
        assert body["user"]["id"] == str(user.id)
        assert body["user"]["email"] == user.email
        assert body["user"]["name"] == user.name
        assert body["user"]["role"] == "user"
        assert body["user"]["sso_provider_id"] == str(signed_in.provider.id)

        assert body["company"] == {"id": str(signed_in.provider.company_id), "name": "Contoso"}

        stored = await stored_session(context, signed_in.session_id)
        assert set(body["session"]) == {"id", "provider_id", "expires_at"}
        assert body["session"]["id"] == str(signed_in.session_id)
        assert body["session"]["provider_id"] == str(signed_in.provider.id)
        assert datetime.fromisoformat(body["session"]["expires_at"]) == stored.expires_at
        assert stored.expires_at - stored.created_at == timedelta(
            seconds=context.settings.session_max_age
        )

    async def test_me_of_a_session_without_provider(
        self, client: httpx.AsyncClient, factory: Factory
    ) -> None:
        user = await factory.user(await factory.company())
        response = await client.get(ME, headers=await factory.headers(user))
        assert response.status_code == 200, response.text
        assert response.json()["session"]["provider_id"] is None
        assert response.json()["user"]["id"] == str(user.id)

    async def test_a_revoked_session_is_401(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, context: AppContext
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        tokens = await exchange(client, signed_in.code)
        async with session_scope(context.sessionmaker) as session:
            await sessions_service.revoke(session, signed_in.session_id, reason="test")
        response = await client.get(ME, headers=bearer(tokens["access_token"]))
        assert_problem(response, 401, "session_expired")
        assert response.headers["www-authenticate"] == "Bearer"

    async def test_an_expired_session_is_401(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, context: AppContext
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        tokens = await exchange(client, signed_in.code)
        await set_session_expiry(context, signed_in.session_id, utcnow() - timedelta(seconds=1))
        assert_problem(
            await client.get(ME, headers=bearer(tokens["access_token"])), 401, "session_expired"
        )

    async def test_no_token_is_401(self, client: httpx.AsyncClient) -> None:
        response = await client.get(ME)
        assert_problem(response, 401, "not_authenticated")
        assert response.headers["www-authenticate"] == "Bearer"

    @pytest.mark.parametrize(
        "authorization", ["Bearer not-a-jwt", "Bearer a.b.c", "Basic dXNlcjpwYXNz"]
    )
    async def test_a_bad_token_is_401(self, client: httpx.AsyncClient, authorization: str) -> None:
        response = await client.get(ME, headers={"Authorization": authorization})
        assert response.status_code == 401, response.text
        assert response.json()["code"] in ("invalid_token", "not_authenticated")

    async def test_a_refresh_token_is_not_a_bearer_token(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        tokens = await exchange(client, signed_in.code)
        response = await client.get(ME, headers=bearer(tokens["refresh_token"]))
        assert_problem(response, 401, "invalid_token")


# --- logout -------------------------------------------------------------------------------


class TestLogout:
    async def test_logout_of_an_sso_session_returns_the_entra_end_session_url(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        tokens = await exchange(client, signed_in.code)
        response = await client.post(LOGOUT, headers=bearer(tokens["access_token"]))
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert set(body) == {"idp_logout_url"}
        url = urlsplit(body["idp_logout_url"])
        assert f"{url.scheme}://{url.netloc}{url.path}" == entra.end_session_endpoint
        assert parse_qs(url.query, strict_parsing=True) == {
            "client_id": [CLIENT_ID],
            "post_logout_redirect_uri": [f"{PUBLIC_URL}/sso/{signed_in.provider.id}/logout"],
            "logout_hint": [signed_in.person.login_hint],
        }

    async def test_logout_of_a_session_without_provider_returns_null(
        self, client: httpx.AsyncClient, factory: Factory
    ) -> None:
        user = await factory.user(await factory.company())
        headers = await factory.headers(user)
        response = await client.post(LOGOUT, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"idp_logout_url": None}
        assert_problem(await client.get(ME, headers=headers), 401, "session_expired")

    async def test_logout_ends_the_session_at_once(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, context: AppContext
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        first = await exchange(client, signed_in.code)
        tokens = (await refresh(client, first["refresh_token"])).json()
        assert (await client.post(LOGOUT, headers=bearer(tokens["access_token"]))).is_success

        assert_problem(
            await client.get(ME, headers=bearer(tokens["access_token"])), 401, "session_expired"
        )
        assert_problem(
            await client.get(ME, headers=bearer(first["access_token"])), 401, "session_expired"
        )
        assert_invalid_grant(await refresh(client, tokens["refresh_token"]))
        assert (await stored_session(context, signed_in.session_id)).revoked_at is not None

    async def test_logout_twice_is_401_the_second_time(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        tokens = await exchange(client, signed_in.code)
        assert (await client.post(LOGOUT, headers=bearer(tokens["access_token"]))).is_success
        again = await client.post(LOGOUT, headers=bearer(tokens["access_token"]))
        assert_problem(again, 401, "session_expired")

    async def test_logout_without_a_token_is_401(self, client: httpx.AsyncClient) -> None:
        assert_problem(await client.post(LOGOUT), 401, "not_authenticated")

    async def test_logout_ends_only_that_session(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        again = await sign_in(
            client, entra, factory, provider=signed_in.provider, person=signed_in.person
        )
        mine = await exchange(client, signed_in.code)
        other = await exchange(client, again.code)
        assert (await client.post(LOGOUT, headers=bearer(mine["access_token"]))).is_success
        assert await me_status(client, mine["access_token"]) == 401
        assert await me_status(client, other["access_token"]) == 200
        assert (await refresh(client, other["refresh_token"])).status_code == 200


# --- front-channel logout -------------------------------------------------------------------


class TestFrontChannelLogout:
    async def test_the_idp_sid_ends_every_session_of_that_provider_with_it(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, context: AppContext
    ) -> None:
        first = await sign_in(client, entra, factory)
        provider, person = first.provider, first.person
        second = await sign_in(client, entra, factory, provider=provider, person=person)
        assert second.session_id != first.session_id
        stranger = await sign_in(client, entra, factory, provider=provider)
        assert stranger.person.sid != person.sid
        # The same IdP sid at another provider (another company's tenant) is not this one's.
        fabrikam = await factory.company("Fabrikam")
        elsewhere = await factory.provider(fabrikam)
        other_user = await factory.user(fabrikam)
        _, elsewhere_code = await direct_session(
            context, other_user, provider_id=elsewhere.id, idp_sid=person.sid
        )

        ended = [await exchange(client, s.code) for s in (first, second)]
        alive = [await exchange(client, c) for c in (stranger.code, elsewhere_code)]

        response = await client.get(f"/sso/{provider.id}/logout", params={"sid": person.sid})
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"

        for tokens in ended:
            assert_problem(
                await client.get(ME, headers=bearer(tokens["access_token"])),
                401,
                "session_expired",
            )
            assert_invalid_grant(await refresh(client, tokens["refresh_token"]))
        for signed_in in (first, second):
            assert (await stored_session(context, signed_in.session_id)).revoked_at is not None
        for tokens in alive:
            assert await me_status(client, tokens["access_token"]) == 200
            assert (await refresh(client, tokens["refresh_token"])).status_code == 200

    async def test_without_sid_it_forwards_to_the_logged_out_page(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        tokens = await exchange(client, signed_in.code)
        for params in ({}, {"sid": ""}):
            response = await client.get(f"/sso/{signed_in.provider.id}/logout", params=params)
            assert response.status_code == 302, response.text
            assert response.headers["location"] == f"{FRONTEND}/sso/logged-out"
        assert await me_status(client, tokens["access_token"]) == 200

    async def test_an_unknown_provider_answers_200_and_ends_nothing(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        tokens = await exchange(client, signed_in.code)
        response = await client.get(
            f"/sso/{uuid.uuid4()}/logout", params={"sid": signed_in.person.sid}
        )
        assert response.status_code == 200, response.text
        assert await me_status(client, tokens["access_token"]) == 200

    @pytest.mark.parametrize("tenant", [TENANT_ID, TENANT_DOMAIN])
    async def test_an_iss_that_is_not_the_providers_ends_nothing(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra, tenant: str
    ) -> None:
        company = await factory.company()
        provider = await factory.provider(
            company, base_url=tenant, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
            enabled=True,
        )  # fmt: skip
        signed_in = await sign_in(client, entra, factory, provider=provider)
        tokens = await exchange(client, signed_in.code)
        url = f"/sso/{signed_in.provider.id}/logout"
        for iss in (entra.issuer + "/", entra.issuer.upper(), "https://evil.example", ""):
            response = await client.get(url, params={"sid": signed_in.person.sid, "iss": iss})
            assert response.status_code == 200, response.text
            assert await me_status(client, tokens["access_token"]) == 200, iss
        # The provider's own issuer (its metadata's, for a domain tenant) ends the session.
        response = await client.get(url, params={"sid": signed_in.person.sid, "iss": entra.issuer})
        assert response.status_code == 200, response.text
        assert await me_status(client, tokens["access_token"]) == 401

    async def test_an_unknown_sid_ends_nothing(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        signed_in = await sign_in(client, entra, factory)
        tokens = await exchange(client, signed_in.code)
        response = await client.get(
            f"/sso/{signed_in.provider.id}/logout", params={"sid": str(uuid.uuid4())}
        )
        assert response.status_code == 200, response.text
        assert await me_status(client, tokens["access_token"]) == 200


# --- CORS ------------------------------------------------------------------------------------


class TestCors:
    @staticmethod
    async def preflight(
        client: httpx.AsyncClient, path: str, origin: str, method: str, headers: str
    ) -> httpx.Response:
        return await client.options(
            path,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": headers,
            },
        )

    async def test_the_frontend_may_call_me_with_a_bearer_token(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await self.preflight(client, ME, FRONTEND, "GET", "authorization")
        assert response.status_code == 200, response.text
        assert response.headers["access-control-allow-origin"] == FRONTEND
        allowed = {
            h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
        }
        assert "authorization" in allowed
        assert "GET" in response.headers["access-control-allow-methods"]

    async def test_the_frontend_may_post_json_to_the_token_endpoint(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await self.preflight(client, TOKEN, FRONTEND, "POST", "content-type")
        assert response.status_code == 200, response.text
        assert response.headers["access-control-allow-origin"] == FRONTEND
        assert "POST" in response.headers["access-control-allow-methods"]

    async def test_actual_responses_name_the_frontend_origin(
        self, client: httpx.AsyncClient, factory: Factory
    ) -> None:
        user = await factory.user(await factory.company())
        headers = {**await factory.headers(user), "Origin": FRONTEND}
        response = await client.get(ME, headers=headers)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == FRONTEND

    async def test_another_origin_gets_no_allow_origin(self, client: httpx.AsyncClient) -> None:
        evil = "https://evil.example.com"
        response = await self.preflight(client, ME, evil, "GET", "authorization")
        assert "access-control-allow-origin" not in response.headers
        assert response.status_code == 400
        actual = await client.get(ME, headers={"Origin": evil})
        assert actual.status_code == 401
        assert "access-control-allow-origin" not in actual.headers

    async def test_cors_covers_the_api_only_and_never_allows_credentials(
        self, client: httpx.AsyncClient
    ) -> None:
        api = await self.preflight(client, ME, FRONTEND, "GET", "authorization")
        assert "access-control-allow-credentials" not in api.headers
        browser_route = await self.preflight(
            client, f"/sso/{uuid.uuid4()}/initiate", FRONTEND, "GET", "authorization"
        )
        assert "access-control-allow-origin" not in browser_route.headers
        jwks = await client.get("/.well-known/jwks.json", headers={"Origin": FRONTEND})
        assert "access-control-allow-origin" not in jwks.headers


class TestHousekeeping:
    async def test_purge_removes_only_expired_codes_and_refresh_tokens(
        self, factory: Factory, context: AppContext
    ) -> None:
        service = sessions_service
        user = await factory.user(await factory.company())
        async with session_scope(context.sessionmaker) as session:
            sign_in = await service.start(
                session, user, provider_id=None, lifetime=timedelta(hours=1)
            )
            live_code = await service.create_login_code(session, sign_in, code_challenge=CHALLENGE)
            await service.create_login_code(session, sign_in, code_challenge=CHALLENGE)
            for _ in range(2):
                session.add(
                    RefreshToken(
                        token_hash=service.token_hash(service.new_secret_token()),
                        session_id=sign_in.id,
                        expires_at=sign_in.expires_at,
                    )
                )
            await session.flush()
            past = utcnow() - timedelta(seconds=1)
            await session.execute(
                update(LoginCode)
                .where(LoginCode.code_hash != service.token_hash(live_code))
                .values(expires_at=past)
            )
            newest = await session.scalar(select(func.max(RefreshToken.token_hash)))
            await session.execute(
                update(RefreshToken)
                .where(RefreshToken.token_hash != newest)
                .values(expires_at=past)
            )
        async with session_scope(context.sessionmaker) as session:
            await service.purge_expired(session)
        async with session_scope(context.sessionmaker) as session:
            codes = (await session.scalars(select(LoginCode.code_hash))).all()
            tokens = (await session.scalars(select(RefreshToken.token_hash))).all()
        assert codes == [service.token_hash(live_code)]
        assert tokens == [newest]
