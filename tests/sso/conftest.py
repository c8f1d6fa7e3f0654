"""Fixtures of the sign-in tests: a controllable clock for the caches, an Entra directory."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import jwt
import pytest

from sso_broker.http import IdentityProviderClient
from sso_broker.idp import AdapterConfig
from sso_broker.idp.entra import EntraAdapter
from sso_broker.sso import discovery
from sso_broker.sso.discovery import ProviderDirectory, ProviderMetadata
from tests.fixtures.entra import AUTHORITY, FakeEntra

ENTRA = EntraAdapter(AdapterConfig(entra_authority=AUTHORITY))


class TenantDirectory:
    """The generic directory seen through the Entra adapter: ``metadata(tenant)``."""

    def __init__(self, http: IdentityProviderClient, authority: str = AUTHORITY) -> None:
        self.adapter = EntraAdapter(AdapterConfig(entra_authority=authority))
        self.directory = ProviderDirectory(http)

    def discovery_url(self, tenant: str) -> str:
        return self.adapter.discovery_url(tenant)

    async def metadata(self, tenant: str) -> ProviderMetadata:
        return await self.directory.metadata(self.adapter, tenant)

    async def signing_key(self, metadata: ProviderMetadata, kid: str | None) -> jwt.PyJWK:
        return await self.directory.signing_key(metadata, kid)


class FakeClock:
    """Stands in for the ``time`` module of ``sso_broker.sso.discovery`` (monotonic only)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Moves the discovery caches' clock without moving the event loop's."""
    fake_clock = FakeClock()
    monkeypatch.setattr(discovery, "time", fake_clock)
    return fake_clock


@pytest.fixture
async def directory(entra: FakeEntra) -> AsyncIterator[TenantDirectory]:
    async with IdentityProviderClient() as http:
        yield TenantDirectory(http)
