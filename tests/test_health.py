from __future__ import annotations

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import create_async_engine

from sso_broker.deps import AppContext


class TestHealthz:
    async def test_healthz_answers_without_the_database(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


class TestReadyz:
    async def test_readyz_is_ok_when_the_database_answers(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/readyz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    async def test_readyz_is_503_problem_when_the_database_is_down(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        context: AppContext = app.state.context
        working = context.engine
        # Nothing listens on port 1: connecting fails at once.
        context.engine = create_async_engine(
            "postgresql+asyncpg://postgres@127.0.0.1:1/none", connect_args={"timeout": 2}
        )
        try:
            response = await client.get("/readyz")
        finally:
            await context.engine.dispose()
            context.engine = working
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["code"] == "database_unavailable"
        assert "Traceback" not in response.text
        assert response.headers["retry-after"] == "5"

    async def test_every_response_carries_a_request_id(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
        assert response.headers["x-request-id"] == "abc-123"
        generated = await client.get("/healthz", headers={"X-Request-ID": "x" * 500})
        assert generated.headers["x-request-id"] != "x" * 500
        assert len(generated.headers["x-request-id"]) == 32
