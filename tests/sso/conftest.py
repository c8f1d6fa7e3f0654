"""Fixtures of the sign-in tests: a controllable clock for the caches, an Entra directory."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from sso_broker.http import IdentityProviderClient
from sso_broker.sso import discovery
from sso_broker.sso.discovery import EntraDirectory
from tests.fixtures.entra import AUTHORITY, FakeEntra


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
async def directory(entra: FakeEntra) -> AsyncIterator[EntraDirectory]:
    async with IdentityProviderClient() as http:
        yield EntraDirectory(http, AUTHORITY)
