"""The seam between the generic OpenID Connect core and one kind of identity provider.

Everything that differs between Entra, Okta, PingOne and a plain OpenID Provider is a method
of :class:`Adapter`: what an administrator may paste as ``base_url`` and how it becomes an
issuer, the client-ID rules, which metadata endpoints may be trusted, the claims an ID token
must carry and which of them key the identity, which email a first sign-in may match, the
authorization parameters the provider understands, how its error answers become an
actionable ``last_error``, and how sign-out works. Metadata and key caches, state, PKCE, the
ID-token rules shared by all, client authentication and sessions are the core's
(``sso/``), and no adapter copies them (README, *Identity providers*).

A new type is one module with one subclass, registered in ``idp/__init__.py``.
"""

from __future__ import annotations

import ipaddress
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

from sso_broker.errors import ErrorCode, InvalidInput

_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_TLD = re.compile(r"^(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})$")
WELL_KNOWN = "/.well-known/openid-configuration"
# An email address as an identity provider sends one: ASCII, one @, a dotted domain.
# RFC 3986's path characters (percent-encodings included): no spaces, quotes or brackets.
_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*")
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,253}$")


def is_guid(value: str) -> bool:
    return _GUID.fullmatch(value) is not None


def is_domain_name(value: str) -> bool:
    if len(value) > 253 or not value.isascii():
        return False
    labels = value.lower().split(".")
    return (
        len(labels) >= 2
        and all(_LABEL.fullmatch(label) for label in labels)
        and _TLD.fullmatch(labels[-1]) is not None
    )


def is_email(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 254 and _EMAIL.fullmatch(value) is not None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_public_host(host: str, config: AdapterConfig) -> bool:
    """Whether a provider may live at ``host``: a DNS name, never a bare IP address or
    ``localhost`` (the service would otherwise call, with a client secret, whatever internal
    address an administrator names) except loopback when ``SSO_BROKER_ALLOW_HTTP_ISSUERS``
    allows it, for development and tests."""
    if is_loopback(host):
        return config.allow_http_issuers
    # A DNS name with an alphabetic top-level domain: no IP literal in any of its spellings
    # (``2130706433`` and ``0x7f.1`` resolve to 127.0.0.1 too), no ``*.localhost``.
    return is_domain_name(host) and not host.endswith(".localhost")


def bad_base_url(message: str) -> InvalidInput:
    return InvalidInput(message, code=ErrorCode.INVALID_BASE_URL)


@dataclass(frozen=True, slots=True)
class AdapterConfig:
    """The settings adapters read (``config.py``), so they never hold the whole Settings."""

    entra_authority: str = "https://login.microsoftonline.com"
    pingone_authority: str = "https://auth.pingone.com"
    allow_http_issuers: bool = False


@dataclass(frozen=True, slots=True)
class IssuerUrl:
    """A pasted URL taken apart: ``origin`` is ``scheme://host[:port]`` with the host in
    lower case, ``path`` has no trailing slash and no discovery suffix."""

    origin: str
    host: str
    path: str

    @property
    def url(self) -> str:
        return self.origin + self.path


@dataclass(frozen=True, slots=True)
class Actionable:
    """A sign-in failure an administrator can fix: ``last_error``'s code and message."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class CredentialsVerdict:
    """What a token endpoint's answer to a ``client_credentials`` request proves of the
    client ID and secret: ``proven`` True (accepted), False (refused: ``actionable`` says
    what to fix) or None (the endpoint refused before it looked at them)."""

    proven: bool | None
    actionable: Actionable | None = None


# Errors a token endpoint answers only after it has authenticated the client (RFC 6749, 5.2:
# a wrong client is invalid_client): the credentials are good, this grant is not allowed.
_AFTER_CLIENT_AUTHENTICATION = frozenset(
    {"unauthorized_client", "invalid_scope", "access_denied", "invalid_grant"}
)


class Adapter(ABC):
    """One kind of identity provider (see the module docstring)."""

    name: ClassVar[str]
    default_display_name: ClassVar[str]
    # The console's words, used in messages ("paste … from <console>").
    console: ClassVar[str]
    # Claims an ID token must carry beyond the ones every type needs (``sso/id_token.py``).
    required_claims: ClassVar[tuple[str, ...]] = ()
    # Whether sign-out sends the ID token back as id_token_hint (OpenID RP-Initiated Logout);
    # the token is then kept, encrypted, with the session until it ends.
    logout_needs_id_token: ClassVar[bool] = True

    def __init__(self, config: AdapterConfig) -> None:
        self.config = config

    # -- What the administrator pastes ------------------------------------------------------

    @abstractmethod
    def normalize_base_url(self, value: str) -> str:
        """``value`` as it will be stored, or :class:`InvalidInput` (``invalid_base_url``)
        whose message says what to paste."""

    @abstractmethod
    def issuer(self, base_url: str, pinned: str | None = None) -> str | None:
        """The issuer a stored ``base_url`` names (with the tenant ``pinned`` to it, for an
        Entra domain), or None when only the provider's metadata can tell."""

    def pin_of(self, base_url: str, tenant_id: str | None) -> str | None:
        """The tenant to pin ``base_url`` to once its metadata named ``tenant_id``; None when
        the base URL names its issuer itself (every type but an Entra domain)."""
        return None

    def same_base_url(self, base_url: str) -> str:
        """``base_url`` as compared for caching: itself, unless the type ignores letter case
        (Entra's tenants)."""
        return base_url

    def discovery_url(self, base_url: str) -> str:
        issuer = self.issuer(base_url)
        if issuer is None:  # pragma: no cover - only Entra has such base URLs; it overrides
            raise ValueError("this base_url names no issuer")
        return issuer + WELL_KNOWN

    def normalize_client_id(self, value: str) -> str:
        client_id = value.strip()
        if not client_id or any(c.isspace() for c in client_id) or not client_id.isprintable():
            raise InvalidInput(
                f"client_id must be the application's Client ID from {self.console}, "
                "without spaces.",
                code=ErrorCode.INVALID_CLIENT_ID,
            )
        return client_id

    def normalize_client_secret(self, value: str) -> str:
        secret = value.strip()
        if not secret:
            raise InvalidInput(
                "The client secret is empty; paste the secret's value, or send null to remove it.",
                code=ErrorCode.INVALID_CLIENT_SECRET,
            )
        return secret

    # -- Metadata ---------------------------------------------------------------------------

    def check_issuer(self, base_url: str, issuer: str) -> str | None:
        """Accepts the metadata's ``issuer`` for ``base_url`` (it must equal the derived issuer
        exactly) and answers the tenant it names, where the type has tenants. Raises
        ValueError with the reason otherwise."""
        expected = self.issuer(base_url)
        if issuer != expected:
            raise ValueError(f"discovery issuer is not {expected}")
        return None

    def endpoint_allowed(self, issuer: str, url: str) -> bool:
        """Whether a metadata endpoint may be used: by default only on the issuer's origin, so
        a tampered or confused document cannot send codes or secrets elsewhere."""
        a, b = urlsplit(issuer), urlsplit(url)
        return (a.scheme, a.netloc.lower()) == (b.scheme, b.netloc.lower())

    # -- The ID token -----------------------------------------------------------------------

    def check_claims(self, claims: Mapping[str, Any], tenant_id: str | None) -> str | None:
        """Type-specific claim rules after the shared ones; returns a reason to refuse."""
        return None

    def identity(self, claims: Mapping[str, Any]) -> tuple[str, str]:
        """The identity's key within the provider: (issuer, ``sub``) unless the type says
        otherwise (README, *Identities and first sign-in*)."""
        return str(claims["iss"]), str(claims["sub"])

    def first_link_email(self, claims: Mapping[str, Any]) -> str | None:
        """The email a first sign-in may match: ``email`` only when the provider vouches for
        it with ``email_verified: true`` (an unverified email is anyone's to type)."""
        email = claims.get("email")
        return email if claims.get("email_verified") is True and is_email(email) else None

    # -- The authorization request and the provider's errors ---------------------------------

    def authorization_params(self, *, domain_hint: str | None) -> dict[str, str]:
        """Parameters only this type understands (``domain_hint`` is Entra's)."""
        return {}

    def error_code(self, *texts: object) -> str | None:
        """The provider's own error code in an error answer's texts, for the log and
        ``last_error`` (``AADSTS…`` for Entra)."""
        return None

    def user_refused(self, error: str, provider_code: str | None) -> bool:
        """Whether an authorization error is the user's doing (cancelled, not assigned)."""
        return error == "access_denied"

    def actionable(
        self, oauth_error: str | None, provider_code: str | None, status: int | None = None
    ) -> Actionable | None:
        """What an administrator must fix, given an error answer of the provider; None when
        nothing in our configuration can be blamed."""
        if oauth_error == "invalid_client":
            return Actionable(
                "invalid_client",
                f"{self.default_display_name} rejected the client credentials "
                f"(invalid_client): copy the Client ID and a client secret again from "
                f"{self.console}.",
            )
        if oauth_error == "unauthorized_client":
            return Actionable(
                "unauthorized_client",
                f"{self.default_display_name} does not let this application use the "
                "authorization code flow (unauthorized_client): allow the Authorization Code "
                f"grant type in {self.console}.",
            )
        return None

    def credentials_test_params(self, client_id: str) -> dict[str, str]:
        """Parameters of the connection test's ``client_credentials`` request beyond the
        grant type and the client's authentication (Entra needs a resource's scope)."""
        return {}

    def credentials_verdict(
        self, status: int, oauth_error: str | None, provider_code: str | None
    ) -> CredentialsVerdict:
        """Judges the connection test's ``client_credentials`` answer: a token, or a 400 error
        that comes after client authentication, proves the credentials; ``invalid_client``
        or any 401 refutes them; anything else proves nothing."""
        if status == 200 and oauth_error is None:
            return CredentialsVerdict(True)
        # RFC 6749, 5.2: 401 is failed client authentication, whatever error comes with it
        # (Keycloak says unauthorized_client, Auth0 access_denied).
        if oauth_error == "invalid_client" or status == 401:
            return CredentialsVerdict(False, self.actionable("invalid_client", provider_code))
        if oauth_error in _AFTER_CLIENT_AUTHENTICATION:
            return CredentialsVerdict(True)
        return CredentialsVerdict(None)

    def discovery_failed(self, status: int | None, provider_code: str | None) -> Actionable | None:
        """``last_error`` for metadata that could not be had (a wrong ``base_url``)."""
        if status == 404:
            said = f", {provider_code}" if provider_code else ""
            return Actionable(
                "issuer_not_found",
                f"{self.default_display_name} has no OpenID metadata at this base_url "
                f"(HTTP 404{said}): check the base_url you pasted.",
            )
        return None

    # -- Sign-out ---------------------------------------------------------------------------

    def logout_params(
        self, *, client_id: str | None, login_hint: str | None, id_token: str | None
    ) -> dict[str, str]:
        """What the end-session request carries besides ``post_logout_redirect_uri``: the
        ID token as ``id_token_hint`` (Okta and PingOne require it) and the client ID."""
        params = {"id_token_hint": id_token} if id_token else {}
        if client_id:
            params["client_id"] = client_id
        return params


def parse_issuer_url(value: str, config: AdapterConfig, *, what: str) -> IssuerUrl:
    """A pasted issuer URL, forgiven a trailing slash, the discovery suffix, a default port
    and the root's dot.

    It must be ``https://`` (``http://`` on a loopback host only with
    ``SSO_BROKER_ALLOW_HTTP_ISSUERS``), name its host by a DNS name (:func:`is_public_host`),
    and carry no credentials, query or fragment, and only RFC 3986 path characters.
    ``what`` names what to paste, for the message.
    """
    text = value.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise bad_base_url(f"base_url is not a URL. Paste {what}.") from e
    host = (parts.hostname or "").lower()
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not host or not text.isascii():
        raise bad_base_url(f"base_url must be an https:// URL. Paste {what}.")
    if scheme == "http" and not (config.allow_http_issuers and is_loopback(host)):
        raise bad_base_url(f"base_url must be an https:// URL, not http://. Paste {what}.")
    if parts.username or parts.password or parts.query or parts.fragment or "#" in text:
        raise bad_base_url(
            f"base_url must not carry credentials, a query or a fragment. Paste {what}."
        )
    host = host.rstrip(".")  # the root's dot: the same name, and never in an issuer
    if not is_public_host(host, config):
        raise bad_base_url(f"base_url must name the provider by its DNS name. Paste {what}.")
    if (scheme, port) in (("https", 443), ("http", 80)):
        port = None  # the default port is no part of an issuer
    path = parts.path
    if path.lower().endswith(WELL_KNOWN):
        path = path[: -len(WELL_KNOWN)]
    path = path.rstrip("/")
    if (
        "//" in path
        or any(segment in (".", "..") for segment in path.split("/"))
        or not _PATH.fullmatch(path)
    ):
        raise bad_base_url(f"base_url has a malformed path. Paste {what}.")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return IssuerUrl(origin=f"{scheme}://{netloc}", host=host, path=path)
