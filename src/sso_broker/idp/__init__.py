"""Identity-provider types: one module each, behind one seam (``base.Adapter``).

A new type is a module with an :class:`~sso_broker.idp.base.Adapter` subclass, listed in
:data:`ADAPTER_TYPES` and in :data:`ProviderTypeName` (README, *Identity providers*).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from sso_broker.idp.base import Adapter, AdapterConfig
from sso_broker.idp.entra import EntraAdapter
from sso_broker.idp.oidc import OidcAdapter
from sso_broker.idp.okta import OktaAdapter
from sso_broker.idp.pingone import PingOneAdapter

ProviderTypeName = Literal["entra", "okta", "pingone", "oidc"]
ADAPTER_TYPES: tuple[type[Adapter], ...] = (EntraAdapter, OktaAdapter, PingOneAdapter, OidcAdapter)


class Adapters:
    """Each type's adapter, configured once from the settings."""

    def __init__(self, config: AdapterConfig) -> None:
        self.config = config
        self._by_name = {kind.name: kind(config) for kind in ADAPTER_TYPES}

    def __getitem__(self, name: str) -> Adapter:
        return self._by_name[name]


@lru_cache(maxsize=8)
def adapters_for(config: AdapterConfig) -> Adapters:
    """The adapters for a configuration (``Settings.adapter_config``), made once."""
    return Adapters(config)


__all__ = [
    "ADAPTER_TYPES",
    "Adapter",
    "AdapterConfig",
    "Adapters",
    "ProviderTypeName",
    "adapters_for",
]
