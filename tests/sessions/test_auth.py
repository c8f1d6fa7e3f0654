"""The bearer dependency: every way a session JWT can be wrong gives 401, never access."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from sqlalchemy import update

from sso_broker.database import session_scope, utcnow
from sso_broker.deps import AppContext
from sso_broker.main import create_app
from sso_broker.sessions.models import SignInSession
from sso_broker.users.models import Role, User
from tests.conftest import PUBLIC_URL, Factory

PROTECTED = "/api/v1/sso-providers"


def _claims(user: User, session_id: uuid.UUID, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": PUBLIC_URL,
        "aud": "patchworks-dashboard",
        "sub": str(user.id),
        "company_id": str(user.company_id),
        "role": user.role.value,
        "email": user.email,
        "name": user.name,
        "sid": str(session_id),
        "provider_id": None,
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not ...}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


async def _session_for(context: AppContext, user: User) -> SignInSession:
    from sso_broker.sessions import service

    async with session_scope(context.sessionmaker) as session:
        return await service.start(session, user, provider_id=None, lifetime=timedelta(hours=1))


@pytest.fixture
async def admin(factory: Factory) -> User:
    return await factory.user(await factory.company(), Role.ADMINISTRATOR)


class TestBearer:
    async def test_valid_token_is_accepted(
        self, client: httpx.AsyncClient, factory: Factory, admin: User
    ) -> None:
        response = await client.get(PROTECTED, headers=await factory.headers(admin))
        assert response.status_code == 200

    async def test_token_claims_follow_the_readme(
        self, factory: Factory, admin: User, context: AppContext
    ) -> None:
        token = await factory.token(admin)
        header = jwt.get_unverified_header(token)
        assert header["alg"] == "ES256"
        assert header["kid"] == context.keyring.jwks["keys"][0]["kid"]
        claims = jwt.decode(token, options={"verify_signature": False})
        assert set(claims) == {
            "iss", "aud", "sub", "company_id", "role", "email", "name", "sid",
            "provider_id", "iat", "exp", "jti",
        }  # fmt: skip
        assert claims["iss"] == PUBLIC_URL
        assert claims["aud"] == "patchworks-dashboard"
        assert claims["sub"] == str(admin.id)
        assert claims["company_id"] == str(admin.company_id)
        assert claims["role"] == "administrator"
        assert claims["exp"] - claims["iat"] == 900

    async def test_missing_header_is_not_authenticated(self, client: httpx.AsyncClient) -> None:
        response = await client.get(PROTECTED)
        assert response.status_code == 401
        assert response.json()["code"] == "not_authenticated"
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.headers["content-type"] == "application/problem+json"

    @pytest.mark.parametrize(
        "value", ["Bearer", "Bearer not-a-jwt", "Basic dXNlcjpwYXNz", "Bearer a.b.c"]
    )
    async def test_malformed_credentials_are_refused(
        self, client: httpx.AsyncClient, value: str
    ) -> None:
        response = await client.get(PROTECTED, headers={"Authorization": value})
        assert response.status_code == 401
        assert response.json()["code"] in {"not_authenticated", "invalid_token"}

    async def test_oversized_token_is_refused(self, client: httpx.AsyncClient) -> None:
        response = await client.get(PROTECTED, headers={"Authorization": "Bearer " + "a" * 5000})
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_token"

    async def _assert_refused(
        self, client: httpx.AsyncClient, token: str, code: str = "invalid_token"
    ) -> None:
        response = await client.get(PROTECTED, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, response.text
        assert response.json()["code"] == code

    async def test_signature_by_another_key_is_refused(
        self, client: httpx.AsyncClient, admin: User, context: AppContext
    ) -> None:
        sign_in = await _session_for(context, admin)
        kid = context.keyring.jwks["keys"][0]["kid"]
        forged = jwt.encode(
            _claims(admin, sign_in.id),
            ec.generate_private_key(ec.SECP256R1()),
            algorithm="ES256",
            headers={"kid": kid},
        )
        await self._assert_refused(client, forged)

    async def test_alg_none_is_refused(
        self, client: httpx.AsyncClient, admin: User, context: AppContext
    ) -> None:
        sign_in = await _session_for(context, admin)
        kid = context.keyring.jwks["keys"][0]["kid"]
        header = _b64(json.dumps({"alg": "none", "kid": kid, "typ": "JWT"}).encode())
        payload = _b64(json.dumps(_claims(admin, sign_in.id)).encode())
        await self._assert_refused(client, f"{header}.{payload}.")

    async def test_hs256_keyed_with_the_public_key_is_refused(
        self, client: httpx.AsyncClient, admin: User, context: AppContext
    ) -> None:
        sign_in = await _session_for(context, admin)
        public = context.keyring.jwks["keys"][0]
        header = _b64(json.dumps({"alg": "HS256", "kid": public["kid"], "typ": "JWT"}).encode())
        payload = _b64(json.dumps(_claims(admin, sign_in.id)).encode())
        import hashlib
        import hmac

        signature = hmac.new(
            json.dumps(public).encode(), f"{header}.{payload}".encode(), hashlib.sha256
        ).digest()
        await self._assert_refused(client, f"{header}.{payload}.{_b64(signature)}")

    @pytest.mark.parametrize(
        ("claim", "value"),
        [
            ("iss", "https://evil.example.com"),
            ("aud", "another-audience"),
            ("exp", ...),
            ("sid", ...),
            ("sub", ...),
            ("company_id", ...),
            ("iat", ...),
            ("jti", ...),
            ("sub", "not-a-uuid"),
        ],
    )
    async def test_wrong_or_missing_claims_are_refused(
        self,
        client: httpx.AsyncClient,
        admin: User,
        context: AppContext,
        claim: str,
        value: Any,
    ) -> None:
        sign_in = await _session_for(context, admin)
        token = context.keyring.mint(_claims(admin, sign_in.id, **{claim: value}))
        await self._assert_refused(client, token)

    async def test_expired_token_is_refused(
        self, client: httpx.AsyncClient, admin: User, context: AppContext
    ) -> None:
        sign_in = await _session_for(context, admin)
        past = int(time.time()) - 3600
        token = context.keyring.mint(_claims(admin, sign_in.id, iat=past - 900, exp=past))
        await self._assert_refused(client, token, "token_expired")

    async def test_unknown_kid_is_refused(
        self, client: httpx.AsyncClient, admin: User, context: AppContext
    ) -> None:
        sign_in = await _session_for(context, admin)
        token = jwt.encode(
            _claims(admin, sign_in.id),
            ec.generate_private_key(ec.SECP256R1()),
            algorithm="ES256",
            headers={"kid": "unknown-kid"},
        )
        await self._assert_refused(client, token)

    async def test_token_of_another_company_claim_is_refused(
        self, client: httpx.AsyncClient, admin: User, context: AppContext, factory: Factory
    ) -> None:
        other = await factory.company("Fabrikam")
        sign_in = await _session_for(context, admin)
        token = context.keyring.mint(_claims(admin, sign_in.id, company_id=str(other.id)))
        await self._assert_refused(client, token)

    async def test_session_of_another_user_is_refused(
        self, client: httpx.AsyncClient, admin: User, context: AppContext, factory: Factory
    ) -> None:
        someone = await factory.user(await factory.company("Other"), Role.ADMINISTRATOR)
        their_session = await _session_for(context, someone)
        token = context.keyring.mint(_claims(admin, their_session.id))
        await self._assert_refused(client, token)

    async def test_deleted_user_is_refused(
        self, client: httpx.AsyncClient, admin: User, context: AppContext, factory: Factory
    ) -> None:
        token = await factory.token(admin)
        async with session_scope(context.sessionmaker) as session:
            await session.delete(await session.get(User, admin.id))
        await self._assert_refused(client, token)

    async def test_revoked_session_is_refused(
        self, client: httpx.AsyncClient, admin: User, context: AppContext, factory: Factory
    ) -> None:
        token = await factory.token(admin)
        async with session_scope(context.sessionmaker) as session:
            await session.execute(update(SignInSession).values(revoked_at=utcnow()))
        await self._assert_refused(client, token, "session_expired")

    async def test_expired_session_is_refused_even_with_a_live_token(
        self, client: httpx.AsyncClient, admin: User, context: AppContext, factory: Factory
    ) -> None:
        token = await factory.token(admin)
        async with session_scope(context.sessionmaker) as session:
            await session.execute(
                update(SignInSession).values(expires_at=utcnow() - timedelta(seconds=1))
            )
        await self._assert_refused(client, token, "session_expired")

    async def test_role_is_read_from_the_database_not_the_token(
        self, client: httpx.AsyncClient, admin: User, context: AppContext, factory: Factory
    ) -> None:
        headers = await factory.headers(admin)
        async with session_scope(context.sessionmaker) as session:
            stored = await session.get(User, admin.id)
            assert stored is not None
            stored.role = Role.READ_ONLY
        response = await client.get(PROTECTED, headers=headers)
        assert response.status_code == 403
        assert response.json()["code"] == "forbidden"


class TestJwks:
    async def test_jwks_publishes_the_signing_key_without_private_parts(
        self, client: httpx.AsyncClient, factory: Factory, admin: User
    ) -> None:
        response = await client.get("/.well-known/jwks.json")
        assert response.status_code == 200
        keys = response.json()["keys"]
        assert len(keys) >= 1
        for key in keys:
            assert (key["kty"], key["alg"], key["use"]) == ("EC", "ES256", "sig")
            assert "d" not in key
        token = await factory.token(admin)
        kid = jwt.get_unverified_header(token)["kid"]
        public = jwt.PyJWK(next(k for k in keys if k["kid"] == kid))
        claims = jwt.decode(token, public, algorithms=["ES256"], audience="patchworks-dashboard")
        assert claims["sub"] == str(admin.id)

    async def test_every_replica_signs_with_the_same_key(
        self, app: FastAPI, factory: Factory, admin: User, client: httpx.AsyncClient
    ) -> None:
        """A token minted by one app instance works on another over the same database."""
        context: AppContext = app.state.context
        second = create_app(context.settings)
        async with second.router.lifespan_context(second):
            other: AppContext = second.state.context
            assert other.keyring.jwks == context.keyring.jwks
            transport = httpx.ASGITransport(app=second)
            async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as http:
                response = await http.get(PROTECTED, headers=await factory.headers(admin))
        assert response.status_code == 200

    async def test_a_key_created_by_another_replica_is_picked_up(
        self, app: FastAPI, factory: Factory, admin: User, client: httpx.AsyncClient
    ) -> None:
        """An unknown kid reloads the key set from the database (rate-limited)."""
        from sso_broker.crypto import generate_signing_key
        from sso_broker.sessions.models import SigningKey
        from sso_broker.sessions.tokens import KeyRing

        context: AppContext = app.state.context
        material = generate_signing_key()
        async with session_scope(context.sessionmaker) as session:
            session.add(
                SigningKey(
                    kid=material.kid,
                    algorithm="ES256",
                    private_key_encrypted=context.box.encrypt(material.private_pem),
                    public_jwk=material.public_jwk,
                    created_at=utcnow() + timedelta(seconds=5),
                )
            )
        try:
            other = KeyRing(context.settings, context.box)
            async with session_scope(context.sessionmaker) as session:
                await other.load(session)
            sign_in = await _session_for(context, admin)
            token = other.mint(_claims(admin, sign_in.id))
            assert jwt.get_unverified_header(token)["kid"] == material.kid
            context.keyring._loaded_at = float("-inf")  # as if the last reload was long ago
            response = await client.get(PROTECTED, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200
        finally:
            async with session_scope(context.sessionmaker) as session:
                key = await session.get(SigningKey, material.kid)
                await session.delete(key)
