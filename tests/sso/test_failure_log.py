"""Every sign-in failure is one log line an operator can search (README, *Logs*): the
provider's id and type and the error code, never an email or a secret."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.conftest import Factory
from tests.fixtures.entra import EntraUser, FakeEntra
from tests.pkce import PKCE
from tests.sso.helpers import assert_error, setup, start


def failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "sign-in failed"]


async def test_a_failed_callback_names_provider_type_and_code(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    s = await setup(factory)
    stranger = EntraUser.make()  # not a user of the company
    started = await start(client, s.provider)
    assert_error(
        await client.get(entra.authorize(started.location, user=stranger)), "user_not_provisioned"
    )
    (line,) = failures(caplog)
    assert line.provider_id == str(s.provider.id)  # type: ignore[attr-defined]
    assert line.provider_type == "entra"  # type: ignore[attr-defined]
    assert line.error == "user_not_provisioned"  # type: ignore[attr-defined]
    assert stranger.email is not None
    assert stranger.email not in repr(line.__dict__)


async def test_a_failed_initiate_too_and_an_unknown_provider_is_unknown(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    s = await setup(factory, enabled=False)
    assert_error(
        await client.get(f"/sso/{s.provider.id}/initiate", params=PKCE), "provider_disabled"
    )
    unknown = "00000000-0000-4000-8000-000000000000"
    assert_error(await client.get(f"/sso/{unknown}/initiate", params=PKCE), "provider_not_found")
    assert_error(await client.get("/sso/not-an-id/initiate"), "provider_not_found")
    disabled, missing, malformed = (vars(r) for r in failures(caplog))
    assert (disabled["provider_type"], disabled["error"]) == ("entra", "provider_disabled")
    assert (missing["provider_id"], missing["provider_type"]) == (unknown, "unknown")
    assert (malformed["provider_id"], malformed["error"]) == (None, "provider_not_found")
