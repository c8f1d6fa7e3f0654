"""Serve the example frontend: a stand-in for the Patchworks dashboard (Python 3.11, stdlib only).

    python examples/frontend/serve.py --port 3000 --broker-url http://127.0.0.1:8000 \
        [--provider-id ID] [--host 127.0.0.1]

* ``/app.js``, ``/admin.js`` and ``/style.css`` come from this folder (read on every request, so edits show
  on reload);
* ``/config.js`` is generated from the arguments: ``window.SSO_CONFIG = {brokerUrl, providerId}``;
* every other ``GET`` path answers ``index.html`` (a single-page app: ``/sso/complete``,
  ``/sso/error``, ``/sso/logged-out``, ``/`` …).

Every answer is ``Cache-Control: no-store`` with a strict Content-Security-Policy. Prints
``frontend listening on http://HOST:PORT`` once ready (``--port 0`` picks a free port) and stops
on SIGTERM or Ctrl-C. For local development and examples, not for production.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
STATIC_FILES = {
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/admin.js": ("admin.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
INDEX = ("index.html", "text/html; charset=utf-8")
# Provider ids are UUIDs; allow URL-unreserved characters, nothing that needs escaping.
PROVIDER_ID = re.compile(r"^[A-Za-z0-9._~-]{1,200}$")


def broker_origin(url: str) -> str:
    """``scheme://host[:port]`` of the broker URL; ValueError when it is not a plain http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials")
    if parts.query or parts.fragment:
        raise ValueError("must not contain a query or fragment")
    if not url.isascii() or any(ord(c) < 0x21 or c in "\"',;\\" for c in url):
        raise ValueError("contains characters not allowed here")
    _ = parts.port  # raises ValueError on a bad port
    return f"{parts.scheme}://{parts.netloc}".lower()


def config_script(broker_url: str, provider_id: str | None) -> bytes:
    """``/config.js``: the configuration as JSON, escaped so no value can end the script."""
    payload = json.dumps({"brokerUrl": broker_url, "providerId": provider_id}, ensure_ascii=True)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        payload = payload.replace(char, escape)
    return f"window.SSO_CONFIG = Object.freeze({payload});\n".encode()


def content_security_policy(origin: str) -> str:
    return "; ".join(
        [
            "default-src 'self'",
            f"connect-src 'self' {origin}",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


class FrontendHandler(BaseHTTPRequestHandler):
    server_version = "sso-broker-example-frontend"
    config_js: bytes = b""
    csp: str = ""

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _not_allowed(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"Method not allowed\n", "text/plain", True)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _not_allowed

    def _serve(self, *, send_body: bool) -> None:
        path = urlsplit(self.path).path
        if path == "/config.js":
            self._send(HTTPStatus.OK, self.config_js, "text/javascript; charset=utf-8", send_body)
            return
        name, content_type = STATIC_FILES.get(path, INDEX)
        try:
            body = (HERE / name).read_bytes()
        except OSError:
            self._send(HTTPStatus.NOT_FOUND, b"Not found\n", "text/plain", send_body)
            return
        self._send(HTTPStatus.OK, body, content_type, send_body)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, send_body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", self.csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "GET, HEAD")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The path without its query: /sso/complete?code=… carries a login code.
        path = urlsplit(self.path).path
        self.log_message('"%s %s" %s', self.command, path, str(code))

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} - {format % args}\n")


class FrontendServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class FrontendServer6(FrontendServer):
    address_family = socket.AF_INET6


def make_server(host: str, port: int, broker_url: str, provider_id: str | None) -> FrontendServer:
    handler = type(
        "ConfiguredFrontendHandler",
        (FrontendHandler,),
        {
            "config_js": config_script(broker_url, provider_id),
            "csp": content_security_policy(broker_origin(broker_url)),
        },
    )
    server_class = FrontendServer6 if ":" in host else FrontendServer  # ":": an IPv6 address
    return server_class((host, port), handler)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve the sso-broker example frontend.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=3000, help="port (0: any free port)")
    parser.add_argument(
        "--broker-url", required=True, help="sso-broker's public URL, e.g. http://127.0.0.1:8000"
    )
    parser.add_argument(
        "--provider-id", default=None, help="SSO provider id for the 'Sign in with SSO' link"
    )
    args = parser.parse_args(argv)
    args.broker_url = args.broker_url.rstrip("/")
    try:
        broker_origin(args.broker_url)
    except ValueError as e:
        parser.error(f"--broker-url {e}")
    if args.provider_id is not None and not PROVIDER_ID.fullmatch(args.provider_id):
        parser.error("--provider-id may contain only letters, digits and - . _ ~")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        server = make_server(args.host, args.port, args.broker_url, args.provider_id)
    except OSError as e:
        print(f"cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever() to return, so call it from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    host, port = server.socket.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    print(f"frontend listening on http://{shown_host}:{port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
