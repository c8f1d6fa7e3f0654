"""The identity-provider HTTP client (sso_broker/http.py) against real sockets: the unit
tests' respx mock replaces its one network method, so what the client does underneath
(connections, keep-alive, proxies, TLS, limits, and how failures reach the callers as the
client's own exceptions, named as httpx's were) is checked here."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sso_broker import http as broker_http
from sso_broker.http import ConnectError, IdentityProviderClient, ResponseTooLarge, _is_public
from tests.tls import server_context

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
LIMIT = 64 * 1024


async def _serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def _answering(answer: bytes) -> Handler:
    """A server that reads the request's head, writes ``answer`` and closes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    return handler


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length) if length else b""


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


@pytest.fixture(autouse=True)
def _no_proxy_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test names the proxies it means: none of the machine's own."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
async def json_server() -> AsyncIterator[tuple[str, list[tuple[bytes, bytes]], list[int]]]:
    """Answers every request on a kept-alive connection with a JSON echo of its body; also
    counts the connections it was given."""
    seen: list[tuple[bytes, bytes]] = []
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head, body = await _read_request(reader)
                seen.append((head, body))
                payload = json.dumps({"received": body.decode()}).encode()
                writer.write(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server, url = await _serve(handle)
    async with server:
        yield url, seen, connections


async def test_a_form_post_and_its_json_answer_round_trip(
    json_server: tuple[str, list[tuple[bytes, bytes]], list[int]],
) -> None:
    url, seen, connections = json_server
    async with IdentityProviderClient(timeout=5, user_agent="sso-broker/9.9") as client:
        for attempt in range(2):
            status, body = await client.fetch(
                "POST",
                f"{url}/token",
                limit=LIMIT,
                content=f"grant_type=authorization_code&code={attempt}".encode(),
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Accept": "application/json",
                },
            )
            assert status == 400
            assert json.loads(body) == {"received": f"grant_type=authorization_code&code={attempt}"}
    assert [body for _, body in seen] == [
        b"grant_type=authorization_code&code=0",
        b"grant_type=authorization_code&code=1",
    ]
    head = seen[0][0]
    assert head.startswith(b"POST /token HTTP/1.1\r\n")
    assert _header(head, b"user-agent") == b"sso-broker/9.9"
    assert _header(head, b"content-type") == b"application/x-www-form-urlencoded"
    assert _header(head, b"accept") == b"application/json"
    assert _header(head, b"cookie") is None
    assert connections == [1], "the second call reuses the first one's connection"


async def test_a_proxy_in_the_environment_is_used(
    json_server: tuple[str, list[tuple[bytes, bytes]], list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As httpx did: HTTP(S)_PROXY is honoured (read once, when the session opens)."""
    proxy, seen, _ = json_server
    monkeypatch.setenv("HTTP_PROXY", proxy)
    async with IdentityProviderClient(timeout=5) as client:
        status, _ = await client.fetch("POST", "http://login.entra.test/t/token", limit=LIMIT)
    assert status == 400
    assert seen[0][0].startswith(b"POST http://login.entra.test/t/token HTTP/1.1\r\n")


async def test_all_proxy_is_used_no_proxy_bypasses_and_netrc_is_never_sent(
    json_server: tuple[str, list[tuple[bytes, bytes]], list[int]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """ALL_PROXY counts as httpx counted it; NO_PROXY exempts a host; and no credentials
    from a ~/.netrc are ever attached to an identity provider's request."""
    proxy, seen, _ = json_server
    netrc = tmp_path / "netrc"
    netrc.write_text("machine login.entra.test login leaked password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("ALL_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", "bypassed.test")
    async with IdentityProviderClient(timeout=5) as client:
        status, _ = await client.fetch("POST", "http://login.entra.test/t/token", limit=LIMIT)
        assert client._proxy_for("http://bypassed.test/x") is None
    assert status == 400
    assert seen[0][0].startswith(b"POST http://login.entra.test/t/token HTTP/1.1\r\n")
    assert _header(seen[0][0], b"authorization") is None


async def test_an_answer_within_the_limit_is_read_whole(
    json_server: tuple[str, list[tuple[bytes, bytes]], list[int]],
) -> None:
    url, _, _ = json_server
    async with IdentityProviderClient(timeout=5) as client:
        status, body = await client.fetch("POST", f"{url}/token", limit=1024, content=b"a=1")
    assert (status, json.loads(body)) == (400, {"received": "a=1"})


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    async def declared(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 900000000\r\n\r\n{")
        await writer.drain()
        await asyncio.sleep(1)

    server, url = await _serve(declared)
    async with server, IdentityProviderClient(timeout=5) as client:
        with pytest.raises(ResponseTooLarge, match="declared"):
            await client.fetch("GET", f"{url}/keys", limit=LIMIT)


async def test_an_endless_answer_is_cut_at_the_limit() -> None:
    """A provider that streams without end is stopped once the limit is passed, not read."""
    sent = 0

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 16384
        try:
            while sent < 50_000_000:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                sent += len(chunk)
        except ConnectionError:
            pass

    server, url = await _serve(endless)
    async with server, IdentityProviderClient(timeout=5) as client:
        with pytest.raises(ResponseTooLarge, match="more than"):
            await client.fetch("GET", f"{url}/keys", limit=LIMIT)
    assert sent < 10_000_000


async def test_a_redirect_is_answered_not_followed() -> None:
    requests: list[bytes] = []

    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head, _ = await _read_request(reader)
                requests.append(head.split(b"\r\n")[0])
                writer.write(
                    b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n"
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server, url = await _serve(redirect)
    async with server, IdentityProviderClient(timeout=2) as client:
        assert await client.fetch("POST", f"{url}/token", limit=LIMIT, content=b"a") == (302, b"")
    assert requests == [b"POST /token HTTP/1.1"]


async def test_a_refused_connection_is_a_connect_error() -> None:
    server, url = await _serve(lambda _r, w: asyncio.sleep(0))
    server.close()
    await server.wait_closed()
    async with IdentityProviderClient(timeout=2) as client:
        with pytest.raises(broker_http.ConnectError):
            await client.fetch("GET", f"{url}/.well-known/openid-configuration", limit=LIMIT)


async def test_an_answer_that_is_not_http_is_a_transport_error() -> None:
    server, url = await _serve(_answering(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"))
    async with server, IdentityProviderClient(timeout=2) as client:
        with pytest.raises(broker_http.TransportError):
            await client.fetch("GET", f"{url}/keys", limit=LIMIT)


@pytest.mark.parametrize(
    "answer",
    [b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial":', b""],
    ids=["body cut short", "closed without an answer"],
)
async def test_a_connection_closed_early_is_a_read_error(answer: bytes) -> None:
    server, url = await _serve(_answering(answer))
    async with server, IdentityProviderClient(timeout=2) as client:
        with pytest.raises(broker_http.ReadError):
            await client.fetch("GET", f"{url}/keys", limit=LIMIT)


@pytest.mark.parametrize("answer", [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{"])
async def test_a_silent_server_is_a_read_timeout(answer: bytes) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        await asyncio.sleep(5)

    server, url = await _serve(silent)
    async with server, IdentityProviderClient(timeout=0.3) as client:
        began = asyncio.get_running_loop().time()
        with pytest.raises(broker_http.ReadTimeout):
            await client.fetch("GET", f"{url}/keys", limit=LIMIT)
        assert asyncio.get_running_loop().time() - began < 2


async def test_certificates_are_checked_against_the_bundle_or_ssl_cert_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As httpx did: certifi's bundle (a self-signed certificate is refused, a
    ConnectError), or the one SSL_CERT_FILE names."""
    context, cert_file = server_context(tmp_path)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/keys"
    async with server:
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        async with IdentityProviderClient(timeout=2) as client:
            with pytest.raises(broker_http.ConnectError):
                await client.fetch("GET", url, limit=LIMIT)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
        async with IdentityProviderClient(timeout=2) as client:
            assert await client.fetch("GET", url, limit=LIMIT) == (200, b"{}")


async def test_the_bundle_is_loaded_at_the_first_https_call_only(
    json_server: tuple[str, list[tuple[bytes, bytes]], list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client's TLS context trusts certifi's bundle, and is made only when a provider is
    called over https (memory, README *Performance*): plain-HTTP calls never load it."""
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    url, _, _ = json_server
    async with IdentityProviderClient(timeout=5) as client:
        await client.fetch("POST", f"{url}/token", limit=LIMIT, content=b"a=1")
        assert client._tls is None
        assert client._tls_context().cert_store_stats()["x509_ca"] > 100


async def test_a_url_that_is_not_http_is_an_unsupported_protocol() -> None:
    async with IdentityProviderClient(timeout=2) as client:
        with pytest.raises(broker_http.UnsupportedProtocol):
            await client.fetch("GET", "ftp://login.entra.test/keys", limit=LIMIT)


async def test_a_closed_client_sends_nothing() -> None:
    client = IdentityProviderClient()
    await client.aclose()
    with pytest.raises(RuntimeError):
        await client.fetch("GET", "http://127.0.0.1:9/keys", limit=LIMIT)


async def test_public_only_never_connects_to_an_internal_address(
    json_server: tuple[str, list[tuple[bytes, bytes]], list[int]],
) -> None:
    """However an issuer's DNS answers, the service does not call its own network (README,
    *Security model*): a loopback or private address is refused before connecting."""
    url, seen, _ = json_server
    by_name = url.replace("127.0.0.1", "localhost")
    async with IdentityProviderClient(timeout=5, public_only=True) as client:
        for target in (url, by_name):  # an address, and a name resolving to it
            with pytest.raises(ConnectError):
                await client.fetch("GET", f"{target}/keys", limit=LIMIT)
    assert seen == [], "nothing reached the server"
    # A host the operator configured (an authority stand-in) is trusted as it resolves.
    host = url.split("//", 1)[1].split(":", 1)[0]
    async with IdentityProviderClient(
        timeout=5, public_only=True, trusted_hosts=frozenset({host})
    ) as client:
        status, _ = await client.fetch("POST", f"{url}/token", limit=1024, content=b"a=1")
    assert status == 400


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("::1", False),
        ("fd00::1", False),
        ("fe80::1%eth0", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 to 169.254.169.254
        ("64:ff9b:1::a00:1", False),  # local-use NAT64 to 10.0.0.1
        ("64:ff9b::808:808", True),  # NAT64 to 8.8.8.8
        ("2002:a00:1::1", False),  # 6to4 of 10.0.0.1
        ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
        ("::7f00:1", False),  # IPv4-compatible 127.0.0.1 (deprecated: RFC 4291)
        ("::808:808", False),  # IPv4-compatible, whatever it carries
        ("fec0::1", False),  # site-local (deprecated: RFC 3879)
        ("ff02::1", False),  # multicast
        ("224.0.0.1", False),  # multicast
        ("::ffff:224.0.0.1", False),  # mapped multicast
        ("2002:e000:1::1", False),  # 6to4 of multicast
        ("64:ff9b::e000:1", False),  # NAT64 to multicast
    ],
)
def test_what_counts_as_public(address: str, public: bool) -> None:
    assert _is_public(address) is public


def _counting(answers: list[bytes]) -> tuple[Handler, list[bytes], list[int]]:
    """A server that answers each request on a connection with the next of ``answers``
    (the last one repeated), recording request heads and counting connections."""
    heads: list[bytes] = []
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head, _ = await _read_request(reader)
                heads.append(head)
                writer.write(answers[min(len(heads), len(answers)) - 1])
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return handler, heads, connections


async def test_chunked_and_close_delimited_answers_are_read_whole() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b'3\r\n{"a\r\n4\r\n": 1\r\n1\r\n}\r\n0\r\n\r\n'
    handler, _, connections = _counting([chunked])
    server, url = await _serve(handler)
    async with server, IdentityProviderClient(timeout=2) as client:
        for _ in range(2):
            assert await client.fetch("GET", f"{url}/keys", limit=LIMIT) == (200, b'{"a": 1}')
    assert connections == [1]

    server, url = await _serve(_answering(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 70000))
    async with server, IdentityProviderClient(timeout=2) as client:
        assert await client.fetch("GET", f"{url}/keys", limit=10**6) == (200, b"x" * 70000)


async def test_connection_close_and_unasked_bytes_retire_a_connection() -> None:
    """An answer saying ``Connection: close`` is not followed by a reuse; nor is a connection
    on which the server spoke out of turn while it was idle."""
    handler, _, connections = _counting(
        [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"]
    )
    server, url = await _serve(handler)
    async with server, IdentityProviderClient(timeout=2) as client:
        for _ in range(2):
            assert await client.fetch("GET", f"{url}/keys", limit=LIMIT) == (200, b"{}")
    assert len(connections) == 2

    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nforged")
        await asyncio.sleep(1)
        writer.close()

    server, url = await _serve(chatty)
    async with server, IdentityProviderClient(timeout=2) as client:
        assert await client.fetch("GET", f"{url}/a", limit=LIMIT) == (200, b"{}")
        await asyncio.sleep(0.2)
        idle = [c for connections in client._idle.values() for c in connections]
        assert idle
        assert all(c.closed for c in idle)


async def test_an_idle_connection_is_dropped_after_keepalive() -> None:
    handler, _, connections = _counting([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"])
    server, url = await _serve(handler)
    async with server, IdentityProviderClient(timeout=2, keepalive=0.1) as client:
        await client.fetch("GET", f"{url}/keys", limit=LIMIT)
        await client.fetch("GET", f"{url}/keys", limit=LIMIT)
        assert len(connections) == 1
        await asyncio.sleep(0.2)
        await client.fetch("GET", f"{url}/keys", limit=LIMIT)
    assert len(connections) == 2


async def test_informational_answers_are_skipped() -> None:
    handler, _, _ = _counting(
        [
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
        ]
    )
    server, url = await _serve(handler)
    async with server, IdentityProviderClient(timeout=2) as client:
        assert await client.fetch("GET", f"{url}/keys", limit=LIMIT) == (200, b"{}")


async def test_no_free_connection_within_the_timeout_is_a_connect_timeout() -> None:
    async def dribbling(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
        for byte in b"[1,2] ":  # a byte every 0.1 s: never silent for the read timeout
            await asyncio.sleep(0.1)
            writer.write(bytes([byte]))
            await writer.drain()
        writer.close()

    server, url = await _serve(dribbling)
    async with server, IdentityProviderClient(timeout=0.25, max_connections=1) as client:
        first = asyncio.create_task(client.fetch("GET", f"{url}/a", limit=LIMIT))
        await asyncio.sleep(0.05)
        with pytest.raises(broker_http.ConnectTimeout, match="no free connection"):
            await client.fetch("GET", f"{url}/b", limit=LIMIT)
        assert await first == (200, b"[1,2] ")
        assert not client._slots.locked(), "the slot was handed back"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://user:secret@login.entra.test/token", "credentials"),
        ("http://exa mple.test/token", "not a host name"),
        ("http://login.entra.test:99999/token", "not a URL"),
        ("http:///token", "not a host name"),
    ],
)
async def test_urls_the_client_cannot_call_are_refused_before_connecting(
    url: str, problem: str
) -> None:
    async with IdentityProviderClient(timeout=2) as client:
        with pytest.raises(broker_http.UnsupportedProtocol, match=problem):
            await client.fetch("GET", url, limit=LIMIT)


async def test_a_url_or_header_cannot_add_to_the_request(
    json_server: tuple[str, list[tuple[bytes, bytes]], list[int]],
) -> None:
    """A path from a provider's metadata is escaped into one request target; a header value
    with a line break is refused before anything is sent."""
    url, seen, _ = json_server
    async with IdentityProviderClient(timeout=2) as client:
        await client.fetch("GET", f"{url}/keys x%0d%0aX-Injected: 1/ü?a=b c#frag", limit=LIMIT)
        with pytest.raises(broker_http.TransportError, match="header"):
            await client.fetch(
                "GET", f"{url}/keys", limit=LIMIT, headers={"Accept": "a\r\nX-Injected: 1"}
            )
        with pytest.raises(broker_http.TransportError, match="header"):
            await client.fetch("GET", f"{url}/keys", limit=LIMIT, headers={"A B": "c"})
    assert len(seen) == 1
    assert seen[0][0].split(b"\r\n")[0] == (
        b"GET /keys%20x%0d%0aX-Injected:%201/%C3%BC?a=b%20c HTTP/1.1"
    )
    assert _header(seen[0][0], b"x-injected") is None
    assert _header(seen[0][0], b"accept-encoding") == b"identity"
    assert _header(seen[0][0], b"host") == url.split("//", 1)[1].encode()


async def _tunnel_proxy(
    seen: list[bytes], status: bytes = b"200 Connection established"
) -> tuple[asyncio.Server, str]:
    """An HTTP proxy that answers CONNECT and then pipes both ways."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        if not status.startswith(b"200"):
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        host, port = head.split(b" ")[1].decode().rsplit(":", 1)
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 " + status + b"\r\n\r\n")
        await writer.drain()
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    return await _serve(handle)


async def test_https_goes_through_the_proxys_connect_tunnel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS through an HTTP proxy: CONNECT (with the proxy URL's credentials for the proxy,
    never for the provider), then TLS with the provider, certificate checked, inside it."""
    context, cert_file = server_context(tmp_path)
    handler, heads, _ = _counting([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"])
    provider = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=context)
    port = provider.sockets[0].getsockname()[1]
    seen: list[bytes] = []
    proxy, proxy_url = await _tunnel_proxy(seen)
    monkeypatch.setenv("HTTPS_PROXY", proxy_url.replace("//", "//me:p%40ss@"))
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    async with provider, proxy, IdentityProviderClient(timeout=2) as client:
        for _ in range(2):
            answer = await client.fetch("GET", f"https://127.0.0.1:{port}/keys", limit=LIMIT)
            assert answer == (200, b"{}")
    assert len(seen) == 1, "one tunnel, kept alive"
    assert seen[0].startswith(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n".encode())
    assert _header(seen[0], b"proxy-authorization") == b"Basic bWU6cEBzcw=="  # me:p@ss
    assert heads[0].startswith(b"GET /keys HTTP/1.1\r\n")
    assert _header(heads[0], b"proxy-authorization") is None


async def test_a_proxy_that_refuses_or_is_down_is_a_proxy_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[bytes] = []
    proxy, proxy_url = await _tunnel_proxy(seen, status=b"407 Proxy Authentication Required")
    monkeypatch.setenv("HTTPS_PROXY", proxy_url)
    async with proxy, IdentityProviderClient(timeout=2) as client:
        with pytest.raises(broker_http.ProxyError, match="407"):
            await client.fetch("GET", "https://login.entra.test/keys", limit=LIMIT)
    monkeypatch.setenv("HTTPS_PROXY", proxy_url)  # closed now: nothing listens there
    async with IdentityProviderClient(timeout=2) as client:
        with pytest.raises(broker_http.ProxyError):
            await client.fetch("GET", "https://login.entra.test/keys", limit=LIMIT)
    monkeypatch.setenv("HTTPS_PROXY", "socks5://127.0.0.1:1080")
    async with IdentityProviderClient(timeout=2) as client:
        with pytest.raises(broker_http.ProxyError, match="only http://"):
            await client.fetch("GET", "https://login.entra.test/keys", limit=LIMIT)


async def test_public_only_refuses_an_internal_address_even_through_a_proxy(
    json_server: tuple[str, list[tuple[bytes, bytes]], list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy, seen, _ = json_server
    monkeypatch.setenv("HTTP_PROXY", proxy)
    async with IdentityProviderClient(timeout=2, public_only=True) as client:
        with pytest.raises(ConnectError, match="not a public address"):
            await client.fetch("GET", "http://169.254.169.254/latest/meta-data", limit=LIMIT)
    assert seen == []


async def test_a_second_answer_to_one_request_is_not_read_and_retires_the_connection() -> None:
    handler, _, connections = _counting(
        [
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
        ]
    )
    server, url = await _serve(handler)
    async with server, IdentityProviderClient(timeout=2) as client:
        for _ in range(2):
            assert await client.fetch("GET", f"{url}/keys", limit=LIMIT) == (200, b"{}")
    assert len(connections) == 2


async def test_headers_without_end_are_cut_off() -> None:
    sent = 0

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n")
        try:
            while sent < 50_000_000:
                writer.write(b"X-Filler: " + b"y" * 1000 + b"\r\n")
                await writer.drain()
                sent += 1012
        except ConnectionError:
            pass

    server, url = await _serve(endless)
    async with server, IdentityProviderClient(timeout=5) as client:
        with pytest.raises(broker_http.TransportError, match="head is over"):
            await client.fetch("GET", f"{url}/keys", limit=LIMIT)
    assert sent < 10_000_000
