"""What the provider admin API tests share: constants, URLs, reading rows back, and the
log capture (README, *The admin API in short*)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from sso_broker.database import session_scope
from sso_broker.deps import AppContext
from sso_broker.logs import JSONFormatter
from sso_broker.models import SSOProvider
from sso_broker.users.models import Role
from tests.conftest import PUBLIC_URL, Tenant

BASE = "/api/v1/sso-providers"
DEFAULT_NAME = "Azure AD / Entra"
TENANT_ID = "3f2b8c4e-1a2b-4c3d-9e8f-0a1b2c3d4e5f"
OTHER_TENANT_ID = "7d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
CONSUMER_TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
CLIENT_ID = "8c1d6f0a-2b3c-4d5e-8f90-1a2b3c4d5e6f"
OTHER_CLIENT_ID = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
# Distinctive, so that finding it anywhere (body, log, column) cannot be a coincidence.
SECRET = "Qz7~hUnTeR2.s3cr3t-VALUE_xY9~only"
OTHER_SECRET = "Wv4~aN0tHeR.s3cr3t-VALUE_pL8~too"
PROVIDER_FIELDS = {
    "id",
    "type",
    "name",
    "base_url",
    "issuer",
    "client_id",
    "client_secret_set",
    "client_secret_expires_at",
    "client_auth_method",
    "enabled",
    "last_error",
    "warnings",
    "urls",
    "created_at",
    "updated_at",
}
NON_ADMIN_ROLES = [Role.MANAGER, Role.USER, Role.READ_ONLY]
LAST_ERROR = {
    "code": "invalid_client_secret",
    "message": "AADSTS7000215: Invalid client secret provided.",
    "at": "2026-01-02T03:04:05+00:00",
}

MakeTenant = Callable[[str], Awaitable[Tenant]]


# -- helpers -------------------------------------------------------------------------------


def item(provider_id: uuid.UUID | str) -> str:
    return f"{BASE}/{provider_id}"


def urls_of(provider_id: uuid.UUID | str) -> dict[str, str]:
    return {
        "initiate_sign_in_url": f"{PUBLIC_URL}/sso/{provider_id}/initiate",
        "callback_url": f"{PUBLIC_URL}/sso/{provider_id}/callback",
        "logout_url": f"{PUBLIC_URL}/sso/{provider_id}/logout",
    }


def at(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


async def create(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    body.setdefault("type", "entra")
    body.setdefault("base_url", "contoso.onmicrosoft.com")
    response = await client.post(BASE, json=body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def stored(context: AppContext, provider_id: uuid.UUID | str) -> SSOProvider | None:
    async with context.sessionmaker() as session:
        return await session.get(SSOProvider, uuid.UUID(str(provider_id)))


async def stored_or_fail(context: AppContext, provider_id: uuid.UUID | str) -> SSOProvider:
    provider = await stored(context, provider_id)
    assert provider is not None
    return provider


async def provider_count(context: AppContext) -> int:
    async with context.sessionmaker() as session:
        count = await session.scalar(select(func.count()).select_from(SSOProvider))
    return int(count or 0)


async def raw_secret_columns(context: AppContext) -> list[str | None]:
    async with context.sessionmaker() as session:
        rows = await session.execute(text("SELECT client_secret_encrypted FROM sso_providers"))
        return [row[0] for row in rows]


async def set_last_error(context: AppContext, provider_id: uuid.UUID | str) -> None:
    async with session_scope(context.sessionmaker) as session:
        provider = await session.get(SSOProvider, uuid.UUID(str(provider_id)))
        assert provider is not None
        provider.last_error = dict(LAST_ERROR)


def rendered_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every captured record as the app would write it, plus all its raw attributes."""
    formatter = JSONFormatter()
    return [formatter.format(record) + repr(record.__dict__) for record in caplog.records]


def capture_everything(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # SQLAlchemy pins its own loggers at WARNING: open them up so SQL and parameters show.
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")


async def assert_untouched(context: AppContext, provider: SSOProvider) -> None:
    assert await provider_count(context) == 1
    now = await stored_or_fail(context, provider.id)
    assert now.name == provider.name
    assert now.base_url == provider.base_url
    assert now.enabled == provider.enabled
    assert now.updated_at == provider.updated_at
