"""Client authentication at the token endpoint (README, *Identity providers*): the first of
``client_secret_basic`` and ``client_secret_post`` in the metadata's list, in its order;
``client_secret_basic`` when the metadata lists none; a clear ``last_error`` when it lists
neither."""

from __future__ import annotations

import base64
from urllib.parse import unquote_plus

import httpx
import pytest

from sso_broker.sso.client_auth import basic_authorization
from tests.conftest import Factory
from tests.fixtures.entra import FakeEntra
from tests.sso.helpers import assert_error, last_error, setup, signed_in_user, start

METHODS = "token_endpoint_auth_methods_supported"


@pytest.mark.parametrize(
    ("advertised", "method"),
    [
        (["client_secret_post", "client_secret_basic"], "client_secret_post"),
        (["private_key_jwt", "client_secret_basic", "client_secret_post"], "client_secret_basic"),
        (None, "client_secret_basic"),
    ],
    ids=["post-first", "basic-first", "no-list"],
)
async def test_the_first_secret_method_the_metadata_lists_is_used(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    advertised: list[str] | None,
    method: str,
) -> None:
    entra.allow_client_secret_basic = True
    if advertised is None:
        del entra.discovery[METHODS]
    else:
        entra.discovery[METHODS] = advertised
    s = await setup(factory)
    started = await start(client, s.provider)
    response = await client.get(entra.authorize(started.location, user=s.person))
    assert await signed_in_user(client, response) == str(s.user.id)
    (form,) = entra.token_requests
    if method == "client_secret_basic":
        # The secret travels only in the Authorization header.
        assert "client_secret" not in form
        assert "client_id" not in form
    else:
        assert form["client_secret"] == entra.client_secret


async def test_no_secret_method_is_token_exchange_failed_with_a_last_error(
    client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
) -> None:
    entra.discovery[METHODS] = ["private_key_jwt", "tls_client_auth"]
    s = await setup(factory)
    started = await start(client, s.provider)
    response = await client.get(entra.authorize(started.location, user=s.person))
    assert_error(response, "token_exchange_failed")
    assert entra.token_calls == 0, "the secret is never sent where it is not accepted"
    error = await last_error(client, factory, s)
    assert error is not None
    assert error["code"] == "unsupported_client_authentication"
    assert "client_secret_basic" in error["message"]


@pytest.mark.parametrize(
    ("client_id", "secret"),
    [
        ("0oa1b2c3", "plain"),
        ("s6BhdRkqt3", "7Fjfp0ZBr1KtDRbnfVdmIw"),  # RFC 6749's example client
        ("id:with:colons", "p@ss:w%rd+ &=/?é"),
    ],
)
def test_basic_credentials_are_form_encoded_then_base64(client_id: str, secret: str) -> None:
    scheme, _, value = basic_authorization(client_id, secret).partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(value).decode().partition(":")
    assert (unquote_plus(user), unquote_plus(password)) == (client_id, secret)
    assert ":" not in user  # the first colon splits them, whatever they hold
