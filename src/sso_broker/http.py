"""The HTTP client for identity providers: one aiohttp session, called directly.

A sign-in makes one call to its identity provider (the token exchange), and discovery a few
more per tenant and hour. httpx's own transport (httpcore, h11, anyio) cost 1.1 ms of CPU a
sign-in, a third of the whole (README, *Performance*); moving it onto aiohttp's C-accelerated
client (``httpx-aiohttp``) left httpx's layers above it (request building, auth and redirect
handling, the transport adapter's stream wrapping) at 0.29 ms of the call's 0.5 ms. The
service needs none of them, since it only ever sends a small body and reads a bounded answer,
so :meth:`IdentityProviderClient.fetch` asks aiohttp itself.

What the service relies on stays as it was: every failure reaches the callers as one of the
exceptions below, named as httpx's were (:class:`ConnectError`, :class:`ReadError`,
:class:`ConnectTimeout`, :class:`ReadTimeout`, :class:`ProxyError`,
:class:`UnsupportedProtocol`, else :class:`TransportError`), so an identity provider
answering garbage is a failed sign-in, never a crash, and the tests keep faking the provider
with respx (``tests/fixtures/entra.py`` routes :meth:`IdentityProviderClient._send`, below
the size limit and the error mapping). They are the module's own, not httpx's: importing
httpx only for them cost each worker 5.2 MB, as it loads its command line's ``rich`` and
``pygments`` too (README, *Performance*).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import urllib.parse
import urllib.request
from types import TracebackType
from typing import Self

import certifi


def _import_aiohttp() -> None:
    """Imports aiohttp without the CA bundles its two default TLS contexts load on import
    (0.7 MB of every worker, README *Performance*): the client never uses them, it passes its
    own context (:func:`_ssl_context`). Built without a CA store, a request that fell back on
    aiohttp's default would fail verification, never pass it; ``tests/test_http.py`` checks
    both."""
    load = ssl.SSLContext.set_default_verify_paths
    ssl.SSLContext.set_default_verify_paths = lambda self: None  # type: ignore[method-assign]
    try:
        import aiohttp  # noqa: F401
    finally:
        ssl.SSLContext.set_default_verify_paths = load  # type: ignore[method-assign]


_import_aiohttp()
import aiohttp  # noqa: E402

DEFAULT_TIMEOUT = 5.0  # httpx's default, which the client had before


class ResponseTooLarge(Exception):
    """The identity provider's answer is longer than the caller's limit."""


class TransportError(Exception):
    """The call failed before a whole answer came back; the callers catch this one."""


class ConnectError(TransportError):
    """No connection: refused, unknown host, or a TLS handshake or certificate refused."""


class ProxyError(TransportError):
    """The configured proxy refused or failed the connection."""


class UnsupportedProtocol(TransportError):
    """The URL is not an http or https one."""


class ReadError(TransportError):
    """The answer was cut short, or the connection reset or closed before it."""


class TimeoutException(TransportError):
    """A timeout of the client's (not the callers' overall deadline)."""


class ConnectTimeout(TimeoutException):
    """Opening a connection (or waiting for one from the pool) took too long."""


class ReadTimeout(TimeoutException):
    """The identity provider went silent while answering."""


class PublicAddressesOnly(aiohttp.abc.AbstractResolver):
    """Resolves as aiohttp does, then keeps only public addresses: an issuer or endpoint an
    administrator names cannot make the service call (with a client secret) an address of
    its own network, whatever its DNS says. Hosts the operator configured (the Entra and
    PingOne authorities, which may be test stand-ins) are trusted as they resolve."""

    def __init__(self, trusted_hosts: frozenset[str]) -> None:
        self._inner = aiohttp.DefaultResolver()
        self._trusted = trusted_hosts

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if host.lower() in self._trusted:
            return found
        public = [entry for entry in found if _is_public(entry["host"])]
        if not public:
            raise OSError(f"{host} resolves to no public address")
        return public

    async def close(self) -> None:
        await self._inner.close()


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global


class IdentityProviderClient:
    """Sends requests to identity providers over one shared aiohttp session.

    ``timeout`` bounds the wait for a connection from the pool and each read of the answer;
    ``connect_timeout`` (default ``timeout``) bounds opening a connection, TLS included. A
    whole call is bounded by the callers (``overall_deadline`` in ``sso/discovery.py`` reads
    :attr:`timeout`). Redirects are never followed: an identity provider's back channel does
    not redirect, and following one could send a code or a secret elsewhere.

    As with the httpx client before: certificates are checked against certifi's bundle (or
    ``SSL_CERT_FILE``/``SSL_CERT_DIR``), ``HTTP(S)_PROXY``/``NO_PROXY`` are honoured, at most
    ``max_connections`` are open and idle ones are kept for ``keepalive`` seconds. Cookies are
    neither kept nor sent: the back channel needs none, and a shared jar would carry one
    user's sign-in cookies into the next one's call (and cost CPU on every call).

    The session is opened on the first call, inside the running loop (a client can be built
    anywhere, and one the tests' respx mock serves never opens one); :meth:`aclose` closes it.
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float | None = None,
        user_agent: str | None = None,
        max_connections: int = 100,
        keepalive: float = 5.0,
        public_only: bool = False,
        trusted_hosts: frozenset[str] = frozenset(),
    ) -> None:
        """``public_only``: connect to public addresses only, but for ``trusted_hosts``
        (:class:`PublicAddressesOnly`); the service turns it on (``main.py``)."""
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.user_agent = user_agent
        self.max_connections = max_connections
        self.keepalive = keepalive
        self.public_only = public_only
        self.trusted_hosts = trusted_hosts
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[str, str] = {}
        self._closed = False

    async def fetch(
        self,
        method: str,
        url: str,
        *,
        limit: int,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """Sends a request and answers its status and body, reading at most ``limit`` bytes.

        The body is streamed and the read stops at the limit (or at once when Content-Length
        already says more): an identity provider, or an issuer an administrator pasted, that
        answers gigabytes cannot fill the service's memory before a size check after the read.
        """
        try:
            response = await self._send(method, url, content, headers)
            try:
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise ResponseTooLarge(f"{declared} bytes declared")
                chunks, size = [], 0
                async for chunk in response.content.iter_any():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > limit:
                        raise ResponseTooLarge(f"more than {limit} bytes")
            except BaseException:
                response.close()  # the rest of the answer is not wanted: drop the connection
                raise
            response.release()  # read to its end: the connection goes back to the pool
            return response.status, b"".join(chunks)  # one chunk, usually: no copy
        except (aiohttp.ClientError, OSError) as e:  # TimeoutError is an OSError
            raise _transport_error(e) from e

    async def _send(
        self, method: str, url: str, content: bytes | None, headers: dict[str, str] | None
    ) -> aiohttp.ClientResponse:
        """The request itself, answered once the status line and headers are in.

        The one place the client touches the network, so the one the tests' respx mock
        replaces (``tests/fixtures/entra.py``)."""
        session = self._session or self._open()
        if self.public_only:
            self._refuse_internal_literal(url)
        return await session.request(
            method,
            url,
            data=content,
            headers=headers,
            allow_redirects=False,
            proxy=self._proxy_for(url) if self._proxies else None,
        )

    def _refuse_internal_literal(self, url: str) -> None:
        """An IP address in the URL never reaches the resolver: it is checked here."""
        host = (urllib.parse.urlsplit(url).hostname or "").lower()
        if host in self.trusted_hosts:
            return
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return  # a name: PublicAddressesOnly checks what it resolves to
        if not _is_public(host):
            raise ConnectError(f"{host} is not a public address")

    def _proxy_for(self, url: str) -> str | None:
        """The proxy the environment names for ``url`` (``HTTP(S)_PROXY``, ``ALL_PROXY``,
        minus ``NO_PROXY``), passed explicitly: aiohttp's ``trust_env`` would also send
        ``~/.netrc`` credentials to the identity provider, and skips ``ALL_PROXY``."""
        parts = urllib.parse.urlsplit(url)
        if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
            return None
        return self._proxies.get(parts.scheme) or self._proxies.get("all")

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the identity-provider client is closed")
        # Read once, when the session opens (README, *Performance*): see _proxy_for.
        self._proxies = urllib.request.getproxies()
        # Through a proxy the proxy resolves the provider (and its own address is a private
        # one, usually): its egress policy is the one that applies then.
        resolver = (
            PublicAddressesOnly(self.trusted_hosts)
            if self.public_only and not self._proxies
            else None
        )
        connector = aiohttp.TCPConnector(
            ssl=_ssl_context(),
            limit=self.max_connections,
            keepalive_timeout=self.keepalive,
            resolver=resolver,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self.timeout,  # a connection from the pool, opened if need be
                sock_connect=self.connect_timeout,
                sock_read=self.timeout,
            ),
            headers={"User-Agent": self.user_agent} if self.user_agent else None,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        return self._session

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


def _ssl_context() -> ssl.SSLContext:
    """The context httpx's client had (``httpx.create_ssl_context()``), so the same
    certificates are trusted as before: certifi's bundle unless ``SSL_CERT_FILE`` or
    ``SSL_CERT_DIR`` names another (aiohttp's own default would be the system's store)."""
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    return ssl.create_default_context(cafile=certifi.where())


def _transport_error(error: BaseException) -> TransportError:
    """The exception the callers catch for an aiohttp or socket failure."""
    message = f"{type(error).__name__}: {error}"
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return ConnectTimeout(message)
    if isinstance(error, TimeoutError):  # aiohttp's read timeout, or any other
        return ReadTimeout(message)
    if isinstance(error, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        return ProxyError(message)
    if isinstance(error, aiohttp.ClientConnectorError):  # refused, DNS, TLS, certificate
        return ConnectError(message)
    if isinstance(error, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return UnsupportedProtocol(message)
    if isinstance(
        error, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError | OSError
    ):  # an answer cut short, a connection reset or closed
        return ReadError(message)
    # A malformed status line or header (aiohttp's ClientResponseError), anything else.
    return TransportError(message)
