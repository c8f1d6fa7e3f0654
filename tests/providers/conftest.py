"""Fixtures of the provider admin API tests: a company with its administrator, another
company, and providers."""

from __future__ import annotations

import pytest

from sso_broker.models import SSOProvider
from sso_broker.users.models import Role
from tests.conftest import Factory, Tenant
from tests.providers.helpers import CLIENT_ID, SECRET, MakeTenant

# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
async def tenant(make_tenant: MakeTenant) -> Tenant:
    return await make_tenant("Contoso")


@pytest.fixture
async def other_tenant(make_tenant: MakeTenant) -> Tenant:
    return await make_tenant("Fabrikam")


@pytest.fixture
def admin(tenant: Tenant) -> dict[str, str]:
    return tenant.headers[Role.ADMINISTRATOR]


@pytest.fixture
def other_admin(other_tenant: Tenant) -> dict[str, str]:
    return other_tenant.headers[Role.ADMINISTRATOR]


@pytest.fixture
async def provider(factory: Factory, tenant: Tenant) -> SSOProvider:
    """A disabled provider of the tenant with no credentials."""
    return await factory.provider(tenant.company)


@pytest.fixture
async def enabled_provider(factory: Factory, tenant: Tenant) -> SSOProvider:
    return await factory.provider(
        tenant.company, client_id=CLIENT_ID, client_secret=SECRET, enabled=True
    )
