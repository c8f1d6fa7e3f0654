"""Okta: ``base_url`` is the Okta org URL, or one of its authorization servers.

The org authorization server's issuer is the org URL itself (``https://acme.okta.com``); a
custom authorization server's is ``https://acme.okta.com/oauth2/{id}`` (``default`` is the one
every org has). Okta verifies the emails it releases and says so in ``email_verified``; its
sign-out wants the ID token back as ``id_token_hint`` (README, *Setting up Okta*).
"""

from __future__ import annotations

import re

from sso_broker.idp.base import Adapter, bad_base_url, parse_issuer_url

_SERVER_PATH = re.compile(r"^/oauth2/[A-Za-z0-9_-]{1,64}$")
# Okta's own domains, where the Admin Console's address is the org's with "-admin".
_OKTA_DOMAINS = ("okta.com", "oktapreview.com", "okta-emea.com", "okta-gov.com", "okta.mil")
_E_CODE = re.compile(r"\bE0{4}\d{3}\b")
_PASTE = (
    "your Okta org URL such as https://acme.okta.com (the Okta Admin Console's address without "
    "-admin), or an authorization server's Issuer URI such as "
    "https://acme.okta.com/oauth2/default (Security → API → Authorization Servers)"
)


class OktaAdapter(Adapter):
    name = "okta"
    default_display_name = "Okta"
    console = "the Okta Admin Console (Applications → your app → General)"

    def normalize_base_url(self, value: str) -> str:
        url = parse_issuer_url(value, self.config, what=_PASTE)
        if url.path and not _SERVER_PATH.fullmatch(url.path):
            raise bad_base_url(
                "base_url's path is not an Okta authorization server's (/oauth2/{id}): the "
                f"Admin Console's own pages are not an issuer. Paste {_PASTE}."
            )
        origin = url.origin
        first, _, rest = url.host.partition(".")
        if first.endswith("-admin") and rest in _OKTA_DOMAINS:
            # The Admin Console's own address: its org is the same name without "-admin".
            origin = origin.replace(f"//{first}.", f"//{first[: -len('-admin')]}.", 1)
        return origin + url.path

    def issuer(self, base_url: str, pinned: str | None = None) -> str | None:
        return base_url

    def error_code(self, *texts: object) -> str | None:
        for text in texts:
            if isinstance(text, str):
                match = _E_CODE.search(text[:2000])
                if match:
                    return match.group(0)
        return None
