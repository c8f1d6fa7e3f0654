"""The HTTP client for identity providers: HTTP/1.1 over asyncio, answers parsed by httptools.

A sign-in makes one call to its identity provider (the token exchange), and discovery a few
more per tenant and hour. Each is one small request and one bounded answer, on a kept-alive
connection. httpx's stack (httpcore, h11, anyio) cost 1.1 ms of CPU a sign-in; aiohttp's
client 0.46 ms of a call, and 8 MB of each worker's memory for a client, a server, web
sockets and their libraries the service never used (README, *Performance*). This module
sends the request itself and leaves the hard part, parsing the answer (status line, headers,
chunked bodies, keep-alive), to httptools, the HTTP parser uvicorn already serves every
request with; TLS is the standard library's, through asyncio.

What the callers rely on: every failure reaches them as one of the exceptions below, named as
httpx's were (:class:`ConnectError`, :class:`ReadError`, :class:`ConnectTimeout`,
:class:`ReadTimeout`, :class:`ProxyError`, :class:`UnsupportedProtocol`, else
:class:`TransportError`), so an identity provider answering garbage is a failed sign-in, never
a crash; and the tests fake the provider with respx at :meth:`IdentityProviderClient._send`
(``tests/fixtures/entra.py``), below the size limit and the error mapping, while
``tests/test_http.py`` runs this client against real sockets.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import re
import socket
import ssl
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self, cast

import certifi
import httptools

DEFAULT_TIMEOUT = 5.0  # httpx's default, which the client had before

# Reading pauses while this much of an answer waits unread: a provider that streams without
# end is held at the socket, not in memory, until ``fetch`` stops it at its limit.
_BUFFERED = 256 * 1024
# An answer's status line and headers, at most (aiohttp's limits were 8 KiB a line): a server
# that sends headers without end is cut off here, not held in memory until the deadline.
_MAX_HEAD = 64 * 1024
# What a request line or header may not carry: a URL or value from an identity provider's
# metadata must never add a header or a request of its own.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?")
# The characters kept as they are in a request target (RFC 3986's reserved and unreserved,
# and ``%`` so an escape stays one); anything else (a space, a quote, non-ASCII) is escaped.
_TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})[^\r\n]*\r\n")


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


# IPv6 prefixes that carry an IPv4 address in their last 32 bits and reach it through a
# translator: NAT64's well-known and local-use prefixes (RFC 6052, RFC 8215). Python counts
# them as global, so ``64:ff9b::a9fe:a9fe`` would reach 169.254.169.254 where NAT64 runs
# (IPv6-only clusters, often).
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
# Deprecated ranges Python's ``is_global`` still counts as global: IPv4-compatible addresses
# (RFC 4291, 2.5.5.1), which a host with an automatic tunnel sends to the IPv4 address they
# carry, and site-local ones (RFC 3879), which route inside a site. No provider uses either.
_DEPRECATED = (ipaddress.IPv6Network("::/96"), ipaddress.IPv6Network("fec0::/10"))


def _is_public(address: str) -> bool:
    """Whether ``address`` is a public one, and so is any IPv4 address it carries (mapped,
    6to4, Teredo, NAT64): an address that reaches an internal one is not public. Nor is a
    multicast address, or one of the deprecated ranges above."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if not _unicast_global(ip):
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in network for network in _DEPRECATED):
            return False
        carried = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
        if any(ip in network for network in _NAT64):
            carried.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return all(_unicast_global(inner) for inner in carried if inner is not None)
    return True


def _unicast_global(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_global and not ip.is_multicast


def _refuse_internal_literal(host: str, trusted: frozenset[str]) -> None:
    """Through a proxy the proxy resolves names, but an address in the URL is checked here."""
    if host in trusted:
        return
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return
    if not _is_public(host):
        raise ConnectError(f"{host} is not a public address")


class _Surplus(Exception):
    """More than one answer came for one request."""


class _Target:
    """A URL taken apart once (the token endpoint's is the same for every sign-in)."""

    __slots__ = (
        "absolute",
        "authority",
        "host",
        "host_header",
        "https",
        "key",
        "port",
        "request_target",
    )

    def __init__(self, url: str) -> None:
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise UnsupportedProtocol(f"not a URL the client can call: {e}") from None
        if parts.scheme not in ("http", "https"):
            raise UnsupportedProtocol(f"{parts.scheme or 'no'} scheme: only http and https")
        if parts.username is not None or parts.password is not None:
            raise UnsupportedProtocol("a URL with credentials in it: they are never sent")
        host = _host(parts.hostname or "")
        self.https = parts.scheme == "https"
        self.host = host
        self.port = port or (443 if self.https else 80)
        default = (443 if self.https else 80) == self.port
        literal = f"[{host}]" if ":" in host else host
        authority = literal if default else f"{literal}:{self.port}"
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        self.request_target = urllib.parse.quote(path, safe=_TARGET_SAFE)
        self.key = (parts.scheme, host, self.port)
        self.authority = f"{literal}:{self.port}"  # a proxy's CONNECT names the port always
        self.absolute = f"{parts.scheme}://{authority}"  # what a plain-HTTP proxy is sent
        self.host_header = f"Host: {authority}\r\n"


def _host(hostname: str) -> str:
    """The host as it goes on the wire: an IP address, or a name (IDNA-encoded)."""
    try:
        return str(ipaddress.ip_address(hostname))
    except ValueError:
        pass
    try:
        name = hostname.encode("idna").decode("ascii") if not hostname.isascii() else hostname
    except UnicodeError:
        name = ""
    if not _HOST.fullmatch(name):
        raise UnsupportedProtocol(f"not a host name: {hostname!r}")
    return name


class _Proxy:
    __slots__ = ("authorization", "host", "port")

    def __init__(self, url: str) -> None:
        try:
            parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
            port = parts.port or 80
        except ValueError as e:
            raise ProxyError(f"the proxy's URL is not one: {e}") from None
        if parts.scheme != "http" or not parts.hostname:
            raise ProxyError(f"only http:// proxies are supported, not {parts.scheme}://")
        self.host, self.port = parts.hostname, port
        self.authorization = ""
        if parts.username is not None:
            pair = f"{urllib.parse.unquote(parts.username)}:"
            pair += urllib.parse.unquote(parts.password or "")
            token = base64.b64encode(pair.encode()).decode("ascii")
            self.authorization = f"Proxy-Authorization: Basic {token}\r\n"


class _Connection(asyncio.Protocol):
    """One connection, one request at a time. httptools calls ``on_*`` as it parses; the
    caller waits in :meth:`wait` for the next thing to happen (the head, body, the end, or a
    failure), each wait bounded by the read timeout (no byte for ``timeout`` seconds)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.headers: dict[str, str] = {}
        self.chunks: deque[bytes] = deque()
        self.status = 0
        self.head_done = self.complete = self.closed = self.keep_alive = False
        self.idle_since = 0.0
        self._buffered = 0
        self._head_bytes = 0
        self._paused = False
        self._error: TransportError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timeout = 0.0
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._tunnel: bytearray | None = None  # a proxy's answer to CONNECT, while awaited

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it

    def data_received(self, data: bytes) -> None:
        self._last_read = self.loop.time()
        if self._tunnel is not None:
            self._tunnel += data
            self._wake()
            return
        if self._timer is None:  # nothing asked: a server talking out of turn
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            self.close()  # a second answer to one request (on_message_begin): never reused
            return
        except httptools.HttpParserError as e:
            self._fail(TransportError(f"the answer is not HTTP/1.1: {e}"))
            self.close()
            return
        if not self.head_done:
            self._head_bytes += len(data)
            if self._head_bytes > _MAX_HEAD:
                self._fail(TransportError(f"the answer's head is over {_MAX_HEAD} bytes"))
                self.close()

    def eof_received(self) -> bool:
        return False  # close: a half-closed connection is of no further use

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._tunnel is not None:
            self._wake()
        elif self.head_done and not self.complete and self._until_closed():
            self.complete = True  # the answer's body was the rest of the connection
            self._wake()
        elif self._timer is not None and not self.complete:
            reason = f" ({type(exc).__name__}: {exc})" if exc else ""
            self._fail(ReadError(f"the connection closed before the answer's end{reason}"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.complete:
            raise _Surplus  # stops the parser: bytes after the answer are nobody's answer

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status >= 200:
            self.head_done = True
            self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _BUFFERED and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status < 200:  # 100 Continue, 103 Early Hints: the answer is still to come
            self.headers = {}
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # the caller's side
    def send(self, request: bytes, timeout: float) -> None:
        assert self.transport is not None  # noqa: S101 - connected before any request
        self._timeout = timeout
        self._last_read = self.loop.time()
        self._timer = self.loop.call_at(self._last_read + timeout, self._check_silence)
        self.transport.write(request)

    async def wait(self) -> None:
        if self._error is None:
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._error is not None:
            raise self._error

    def take(self) -> bytes:
        chunk = self.chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= _BUFFERED and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    def finish(self) -> bool:
        """The answer is read: ready for the next request? (else it is closed)"""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not (self.complete and self.keep_alive) or self.closed or self.chunks:
            self.close()
            return False
        self.parser = httptools.HttpResponseParser(self)
        self.headers = {}
        self.status = 0
        self.head_done = self.complete = False
        self._head_bytes = 0
        self.idle_since = self.loop.time()
        return True

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()

    async def tunnel(self, request: bytes) -> int:
        """Sends a proxy its CONNECT and answers the status of its reply (within the
        caller's connect timeout)."""
        assert self.transport is not None  # noqa: S101
        self._tunnel = bytearray()
        self.transport.write(request)
        while b"\r\n\r\n" not in self._tunnel:
            if self.closed or len(self._tunnel) > 16384:
                raise ProxyError("the proxy closed the connection or did not answer HTTP")
            await self.wait()
        head, _, rest = bytes(self._tunnel).partition(b"\r\n\r\n")
        self._tunnel = None
        status = _STATUS_LINE.match(head + b"\r\n")
        if status is None or rest:
            raise ProxyError("the proxy's answer to CONNECT is not HTTP/1.1")
        return int(status.group(1))

    def _check_silence(self) -> None:
        due = self._last_read + self._timeout
        if self.loop.time() < due:
            self._timer = self.loop.call_at(due, self._check_silence)
            return
        self._fail(ReadTimeout(f"no answer for {self._timeout:g} s"))
        self.close()

    def _until_closed(self) -> bool:
        """An answer without Content-Length or chunked encoding ends with its connection."""
        return "content-length" not in self.headers and "chunked" not in self.headers.get(
            "transfer-encoding", ""
        )

    def _fail(self, error: TransportError) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _Response:
    """An answer whose head is in: its status, headers (lower-case names) and its body,
    read in chunks as they arrive; ``release`` hands a fully read connection back to the
    pool, ``close`` drops it. The same shape the tests' respx answers have."""

    __slots__ = ("_client", "_connection", "_key", "content", "headers", "status")

    def __init__(
        self, client: IdentityProviderClient, connection: _Connection, key: object
    ) -> None:
        self._client, self._key = client, key
        self._connection: _Connection | None = connection
        self.status, self.headers = connection.status, connection.headers
        self.content = self

    async def iter_any(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            return
        while True:
            while connection.chunks:
                yield connection.take()
            if connection.complete:
                return
            await connection.wait()

    def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._client._give_back(connection, self._key)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
            self._client._give_back(connection, self._key)


class IdentityProviderClient:
    """Sends requests to identity providers, keeping connections alive between them.

    ``timeout`` bounds the wait for a free connection and each wait for the answer's next
    bytes; ``connect_timeout`` (default ``timeout``) bounds opening a connection, TLS and a
    proxy's tunnel included. A whole call is bounded by the callers (``overall_deadline`` in
    ``sso/discovery.py`` reads :attr:`timeout`). Redirects are never followed: an identity
    provider's back channel does not redirect, and following one could send a code or a
    secret elsewhere.

    As with the httpx client before: certificates are checked against certifi's bundle (or
    ``SSL_CERT_FILE``/``SSL_CERT_DIR``), ``HTTP(S)_PROXY``/``ALL_PROXY``/``NO_PROXY`` are
    honoured (an ``http://`` proxy; HTTPS goes through its CONNECT tunnel), at most
    ``max_connections`` requests are in flight and as many idle connections are kept, each for
    ``keepalive`` seconds. No cookies, no ``~/.netrc``, no compression (``Accept-Encoding:
    identity``): the back channel needs none, and a kept cookie would carry one user's sign-in
    into the next one's call.
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
        """``public_only``: connect to public addresses only, whatever a name resolves to,
        but for ``trusted_hosts`` (the authorities the operator configured); the service
        turns it on (``main.py``; README, *Security model*)."""
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.user_agent = user_agent
        self.max_connections = max_connections
        self.keepalive = keepalive
        self.public_only = public_only
        self.trusted_hosts = trusted_hosts
        if user_agent and _UNSAFE.search(user_agent):
            raise ValueError("the User-Agent holds a control character")
        self._headers = "Accept-Encoding: identity\r\n"
        if user_agent:
            self._headers += f"User-Agent: {user_agent}\r\n"
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[object, list[_Connection]] = {}
        self._targets: dict[str, _Target] = {}
        self._proxy_urls: dict[str, _Proxy] = {}
        self._proxies: dict[str, str] | None = None  # read once, at the first call
        self._tls: ssl.SSLContext | None = None  # made at the first https call
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

        The body is read as it arrives and the read stops at the limit (or at once when
        Content-Length already says more): an identity provider, or an issuer an administrator
        pasted, that answers gigabytes cannot fill the service's memory.
        """
        try:
            response = await self._send(method, url, content, headers)
            try:
                declared = response.headers.get("content-length", "")
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
        except OSError as e:  # not expected (the connection maps its own), but never a crash
            raise ReadError(f"{type(e).__name__}: {e}") from e

    async def _send(
        self, method: str, url: str, content: bytes | None, headers: dict[str, str] | None
    ) -> _Response:
        """The request itself, answered once the status line and headers are in.

        The one place the client touches the network, so the one the tests' respx mock
        replaces (``tests/fixtures/entra.py``)."""
        if self._closed:
            raise RuntimeError("the identity-provider client is closed")
        target = self._targets.get(url)
        if target is None:
            target = _Target(url)
            if len(self._targets) >= 256:  # a few endpoints a provider: bounded all the same
                self._targets.clear()
            self._targets[url] = target
        proxy = self._proxy_for(url)
        if proxy is not None and self.public_only:
            _refuse_internal_literal(target.host, self.trusted_hosts)
        key = (target.key, proxy)
        request = self._request(method, target, content, headers, proxy)
        if self._slots.locked():
            try:
                async with asyncio.timeout(self.timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise ConnectTimeout(f"no free connection within {self.timeout:g} s") from None
        else:
            await self._slots.acquire()
        connection = None
        try:
            connection = self._reuse(key) or await self._connect(target, proxy)
            connection.send(request, self.timeout)
            while not connection.head_done:
                await connection.wait()
            return _Response(self, connection, key)
        except BaseException:
            if connection is not None:
                connection.close()
            self._slots.release()
            raise

    def _request(
        self,
        method: str,
        target: _Target,
        content: bytes | None,
        headers: dict[str, str] | None,
        proxy: str | None,
    ) -> bytes:
        line = f"{method} {target.request_target} HTTP/1.1\r\n"
        extra = ""
        if proxy is not None and not target.https:  # a plain-HTTP proxy forwards the request
            line = f"{method} {target.absolute}{target.request_target} HTTP/1.1\r\n"
            extra = self._proxy(proxy).authorization
        given = ""
        if headers:
            if not all(map(_TOKEN.fullmatch, headers)) or _UNSAFE.search("".join(headers.values())):
                raise TransportError("a header name or value the client cannot send")
            given = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        if not method.isalpha():
            raise TransportError(f"not a method: {method!r}")
        length = f"Content-Length: {len(content)}\r\n" if content is not None else ""
        if content is None and method in ("POST", "PUT", "PATCH"):
            length = "Content-Length: 0\r\n"
        head = f"{line}{target.host_header}{self._headers}{extra}{given}{length}\r\n"
        return head.encode("latin-1") + content if content else head.encode("latin-1")

    def _reuse(self, key: object) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest = asyncio.get_running_loop().time() - self.keepalive
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be closed
            if not connection.closed and connection.idle_since > oldest:
                return connection
            connection.close()
        return None

    def _give_back(self, connection: _Connection, key: object) -> None:
        self._slots.release()
        if self._closed:
            connection.close()
            return
        if not connection.finish():
            return
        idle = self._idle.setdefault(key, [])
        oldest = connection.idle_since - self.keepalive
        for stale in [c for c in idle if c.closed or c.idle_since <= oldest]:
            idle.remove(stale)
            stale.close()
        if sum(map(len, self._idle.values())) >= self.max_connections:
            connection.close()
            return
        idle.append(connection)

    async def _connect(self, target: _Target, proxy: str | None) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if target.https else None
        try:
            async with asyncio.timeout(self.connect_timeout):
                if proxy is not None:
                    return await self._through(loop, self._proxy(proxy), target, tls)
                if self.public_only and target.host not in self.trusted_hosts:
                    return await self._to_public(loop, target, tls)
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop),
                    target.host,
                    target.port,
                    ssl=tls,
                    server_hostname=target.host if tls else None,
                )
                return connection
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {self.connect_timeout:g} s") from None
        except (OSError, ssl.SSLError, ssl.CertificateError) as e:  # refused, DNS, TLS
            raise ConnectError(f"{target.host}:{target.port}: {type(e).__name__}: {e}") from e

    async def _to_public(
        self, loop: asyncio.AbstractEventLoop, target: _Target, tls: ssl.SSLContext | None
    ) -> _Connection:
        """Resolves the name, keeps its public addresses, and connects to the first that
        answers: an issuer's DNS cannot point the service (and a client secret) at its own
        network; a literal address is checked the same way."""
        found = await loop.getaddrinfo(
            target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        public = [entry for entry in found if _is_public(str(entry[4][0]))]
        if not public:
            raise ConnectError(f"{target.host} resolves to no public address")
        failure: OSError | None = None
        for family, _, _, _, address in public:
            try:
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop),
                    str(address[0]),
                    target.port,
                    family=family,
                    ssl=tls,
                    server_hostname=target.host if tls else None,
                )
                return connection
            except OSError as e:
                failure = e
        assert failure is not None  # noqa: S101 - public is not empty
        raise failure

    async def _through(
        self,
        loop: asyncio.AbstractEventLoop,
        proxy: _Proxy,
        target: _Target,
        tls: ssl.SSLContext | None,
    ) -> _Connection:
        """A connection through the proxy; for HTTPS, a CONNECT tunnel with TLS inside it.
        Through a proxy the proxy resolves the provider (and its own address is a private
        one, usually): its egress policy is the one that applies then."""
        try:
            transport, connection = await loop.create_connection(
                lambda: _Connection(loop), proxy.host, proxy.port
            )
        except OSError as e:
            raise ProxyError(f"the proxy {proxy.host}:{proxy.port}: {e}") from e
        if tls is None:
            return connection
        authority, authorization = target.authority, proxy.authorization
        request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{authorization}\r\n"
        try:
            status = await connection.tunnel(request.encode("latin-1"))
            if status != 200:
                raise ProxyError(f"the proxy answered CONNECT with {status}")
            connection.transport = cast(
                asyncio.Transport,
                await loop.start_tls(transport, connection, tls, server_hostname=target.host),
            )
        except BaseException:
            connection.close()
            raise
        return connection

    def _proxy_for(self, url: str) -> str | None:
        """The proxy the environment names for ``url`` (``HTTP(S)_PROXY``, ``ALL_PROXY``,
        minus ``NO_PROXY``), read once: never ``~/.netrc``, whose credentials a library's
        ``trust_env`` would also send to the identity provider."""
        if self._proxies is None:
            self._proxies = urllib.request.getproxies()
        if not self._proxies:
            return None
        parts = urllib.parse.urlsplit(url)
        if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
            return None
        return self._proxies.get(parts.scheme) or self._proxies.get("all")

    def _proxy(self, url: str) -> _Proxy:
        proxy = self._proxy_urls.get(url)
        if proxy is None:
            proxy = self._proxy_urls[url] = _Proxy(url)
        return proxy

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = _ssl_context()
        return self._tls

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()

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
    ``SSL_CERT_DIR`` names another. Made at the first https call: a deployment whose
    providers all answer on loopback (development, the benchmark) never loads the bundle."""
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    return ssl.create_default_context(cafile=certifi.where())
