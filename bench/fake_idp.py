"""A light Entra-shaped identity provider for the bench: every tenant, one RSA-2048 key.

Plain handlers on a lean HTTP/1.1 server of the bench's own (``lean_server.py``: asyncio on
uvloop, httptools parsing; uvicorn cost it a third of its CPU), pre-forked into
``--workers`` processes sharing one listening socket. It serves, for any tenant GUID in the
path, what the service reads of Entra:

* ``GET /{tenant}/v2.0/.well-known/openid-configuration``: issuer ``{authority}/{tenant}/v2.0``
  and every endpoint on the same origin, RS256 only;
* ``GET /{tenant}/discovery/v2.0/keys``: the one RSA key, with its ``kid``;
* ``GET /{tenant}/oauth2/v2.0/authorize``: signs in the ``login_hint`` at once and answers
  ``302 redirect_uri?code=…&state=…``;
* ``POST /{tenant}/oauth2/v2.0/token``: ``client_secret_post`` + PKCE (S256); the code works
  once; answers an access token and an RS256 ID token for the ``login_hint`` email;
* ``GET /{tenant}/oauth2/v2.0/logout``: back to ``post_logout_redirect_uri``.

For the tests of slow and hung providers, ``POST /_control/token-delay?seconds=S`` makes this
process's token endpoint wait ``S`` seconds before it answers (``0``: at once again);
``&tenant=T`` makes only tenant ``T``'s wait, so one provider hangs while another answers.

Codes are sealed (HMAC) rather than stored, so any process can redeem any process's code; a
byte per code in an anonymous shared memory map, written by whichever process redeems it,
makes each code work once across processes (process ``i`` of ``n`` issues slots ``i``,
``i + n``, ``i + 2n``…).

Run: ``python -m bench.fake_idp --port P --authority http://127.0.0.1:P [--workers N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import mmap
import os
import secrets
import signal
import socket
import sys
import time
import uuid
from collections.abc import Awaitable
from typing import Any
from urllib.parse import parse_qs, urlencode

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bench import lean_server
from bench.common import CLIENT_SECRET
from bench.lean_server import Answer

CODE_TTL = 300
ID_TOKEN_TTL = 3600
SLOTS = 1 << 24  # codes issued before the used-code table wraps around
_GUID_LEN = 36


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_b64(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def object_id(email: str) -> str:
    """The user's stable object id in the tenant, derived from the email."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "bench-idp:" + email.lower()))


def _is_guid(value: str) -> bool:
    if len(value) != _GUID_LEN:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


_NO_STORE = [(b"cache-control", b"no-store")]


def _plain(status: int, body: bytes) -> Answer:
    return status, [*_NO_STORE, (b"content-type", b"text/plain")], body


def _json(status: int, document: dict[str, Any]) -> Answer:
    return (
        status,
        [*_NO_STORE, (b"content-type", b"application/json")],
        json.dumps(document).encode(),
    )


def _redirect(location: str) -> Answer:
    return 302, [*_NO_STORE, (b"location", location.encode("latin-1"))], b""


class IdentityProvider:
    """The identity provider of one process (its requests come from ``lean_server``)."""

    def __init__(
        self,
        authority: str,
        private_key: rsa.RSAPrivateKey,
        code_key: bytes,
        used: mmap.mmap,
        index: int = 0,
        processes: int = 1,
        client_secret: str = CLIENT_SECRET,
    ) -> None:
        self.authority = authority.rstrip("/")
        self.key = private_key
        self.code_key = code_key
        self.used = used
        self.index = index
        self.processes = processes
        self.client_secret = client_secret
        der = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.kid = b64url(hashlib.sha256(der).digest()[:16])
        numbers = private_key.public_key().public_numbers()
        self.jwks = json.dumps(
            {
                "keys": [
                    {
                        "kty": "RSA",
                        "use": "sig",
                        "kid": self.kid,
                        "n": _int_b64(numbers.n),
                        "e": _int_b64(numbers.e),
                    }
                ]
            }
        ).encode()
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        self.jwt_header = b64url(json.dumps(header, separators=(",", ":")).encode())
        self.issued = 0
        self.token_delay = 0.0
        self.tenant_delays: dict[str, float] = {}

    # --- plumbing ----------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query_string: str, body: bytes
    ) -> Answer | Awaitable[Answer]:
        """One request (``bench/lean_server.py``): its status, headers and body, or (a token
        endpoint told to wait) an awaitable of them."""
        parts = path.split("/")
        if method == "POST" and path == "/_control/token-delay":
            query = parse_qs(query_string)
            seconds = float(query.get("seconds", ["0"])[0])
            if "tenant" in query:
                self.tenant_delays[query["tenant"][0].lower()] = seconds
            else:
                self.token_delay = seconds
                self.tenant_delays.clear()
            return _plain(204, b"")
        # ['', tenant, ...rest]
        tenant = parts[1].lower() if len(parts) > 2 else ""
        rest = "/".join(parts[2:])
        if not _is_guid(tenant):
            return _json(400, self._aadsts(90002, "invalid_tenant", "Tenant not found."))
        if method == "GET" and rest == "v2.0/.well-known/openid-configuration":
            return _json(200, self._discovery(tenant))
        if method == "GET" and rest == "discovery/v2.0/keys":
            return 200, [*_NO_STORE, (b"content-type", b"application/json")], self.jwks
        if method == "GET" and rest == "oauth2/v2.0/authorize":
            return self._authorize(query_string, tenant)
        if method == "POST" and rest == "oauth2/v2.0/token":
            delay = self.tenant_delays.get(tenant, self.token_delay)
            if delay:
                return self._token_after(delay, tenant, body)
            return _json(*self._token(tenant, body))
        if method == "GET" and rest == "oauth2/v2.0/logout":
            target = parse_qs(query_string).get("post_logout_redirect_uri", [""])[0]
            return _redirect(target) if target else _plain(200, b"signed out")
        return _plain(404, b"not found")

    @staticmethod
    def _aadsts(number: int, error: str, description: str) -> dict[str, Any]:
        return {
            "error": error,
            "error_description": f"AADSTS{number}: {description}",
            "error_codes": [number],
        }

    # --- endpoints ---------------------------------------------------------------------

    def _discovery(self, tenant: str) -> dict[str, Any]:
        base = f"{self.authority}/{tenant}"
        return {
            "issuer": f"{base}/v2.0",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "response_types_supported": ["code", "id_token", "code id_token"],
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "oid", "tid"],
            "tenant_region_scope": "EU",
        }

    async def _token_after(self, delay: float, tenant: str, body: bytes) -> Answer:
        await asyncio.sleep(delay)
        return _json(*self._token(tenant, body))

    def _authorize(self, query_string: str, tenant: str) -> Answer:
        query = {k: v[0] for k, v in parse_qs(query_string).items()}
        required = ("client_id", "redirect_uri", "state", "nonce", "code_challenge", "login_hint")
        missing = [name for name in required if not query.get(name)]
        if (
            missing
            or query.get("response_type") != "code"
            or query.get("code_challenge_method") != "S256"
            or "openid" not in query.get("scope", "").split()
        ):
            return _plain(400, f"bad request: {missing}".encode())
        slot = (self.issued * self.processes + self.index) % SLOTS
        self.issued += 1
        payload = [
            slot,
            tenant,
            query["client_id"],
            query["redirect_uri"],
            query["nonce"],
            query["code_challenge"],
            query["login_hint"],
            int(time.time()) + CODE_TTL,
        ]
        sealed = b64url(json.dumps(payload, separators=(",", ":")).encode())
        mac = b64url(hmac.digest(self.code_key, sealed.encode(), "sha256")[:16])
        code = f"{sealed}.{mac}"
        separator = "&" if "?" in query["redirect_uri"] else "?"
        response = urlencode({"code": code, "state": query["state"]})
        location = f"{query['redirect_uri']}{separator}{response}"
        return _redirect(location)

    def _token(self, tenant: str, body: bytes) -> tuple[int, dict[str, Any]]:
        form = {k: v[0] for k, v in parse_qs(body.decode("latin-1")).items()}
        if form.get("grant_type") != "authorization_code":
            return 400, self._aadsts(70003, "unsupported_grant_type", "Unsupported grant type.")
        if form.get("client_secret") != self.client_secret:
            return 401, self._aadsts(7000215, "invalid_client", "Invalid client secret provided.")
        code = form.get("code", "")
        sealed, _, mac = code.partition(".")
        expected = b64url(hmac.digest(self.code_key, sealed.encode(), "sha256")[:16])
        if not sealed or not hmac.compare_digest(mac, expected):
            return 400, self._aadsts(70008, "invalid_grant", "The code is malformed.")
        slot, code_tenant, client_id, redirect_uri, nonce, challenge, email, expires = json.loads(
            _unb64url(sealed)
        )
        if expires < time.time():
            return 400, self._aadsts(70008, "invalid_grant", "The code has expired.")
        if code_tenant != tenant or form.get("client_id") != client_id:
            return 400, self._aadsts(700016, "unauthorized_client", "Another client's code.")
        if form.get("redirect_uri") != redirect_uri:
            return 400, self._aadsts(50011, "invalid_grant", "The redirect URI does not match.")
        verifier = form.get("code_verifier", "")
        if b64url(hashlib.sha256(verifier.encode()).digest()) != challenge:
            return 400, self._aadsts(501481, "invalid_grant", "The code verifier is wrong.")
        if self.used[slot]:
            return 400, self._aadsts(54005, "invalid_grant", "The code was already redeemed.")
        self.used[slot] = 1
        now = int(time.time())
        access_token = secrets.token_urlsafe(48)
        oid = object_id(email)
        claims = {
            "aud": client_id,
            "iss": f"{self.authority}/{tenant}/v2.0",
            "iat": now,
            "nbf": now,
            "exp": now + ID_TOKEN_TTL,
            "at_hash": b64url(hashlib.sha256(access_token.encode()).digest()[:16]),
            "email": email,
            "name": email.split("@")[0].replace("user", "User "),
            "nonce": nonce,
            "oid": oid,
            "preferred_username": email,
            "sid": str(uuid.uuid4()),
            "sub": b64url(hashlib.sha256(f"{client_id}:{oid}".encode()).digest()),
            "tid": tenant,
            "ver": "2.0",
        }
        signing_input = (
            f"{self.jwt_header}.{b64url(json.dumps(claims, separators=(',', ':')).encode())}"
        )
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return 200, {
            "token_type": "Bearer",
            "scope": "openid profile email offline_access",
            "expires_in": 3600,
            "ext_expires_in": 3600,
            "access_token": access_token,
            "id_token": f"{signing_input}.{b64url(signature)}",
        }


def _serve(app: IdentityProvider, sock: socket.socket) -> None:
    lean_server.serve(app.handle, sock)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fake_idp", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--authority", help="default: http://HOST:PORT")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    authority = args.authority or f"http://{args.host}:{args.port}"

    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    code_key = secrets.token_bytes(32)
    used = mmap.mmap(-1, SLOTS)  # anonymous and shared: children see each other's writes
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(4096)
    sock.set_inheritable(True)

    def app(index: int) -> IdentityProvider:
        return IdentityProvider(authority, private_key, code_key, used, index, args.workers)

    if args.workers <= 1:
        _serve(app(0), sock)
        return 0
    children: list[int] = []
    for index in range(args.workers):
        pid = os.fork()
        if pid == 0:  # the child serves until it is told to stop
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            try:
                _serve(app(index), sock)
            finally:
                os._exit(0)
        children.append(pid)

    def stop(_signum: int, _frame: Any) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
