from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from sso_broker.users.models import Role
from tests.conftest import Factory


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
