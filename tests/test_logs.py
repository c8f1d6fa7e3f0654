from __future__ import annotations

import json
import logging

import httpx
import pytest

from sso_broker.logs import JSONFormatter
from sso_broker.users.models import Role
from tests.conftest import Factory

SECRET = "Zq8Q~never-log-this-secret-value-0123456789"


def _render(records: list[logging.LogRecord]) -> str:
    formatter = JSONFormatter()
    return "\n".join(formatter.format(record) for record in records)


class TestAccessLog:
    async def test_one_json_line_per_request_without_the_query(
        self, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="sso_broker.access")
        await client.get("/healthz?code=secret-code&state=xyz", headers={"X-Request-ID": "rid-1"})
        lines = [
            json.loads(JSONFormatter().format(r))
            for r in caplog.records
            if r.name == "sso_broker.access"
        ]
        assert len(lines) == 1
        line = lines[0]
        assert line["method"] == "GET"
        assert line["path"] == "/healthz"
        assert line["status"] == 200
        assert line["request_id"] == "rid-1"
        assert isinstance(line["duration_ms"], float)
        assert "secret-code" not in json.dumps(line)


class TestSecretsNeverLogged:
    async def test_admin_calls_log_no_secret_and_no_token(
        self, client: httpx.AsyncClient, factory: Factory, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        admin = await factory.user(await factory.company(), Role.ADMINISTRATOR)
        token = await factory.token(admin)
        headers = {"Authorization": f"Bearer {token}"}
        created = await client.post(
            "/api/v1/sso-providers",
            json={"type": "entra", "base_url": "contoso.onmicrosoft.com"},
            headers=headers,
        )
        url = f"/api/v1/sso-providers/{created.json()['id']}"
        calls = [
            {"client_secret": SECRET},
            {"client_secret": SECRET, "enabled": True},  # provider_incomplete
            {"client_secret": SECRET, "unknown": 1},  # validation_error
            {"client_secret": SECRET * 40},  # too long
            {"client_id": "3f2b8c4e-1a2b-4c3d-9e8f-0a1b2c3d4e5f", "client_secret": SECRET},
        ]
        for body in calls:
            response = await client.patch(url, json=body, headers=headers)
            assert SECRET not in response.text
        await client.get(url, headers=headers)
        logged = _render(caplog.records)
        assert caplog.records, "expected some log output"
        assert SECRET not in logged
        assert token not in logged
