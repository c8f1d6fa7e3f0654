"""``/sso/{id}/callback``: the state, Entra's answer, the code exchange, the ID token.

README, *Signing in*: every failure is a ``302`` to ``SIGN_IN_ERROR_URL?error=<code>``; these
tests reach each code the callback can answer with, check that a failure leaves no session,
login code or identity link behind, and that the state cookie is cleared whatever happens.
Who signs in is ``test_user_resolution.py``; ``last_error``, ``test_last_error.py``.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sso_broker.database import session_scope, utcnow
from sso_broker.deps import AppContext
from sso_broker.fastpath import FastPath
from sso_broker.fastpath_sqlite import SQLiteFastPath
from sso_broker.models import (
    ConsumedState,
    LoginCode,
    SignInSession,
    SSOProvider,
)
from sso_broker.sso import service
from sso_broker.sso import state as state_module
from sso_broker.sso.state import LoginState, cookie_name
from tests.conftest import Factory
from tests.fixtures.entra import (
    CLIENT_ID,
    EntraUser,
    FakeEntra,
)
from tests.pkce import CHALLENGE
from tests.sso.helpers import (
    OTHER_TENANT,
    WRONG_SECRET,
    assert_cookie_cleared,
    assert_error,
    assert_nothing_created,
    count,
    disable_after_the_code_exchange,
    fresh_client,
    login_code,
    make_provider,
    rendered_logs,
    set_enabled,
    setup,
    sign_in,
    signed_in_user,
    start,
    unpublished_key,
)

# --- the state ------------------------------------------------------------------------------


class TestCallback:
    async def test_an_oversized_state_is_invalid_state_not_provider_not_found(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        ready = await setup(factory)
        response = await client.get(
            f"/sso/{ready.provider.id}/callback", params={"state": "s" * 600, "code": "c"}
        )
        assert_error(response, "invalid_state")

    async def test_callback_signs_in_and_clears_the_state_cookie(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        response = await client.get(entra.authorize(started.location, user=s.person))

        code = login_code(response)
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert_cookie_cleared(response, started, s.provider.id)
        assert started.cookie_name not in client.cookies
        assert len(code) >= 32
        assert await count(sessionmaker, SignInSession, SignInSession.user_id == s.user.id) == 1
        assert await count(sessionmaker, LoginCode) == 1
        assert await count(sessionmaker, ConsumedState) == 1
        assert await signed_in_user(client, response) == str(s.user.id)

    async def test_the_session_records_entra_sid_and_login_hint(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """What front-channel logout and the end-session URL need later."""
        s = await setup(factory)
        login_code(await sign_in(client, entra, s.provider, s.person))
        async with session_scope(sessionmaker) as session:
            stored = await session.scalar(
                select(SignInSession).where(SignInSession.provider_id == s.provider.id)
            )
        assert stored is not None
        assert stored.user_id == s.user.id
        assert stored.idp_sid == s.person.sid
        assert stored.login_hint == s.person.login_hint

    async def test_callback_rejects_missing_state(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person, response_params={"state": None})
        assert_error(await client.get(back), "invalid_state")
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_callback_rejects_empty_state(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person, response_params={"state": ""})
        assert_error(await client.get(back), "invalid_state")
        assert entra.token_calls == 0

    async def test_callback_rejects_state_without_its_cookie(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """Another browser (or one refusing cookies) cannot finish this browser's sign-in."""
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person)
        async with fresh_client(app) as other:
            assert_error(await other.get(back), "invalid_state")
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)
        # The rightful browser can still finish: a refused callback spends nothing.
        login_code(await client.get(back))

    async def test_callback_rejects_an_unknown_state(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        await start(client, s.provider)
        response = await client.get(
            f"/sso/{s.provider.id}/callback", params={"state": "x" * 43, "code": "1.Acode"}
        )
        assert_error(response, "invalid_state")
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_callback_rejects_the_cookie_of_another_attempt(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """The cookie of attempt B does not vouch for attempt A's state, under any name."""
        s = await setup(factory)
        first = await start(client, s.provider)
        second = await start(client, s.provider)
        back = entra.authorize(first.location, user=s.person)
        async with fresh_client(app) as other:
            # Only the other attempt's cookie, as it was set.
            assert_error(await other.get(back, headers=second.cookie_header), "invalid_state")
            # The other attempt's sealed state under this attempt's cookie name.
            swapped = {"Cookie": f"{first.cookie_name}={second.cookie_value}"}
            assert_error(await other.get(back, headers=swapped), "invalid_state")
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)

    @pytest.mark.parametrize("where", ["start", "middle", "end", "truncated", "garbage"])
    async def test_callback_rejects_a_tampered_cookie(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
        where: str,
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        value = started.cookie_value

        def flip(index: int) -> str:
            return value[:index] + ("A" if value[index] != "A" else "B") + value[index + 1 :]

        tampered = {
            "start": flip(10),
            "middle": flip(len(value) // 2),
            "end": flip(len(value) - 5),
            "truncated": value[: len(value) // 2],
            "garbage": "not-a-sealed-state",
        }[where]
        assert tampered != value
        back = entra.authorize(started.location, user=s.person)
        async with fresh_client(app) as other:
            response = await other.get(
                back, headers={"Cookie": f"{started.cookie_name}={tampered}"}
            )
        assert_error(response, "invalid_state")
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_callback_rejects_an_expired_state(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Ten minutes after initiate the attempt is over, cookie or not."""
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person)
        later = utcnow() + timedelta(minutes=10, seconds=1)
        monkeypatch.setattr(state_module, "utcnow", lambda: later)

        response = await client.get(back)

        assert_error(response, "invalid_state")
        assert_cookie_cleared(response, started, s.provider.id)
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_callback_accepts_a_state_just_before_it_expires(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person)
        later = utcnow() + timedelta(minutes=9, seconds=50)
        monkeypatch.setattr(state_module, "utcnow", lambda: later)
        login_code(await client.get(back))

    async def test_callback_rejects_a_sealed_state_with_a_past_expiry(
        self,
        app: FastAPI,
        context: AppContext,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """A genuine cookie (sealed with our keys) whose expiry has passed."""
        s = await setup(factory)
        login = LoginState(
            state="s" * 43,
            nonce="n" * 43,
            code_verifier="v" * 86,
            client_challenge=CHALLENGE,
            provider_id=s.provider.id,
            return_to=None,
            expires_at=utcnow() - timedelta(seconds=1),
        )
        sealed = login.seal(context.sealer)
        async with fresh_client(app) as browser:
            response = await browser.get(
                f"/sso/{s.provider.id}/callback",
                params={"state": login.state, "code": "1.Acode"},
                headers={"Cookie": f"{cookie_name(login.state, secure=True)}={sealed}"},
            )
        assert_error(response, "invalid_state")
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_callback_rejects_replayed_state(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """An authorization response works once, even with its cookie put back."""
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person)
        first = await client.get(back)
        login_code(first)
        assert started.cookie_name not in client.cookies

        client.cookies.set(
            started.cookie_name,
            started.cookie_value,
            domain="sso.example.com",
            path=f"/sso/{s.provider.id}/callback",
        )
        replayed = await client.get(back)

        assert_error(replayed, "invalid_state")
        assert_cookie_cleared(replayed, started, s.provider.id)
        assert entra.token_calls == 1, "the replay never reaches Entra"
        assert await count(sessionmaker, SignInSession, SignInSession.user_id == s.user.id) == 1
        assert await count(sessionmaker, LoginCode) == 1

    async def test_callback_rejects_a_state_spent_by_a_failed_callback(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """A failure after the state was checked still spends it."""
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person)
        entra.token_response_override = httpx.Response(503, text="busy")
        assert_error(await client.get(back), "token_exchange_failed")

        entra.token_response_override = None
        client.cookies.set(
            started.cookie_name,
            started.cookie_value,
            domain="sso.example.com",
            path=f"/sso/{s.provider.id}/callback",
        )
        assert_error(await client.get(back), "invalid_state")
        assert entra.token_calls == 1
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_callback_rejects_another_providers_state(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """Provider A's state and cookie, presented at provider B's callback."""
        s = await setup(factory)
        other_company = await factory.company("Fabrikam")
        other = await make_provider(factory, other_company)
        await factory.user(other_company, email=s.person.email, provider=other)
        started = await start(client, s.provider)
        back = httpx.URL(entra.authorize(started.location, user=s.person))
        moved = back.copy_with(path=f"/sso/{other.id}/callback")

        async with fresh_client(app) as browser:
            response = await browser.get(moved, headers=started.cookie_header)

        assert_error(response, "invalid_state")
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, other)
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_callback_rejects_an_oversized_state(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        s = await setup(factory)
        await start(client, s.provider)
        response = await client.get(
            f"/sso/{s.provider.id}/callback", params={"state": "s" * 300, "code": "1.Acode"}
        )
        assert_error(response, "invalid_state")

    async def test_callback_of_an_unknown_provider_is_provider_not_found(
        self, client: httpx.AsyncClient, entra: FakeEntra
    ) -> None:
        response = await client.get(
            f"/sso/{uuid.uuid4()}/callback", params={"state": "s" * 43, "code": "c"}
        )
        assert_error(response, "provider_not_found")
        assert_error(
            await client.get("/sso/not-a-uuid/callback", params={"state": "s"}),
            "provider_not_found",
        )

    async def test_callback_of_a_deleted_provider_is_provider_not_found(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person)
        async with session_scope(sessionmaker) as session:
            await session.execute(delete(SSOProvider).where(SSOProvider.id == s.provider.id))
        response = await client.get(back)
        assert_error(response, "provider_not_found")
        assert_cookie_cleared(response, started, s.provider.id)
        assert entra.token_calls == 0


class TestCookieCleared:
    async def test_the_cookie_is_cleared_on_failure(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        response = await client.get(entra.authorize_error(started.location))
        assert_error(response, "access_denied")
        assert_cookie_cleared(response, started, s.provider.id)
        assert started.cookie_name not in client.cookies

    async def test_the_cookie_is_cleared_on_an_unexpected_error(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        def broken(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError("boom")

        s = await setup(factory)
        started = await start(client, s.provider)
        monkeypatch.setattr(service, "choose_account", broken)
        response = await client.get(entra.authorize(started.location, user=s.person))
        assert_error(response, "server_error")
        assert_cookie_cleared(response, started, s.provider.id)


# --- Entra's answer ---------------------------------------------------------------------------


class TestIdpResponse:
    @pytest.mark.parametrize(
        ("error", "description"),
        [
            ("access_denied", "AADSTS65004: User declined to consent to access the app."),
            ("access_denied", "The user cancelled the sign-in."),
            ("access_denied", ""),
            (
                "invalid_request",
                "AADSTS50105: Your administrator has configured the application to block "
                "users unless they are specifically granted ('assigned') access.",
            ),
            (
                "unauthorized_client",
                "AADSTS50105: The signed in user 'adele@contoso.com' is not assigned to a role "
                "for the application.",
            ),
        ],
    )
    async def test_a_cancel_or_an_unassigned_user_is_access_denied(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
        caplog: pytest.LogCaptureFixture,
        error: str,
        description: str,
    ) -> None:
        caplog.set_level(logging.INFO)
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize_error(started.location, error=error, description=description)

        assert_error(await client.get(back), "access_denied")

        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)
        if description.startswith("AADSTS"):
            assert description.split(":")[0] in rendered_logs(caplog)

    @pytest.mark.parametrize(
        ("error", "description"),
        [
            ("invalid_request", "AADSTS900144: The request body must contain 'client_id'."),
            ("server_error", "AADSTS90033: A transient error has occurred. Please try again."),
            ("temporarily_unavailable", "AADSTS90006: The server is temporarily too busy."),
            ("login_required", "AADSTS50058: A silent sign-in request was sent but no user is."),
            ("consent_required", "AADSTS65001: The user or administrator has not consented."),
            ("invalid_client", ""),
            ("unexpected_thing", "no code at all"),
        ],
    )
    async def test_any_other_error_is_idp_error(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
        caplog: pytest.LogCaptureFixture,
        error: str,
        description: str,
    ) -> None:
        caplog.set_level(logging.INFO)
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize_error(started.location, error=error, description=description)

        response = await client.get(back)

        assert_error(response, "idp_error")
        assert_cookie_cleared(response, started, s.provider.id)
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)
        if description.startswith("AADSTS"):
            assert description.split(":")[0] in rendered_logs(caplog)

    async def test_an_error_response_without_state_is_invalid_state(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        """The state is checked first: an unsolicited error response is not ours to report."""
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize_error(started.location, response_params={"state": None})
        assert_error(await client.get(back), "invalid_state")

    async def test_a_response_without_code_is_idp_error(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person, response_params={"code": None})
        assert_error(await client.get(back), "idp_error")
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_a_wrong_iss_parameter_is_idp_error(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """RFC 9207: a response naming another issuer is a mix-up, whatever discovery says."""
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(
            started.location,
            user=s.person,
            response_params={"iss": f"https://login.entra.test/{OTHER_TENANT}/v2.0"},
        )
        assert_error(await client.get(back), "idp_error")
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_a_missing_iss_is_idp_error_when_discovery_promises_it(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        entra.discovery["authorization_response_iss_parameter_supported"] = True
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person, response_params={"iss": None})
        assert_error(await client.get(back), "idp_error")
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_the_right_iss_is_accepted_when_discovery_promises_it(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        entra.discovery["authorization_response_iss_parameter_supported"] = True
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person)
        assert parse_qs(urlsplit(back).query)["iss"] == [entra.issuer]
        assert await signed_in_user(client, await client.get(back)) == str(s.user.id)

    async def test_the_right_iss_is_accepted_when_discovery_is_silent(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person, response_params={"iss": None})
        assert "iss" not in parse_qs(urlsplit(back).query)
        login_code(await client.get(back))
        started = await start(client, s.provider)
        back = entra.authorize(
            started.location, user=s.person, response_params={"iss": entra.issuer}
        )
        login_code(await client.get(back))


# --- the code exchange ------------------------------------------------------------------------


class TestTokenExchange:
    async def test_a_wrong_client_secret_is_token_exchange_failed(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory, client_secret=WRONG_SECRET)
        started = await start(client, s.provider)
        response = await client.get(entra.authorize(started.location, user=s.person))
        assert_error(response, "token_exchange_failed")
        assert_cookie_cleared(response, started, s.provider.id)
        assert entra.token_calls == 1
        assert entra.token_requests[0]["client_secret"] == WRONG_SECRET
        await assert_nothing_created(sessionmaker, s.provider)

    @pytest.mark.parametrize(
        "answer",
        [
            httpx.Response(500, json={"error": "server_error"}),
            httpx.Response(
                500,
                text="<!DOCTYPE html><html><body>Sorry, something went wrong</body></html>",
                headers={"Content-Type": "text/html"},
            ),
            httpx.Response(
                200,
                text="<html><body>captive portal</body></html>",
                headers={"Content-Type": "text/html"},
            ),
            httpx.Response(200, json={"access_token": "x", "token_type": "Bearer"}),
            httpx.Response(200, json={"id_token": 42, "access_token": "x"}),
            httpx.Response(200, json=["not", "an", "object"]),
            httpx.Response(200, json={"id_token": "x", "pad": "a" * 70_000}),
            httpx.Response(502, text=""),
        ],
        ids=[
            "500-json",
            "500-html",
            "200-html",
            "no-id-token",
            "id-token-not-text",
            "json-array",
            "oversized",
            "502-empty",
        ],
    )
    async def test_a_broken_token_endpoint_is_token_exchange_failed(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
        answer: httpx.Response,
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        entra.token_response_override = answer
        response = await client.get(entra.authorize(started.location, user=s.person))
        assert_error(response, "token_exchange_failed")
        assert entra.token_calls == 1
        await assert_nothing_created(sessionmaker, s.provider)

    @pytest.mark.parametrize(
        "failure",
        [
            httpx.ReadTimeout("timed out"),
            httpx.ConnectError("refused"),
            httpx.RemoteProtocolError("x"),
        ],
        ids=["read-timeout", "connect-error", "protocol-error"],
    )
    async def test_an_unreachable_token_endpoint_is_token_exchange_failed(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
        failure: Exception,
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        entra.token_response_override = failure
        response = await client.get(entra.authorize(started.location, user=s.person))
        assert_error(response, "token_exchange_failed")
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_a_rejected_code_is_token_exchange_failed(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        back = httpx.URL(entra.authorize(started.location, user=s.person))
        forged = back.copy_set_param("code", "1.Aforged-code")
        assert_error(await client.get(forged), "token_exchange_failed")
        await assert_nothing_created(sessionmaker, s.provider)


class TestIdToken:
    """A couple of invalid ID tokens end-to-end; each rule has its own tests elsewhere."""

    @pytest.mark.parametrize(
        "overrides",
        [
            {"nonce": "a-nonce-of-another-sign-in"},
            {"nonce": ...},
            {"aud": "f1e2d3c4-b5a6-4978-8a6b-5c4d3e2f1a0b"},
            {"aud": [CLIENT_ID, "f1e2d3c4-b5a6-4978-8a6b-5c4d3e2f1a0b"]},
            {"tid": OTHER_TENANT},
            {"iss": f"https://login.entra.test/{OTHER_TENANT}/v2.0"},
            {"exp": int(time.time()) - 3600},
        ],
        ids=["wrong-nonce", "no-nonce", "wrong-aud", "extra-aud", "other-tid", "other-iss", "exp"],
    )
    async def test_an_invalid_id_token_is_invalid_id_token(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
        overrides: dict[str, Any],
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        response = await client.get(entra.authorize(started.location, user=s.person, **overrides))
        assert_error(response, "invalid_id_token")
        assert_cookie_cleared(response, started, s.provider.id)
        assert entra.token_calls == 1
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_a_token_signed_by_an_unpublished_key_is_invalid_id_token(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        stranger = unpublished_key()
        back = entra.authorize(started.location, user=s.person, key=stranger)
        assert_error(await client.get(back), "invalid_id_token")
        await assert_nothing_created(sessionmaker, s.provider)


class TestProvisioningAndProvider:
    async def test_an_unknown_user_is_user_not_provisioned(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        stranger = EntraUser.make()
        response = await sign_in(client, entra, s.provider, stranger)
        assert_error(response, "user_not_provisioned")
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_a_provider_disabled_after_initiate_is_provider_disabled(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize(started.location, user=s.person)
        await set_enabled(sessionmaker, s.provider, False)

        response = await client.get(back)

        assert_error(response, "provider_disabled")
        assert_cookie_cleared(response, started, s.provider.id)
        assert entra.token_calls == 0
        await assert_nothing_created(sessionmaker, s.provider)

    async def test_a_provider_disabled_during_the_code_exchange_is_provider_disabled(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        s = await setup(factory)
        disable_after_the_code_exchange(monkeypatch, sessionmaker, s.provider)
        response = await sign_in(client, entra, s.provider, s.person)
        assert_error(response, "provider_disabled")
        assert entra.token_calls == 1
        await assert_nothing_created(sessionmaker, s.provider)


class TestServerError:
    @pytest.mark.parametrize("target", ["choose_account", "sign_in", "write_sign_in"])
    async def test_an_unexpected_exception_is_server_error_without_a_trace(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        sessionmaker: async_sessionmaker[AsyncSession],
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
        target: str,
    ) -> None:
        async def broken(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError("boom: internal detail")

        def broken_sync(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError("boom: internal detail")

        if target == "choose_account":
            monkeypatch.setattr(service, "choose_account", broken_sync)
        else:  # whichever database's hot path serves this test
            monkeypatch.setattr(FastPath, target, broken)
            monkeypatch.setattr(SQLiteFastPath, target, broken)
        s = await setup(factory)

        response = await sign_in(client, entra, s.provider, s.person)

        assert_error(response, "server_error")
        assert "boom" not in response.headers["location"]
        assert "Traceback" not in response.text
        await assert_nothing_created(sessionmaker, s.provider)
        assert any(r.levelno >= logging.ERROR and r.exc_info is not None for r in caplog.records), (
            "the failure is logged with its trace, for the operator"
        )


class TestMixUpOnErrorResponses:
    async def test_an_error_response_naming_another_issuer_is_idp_error(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        """RFC 9207 holds for error responses too: an access_denied that names another
        issuer is a mix-up, not the user's choice."""
        s = await setup(factory)
        started = await start(client, s.provider)
        back = entra.authorize_error(
            started.location, response_params={"iss": "https://login.evil.test/x/v2.0"}
        )
        assert_error(await client.get(back), "idp_error")
        started = await start(client, s.provider)
        back = entra.authorize_error(started.location, response_params={"iss": entra.issuer})
        assert_error(await client.get(back), "access_denied")
