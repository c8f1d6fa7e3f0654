from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.datastructures import MutableHeaders

from sso_broker.middleware import _set_headers
from sso_broker.users.models import Role
from tests.conftest import Factory
from tests.pkce import PKCE


async def _admin_headers(factory: Factory) -> dict[str, str]:
    return await factory.headers(await factory.user(await factory.company(), Role.ADMINISTRATOR))


class TestBodyLimit:
    async def test_declared_oversized_body_is_refused_with_413(
        self, client: httpx.AsyncClient, factory: Factory
    ) -> None:
        headers = await _admin_headers(factory)
        body = b'{"type": "entra", "base_url": "' + b"a" * 70_000 + b'"}'
        response = await client.post(
            "/api/v1/sso-providers",
            content=body,
            headers={**headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 413
        assert response.json()["code"] == "request_too_large"
        assert "aaaa" not in response.text
        listed = await client.get("/api/v1/sso-providers", headers=headers)
        assert listed.json()["items"] == []

    async def test_streamed_oversized_body_is_refused_with_413(
        self, client: httpx.AsyncClient, factory: Factory
    ) -> None:
        headers = await _admin_headers(factory)

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"type": "entra", "base_url": "'
            for _ in range(20):
                yield b"a" * 8192
            yield b'"}'

        response = await client.post(
            "/api/v1/sso-providers",
            content=chunks(),
            headers={**headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 413
        assert response.json()["code"] == "request_too_large"

    async def test_normal_bodies_pass(self, client: httpx.AsyncClient, factory: Factory) -> None:
        headers = await _admin_headers(factory)
        response = await client.post(
            "/api/v1/sso-providers",
            json={"type": "entra", "base_url": "contoso.onmicrosoft.com"},
            headers=headers,
        )
        assert response.status_code == 201


class TestSecurityHeaders:
    async def test_every_answer_is_nosniff_and_api_answers_are_never_cached(
        self, client: httpx.AsyncClient, factory: Factory
    ) -> None:
        headers = await _admin_headers(factory)
        api = await client.get("/api/v1/users", headers=headers)
        anonymous = await client.get("/api/v1/users")
        health = await client.get("/healthz")
        for response in (api, anonymous, health):
            assert response.headers["x-content-type-options"] == "nosniff"
        assert api.headers["cache-control"] == "no-store"
        assert anonymous.headers["cache-control"] == "no-store"

    async def test_sign_in_redirects_carry_no_referrer_and_no_store(
        self, client: httpx.AsyncClient
    ) -> None:
        import uuid

        response = await client.get(f"/sso/{uuid.uuid4()}/initiate", params=PKCE)
        assert response.status_code == 302
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"

    async def test_an_oversized_query_string_is_refused(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/healthz", params={"q": "x" * 20_000})
        assert response.status_code == 414
        assert response.json()["code"] == "request_too_large"


ADDED = [(b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store")]


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"content-type", b"application/json")],
        [(b"cache-control", b"max-age=60"), (b"content-type", b"text/html")],
        [(b"cache-control", b"a"), (b"vary", b"origin"), (b"cache-control", b"b")],
        [(b"x-content-type-options", b"x"), (b"cache-control", b"c"), (b"etag", b"1")],
    ],
)
def test_headers_are_set_as_starlettes_mutable_headers_sets_them(
    headers: list[tuple[bytes, bytes]],
) -> None:
    before = list(headers)
    expected = MutableHeaders(scope={"headers": list(headers)})
    for name, value in ADDED:
        expected[name.decode()] = value.decode()
    assert _set_headers(headers, ADDED, frozenset(name for name, _ in ADDED)) == expected.raw
    assert headers == before  # a copy: a response's own list is never changed
