"""PingOne: ``base_url`` is the environment ID, or the environment's issuer URL.

A bare environment ID names ``{PINGONE_AUTHORITY}/{env}/as`` (``https://auth.pingone.com``
unless configured: ``.eu``, ``.asia``, ``.ca`` and ``.com.au`` are the other regions, pasted
as URLs). PingOne releases ``email_verified``; its sign-out wants ``id_token_hint``
(README, *Setting up PingOne*).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from sso_broker.errors import ErrorCode, InvalidInput
from sso_broker.idp.base import Adapter, bad_base_url, is_guid, parse_issuer_url

REGION_HOSTS = frozenset(f"auth.pingone.{tld}" for tld in ("com", "eu", "asia", "ca", "com.au"))
_PASTE = (
    "your PingOne environment ID (a GUID: Settings → Environment Properties), or the "
    "environment's Issuer URL such as https://auth.pingone.eu/<environment ID>/as "
    "(Applications → your app → Configuration → URLs)"
)


class PingOneAdapter(Adapter):
    name = "pingone"
    default_display_name = "PingOne"
    console = "the PingOne admin console (Applications → your app → Configuration)"

    @property
    def authority(self) -> str:
        return self.config.pingone_authority.rstrip("/")

    def normalize_base_url(self, value: str) -> str:
        pasted = value.strip()
        if is_guid(pasted):
            return pasted.lower()
        if "/" not in pasted:
            raise bad_base_url(f"base_url must be {_PASTE}.")
        url = parse_issuer_url(pasted, self.config, what=_PASTE)
        own = urlsplit(self.authority).netloc.lower()
        if url.host not in REGION_HOSTS and url.origin.split("//", 1)[1] != own:
            raise bad_base_url(f"base_url is a URL, but not a PingOne one. Paste {_PASTE}.")
        segments = url.path.strip("/").split("/")
        if segments[-1:] == ["as"]:
            segments = segments[:-1]
        if len(segments) != 1 or not is_guid(segments[0]):
            raise bad_base_url(f"base_url's path names no PingOne environment. Paste {_PASTE}.")
        return f"{url.origin}/{segments[0].lower()}/as"

    def normalize_client_id(self, value: str) -> str:
        client_id = value.strip()
        if not is_guid(client_id):
            raise InvalidInput(
                "client_id must be the application's Client ID, a GUID shown in the PingOne "
                "admin console under Applications → your app → Configuration.",
                code=ErrorCode.INVALID_CLIENT_ID,
            )
        return client_id.lower()

    def issuer(self, base_url: str, pinned: str | None = None) -> str | None:
        return f"{self.authority}/{base_url}/as" if is_guid(base_url) else base_url
