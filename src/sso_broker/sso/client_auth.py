"""How the service authenticates itself at a provider's token endpoint, for sign-ins and the
connection test alike: the client secret (``client_secret_basic`` or ``client_secret_post``,
whichever the metadata lists first), or a client assertion signed with the provider's
certificate (``private_key_jwt``, RFC 7523; ``providers/certificates.py``).
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote_plus

from cachetools import TTLCache

from sso_broker.crypto import SecretBox
from sso_broker.deps import AppContext
from sso_broker.idp.base import Actionable
from sso_broker.providers import certificates
from sso_broker.providers.models import SSOProvider
from sso_broker.sso.discovery import ProviderMetadata

# Client authentication with a secret, in our order of preference when the metadata lists
# none (RFC 8414: no list means client_secret_basic).
SECRET_AUTH_METHODS = frozenset({"client_secret_basic", "client_secret_post"})
UNSUPPORTED_AUTH = Actionable(
    "unsupported_client_authentication",
    "The identity provider accepts neither client_secret_basic nor client_secret_post at its "
    "token endpoint: allow one of them for this application.",
)
UNSUPPORTED_KEY_AUTH = Actionable(
    "unsupported_client_authentication",
    "The identity provider does not accept private_key_jwt at its token endpoint: allow "
    "client authentication by public key (JWT) for this application, or set "
    "client_auth_method to client_secret.",
)
SECRET_MISSING = Actionable(
    "credentials_missing",
    "No client secret is set: paste one as client_secret, or make a certificate and set "
    "client_auth_method to private_key_jwt.",
)
CERTIFICATE_MISSING = Actionable(
    "certificate_missing",
    "client_auth_method is private_key_jwt but the provider holds no unexpired certificate: "
    "make one (POST …/certificate) and upload it to the identity provider.",
)

# Decrypted client secrets by provider, with the ciphertext they came from: a Fernet open per
# callback was 1.6 % of a sign-in's CPU (README, *Performance*). A new secret, or rotate-keys,
# is a new ciphertext and is decrypted afresh; an entry lives an hour at most, so a replaced or
# deleted provider's secret does not stay in memory past that.
_SECRETS: TTLCache[uuid.UUID, tuple[str, str]] = TTLCache(maxsize=1024, ttl=3600)


def _client_secret(box: SecretBox, provider_id: uuid.UUID, encrypted: str) -> str:
    cached = _SECRETS.get(provider_id)
    if cached is not None and cached[0] == encrypted:
        return cached[1]
    secret = box.decrypt(encrypted)
    _SECRETS[provider_id] = (encrypted, secret)
    return secret


def client_auth_method(metadata: ProviderMetadata) -> str | None:
    """The first secret-based method the metadata lists, in its order; ``client_secret_basic``
    when it lists none (RFC 8414, 2); None when it lists only others."""
    if metadata.token_auth_methods is None:
        return "client_secret_basic"
    return next((m for m in metadata.token_auth_methods if m in SECRET_AUTH_METHODS), None)


def basic_authorization(client_id: str, secret: str) -> str:
    """RFC 6749, 2.3.1: each part form-encoded before the Basic encoding, so a secret holding
    ``:`` or ``%`` reaches the provider as it is."""
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


@dataclass(frozen=True, slots=True)
class ClientAuth:
    """The form fields and headers that authenticate the client in one token request."""

    fields: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


async def client_authentication(
    context: AppContext, provider: SSOProvider, client_id: str, metadata: ProviderMetadata
) -> ClientAuth | Actionable:
    """The provider's chosen credential for one token request, or what an administrator must
    fix before there can be one."""
    if provider.client_auth_method == certificates.PRIVATE_KEY_JWT:
        methods = metadata.token_auth_methods
        if methods is not None and certificates.PRIVATE_KEY_JWT not in methods:
            return UNSUPPORTED_KEY_AUTH
        async with context.sessionmaker() as session:
            stored = await certificates.signing(session, provider.id)
        if stored is None:
            return CERTIFICATE_MISSING
        assertion = certificates.client_assertion(
            context.box, stored, client_id=client_id, audience=metadata.token_endpoint
        )
        return ClientAuth(
            {
                "client_id": client_id,
                "client_assertion_type": certificates.ASSERTION_TYPE,
                "client_assertion": assertion,
            }
        )
    method = client_auth_method(metadata)
    if method is None:
        return UNSUPPORTED_AUTH
    if provider.client_secret_encrypted is None:
        return SECRET_MISSING
    secret = _client_secret(context.box, provider.id, provider.client_secret_encrypted)
    if method == "client_secret_post":
        return ClientAuth({"client_id": client_id, "client_secret": secret})
    return ClientAuth(headers={"Authorization": basic_authorization(client_id, secret)})
