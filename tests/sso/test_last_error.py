"""``last_error``: a failure an administrator can fix is recorded on the provider, with the
provider's own code and what to do, never a secret (README, *Setting up Entra ID*)."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sso_broker.database import session_scope
from sso_broker.deps import AppContext
from sso_broker.models import (
    SSOProvider,
)
from tests.conftest import Factory
from tests.fixtures.entra import (
    CLIENT_SECRET,
    FakeEntra,
    error_body,
)
from tests.sso.helpers import (
    WRONG_SECRET,
    assert_error,
    last_error,
    login_code,
    rendered_logs,
    setup,
    sign_in,
)

# --- last_error -------------------------------------------------------------------------------


class TestLastError:
    async def test_a_wrong_secret_is_recorded_as_invalid_client_secret(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.DEBUG)
        s = await setup(factory, client_secret=WRONG_SECRET)

        assert_error(await sign_in(client, entra, s.provider, s.person), "token_exchange_failed")

        error = await last_error(client, factory, s)
        assert error is not None
        assert error["code"] == "invalid_client_secret"
        assert "AADSTS7000215" in error["message"]
        assert error["at"]
        logs = rendered_logs(caplog)
        assert "AADSTS7000215" in logs
        assert any(
            getattr(r, "provider_code", None) == "AADSTS7000215" and r.levelno >= logging.WARNING
            for r in caplog.records
        ), "a log line names the AADSTS code"
        assert WRONG_SECRET not in logs
        assert CLIENT_SECRET not in logs
        assert WRONG_SECRET not in json.dumps(error)

    @pytest.mark.parametrize(
        ("status", "error", "aadsts", "code"),
        [
            (401, "invalid_client", 7000215, "invalid_client_secret"),
            (401, "invalid_client", 7000222, "client_secret_expired"),
            (400, "unauthorized_client", 700016, "unknown_client_id"),
            (400, "invalid_request", 50011, "redirect_uri_mismatch"),
        ],
    )
    async def test_an_actionable_entra_error_is_recorded_as_last_error(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        caplog: pytest.LogCaptureFixture,
        status: int,
        error: str,
        aadsts: int,
        code: str,
    ) -> None:
        caplog.set_level(logging.DEBUG)
        s = await setup(factory)
        entra.token_error = (status, error_body(error, aadsts, "Something an admin must fix."))

        assert_error(await sign_in(client, entra, s.provider, s.person), "token_exchange_failed")

        recorded = await last_error(client, factory, s)
        assert recorded is not None
        assert recorded["code"] == code
        assert f"AADSTS{aadsts}" in recorded["message"]
        assert any(
            getattr(r, "provider_code", None) == f"AADSTS{aadsts}"
            and getattr(r, "last_error", None) == code
            for r in caplog.records
        )
        assert CLIENT_SECRET not in rendered_logs(caplog)

    async def test_a_plain_invalid_client_without_aadsts_is_recorded_too(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        """Another OpenID Provider (or a future Entra) may name no AADSTS code."""
        s = await setup(factory)
        entra.token_error = (
            401,
            {"error": "invalid_client", "error_description": "client authentication failed"},
        )
        assert_error(await sign_in(client, entra, s.provider, s.person), "token_exchange_failed")
        recorded = await last_error(client, factory, s)
        assert recorded is not None
        assert recorded["code"] == "invalid_client"
        assert "client secret" in recorded["message"]

    async def test_a_transient_failure_records_no_last_error(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        s = await setup(factory)
        entra.token_error = (400, error_body("invalid_grant", 70008, "The code has expired."))
        assert_error(await sign_in(client, entra, s.provider, s.person), "token_exchange_failed")
        assert await last_error(client, factory, s) is None

    async def test_a_successful_sign_in_clears_last_error(
        self,
        client: httpx.AsyncClient,
        factory: Factory,
        entra: FakeEntra,
        context: AppContext,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        s = await setup(factory, client_secret=WRONG_SECRET)
        assert_error(await sign_in(client, entra, s.provider, s.person), "token_exchange_failed")
        recorded = await last_error(client, factory, s)
        assert recorded is not None
        assert recorded["code"] == "invalid_client_secret"

        # The administrator pastes the secret's value.
        async with session_scope(sessionmaker) as session:
            await session.execute(
                update(SSOProvider)
                .where(SSOProvider.id == s.provider.id)
                .values(client_secret_encrypted=context.box.encrypt(CLIENT_SECRET))
            )
        login_code(await sign_in(client, entra, s.provider, s.person))

        assert await last_error(client, factory, s) is None
