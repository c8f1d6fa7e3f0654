"""Any OpenID Provider: ``base_url`` is its issuer URL.

Nothing is assumed beyond OpenID Connect Discovery: the metadata's ``issuer`` must equal the
pasted issuer exactly, and its endpoints need only be ``https://`` (a provider such as
Google serves its token endpoint from another host than its issuer). A first sign-in trusts
``email`` only with ``email_verified: true`` (README, *Any OpenID Provider*).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from sso_broker.idp.base import Adapter, is_loopback, is_public_host, parse_issuer_url

_PASTE = (
    "the provider's issuer URL, such as https://id.example.com (its metadata lives at "
    "<issuer>/.well-known/openid-configuration)"
)


class OidcAdapter(Adapter):
    name = "oidc"
    default_display_name = "OpenID Connect"
    console = "your identity provider's application settings"

    def normalize_base_url(self, value: str) -> str:
        return parse_issuer_url(value, self.config, what=_PASTE).url

    def issuer(self, base_url: str, pinned: str | None = None) -> str | None:
        return base_url

    def endpoint_allowed(self, issuer: str, url: str) -> bool:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if not is_public_host(host, self.config):
            return False  # no internal address, whatever the metadata says
        if parts.scheme == "https":
            return True
        return parts.scheme == "http" and self.config.allow_http_issuers and is_loopback(host)
