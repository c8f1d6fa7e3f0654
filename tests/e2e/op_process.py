"""Runs the Entra-like OpenID Provider (``tests/e2e/op/server.mjs``) as a child process.

The OP is the OpenID-certified npm package ``oidc-provider`` configured like one Entra tenant:
issuer ``http://127.0.0.1:<port>/<tenant>/v2.0``, so the broker's
``SSO_BROKER_ENTRA_AUTHORITY`` is :attr:`OpenIDProvider.authority`. Its state lives in
``workdir``: the signing key (``keys.json``), the registered clients (``clients.json``, read
by the OP on every lookup, so :meth:`OpenIDProvider.add_client` works while it runs) and its
log (``op.log``). Sessions, codes and grants live in the OP's memory and die with a restart.

Sign in on its login page (``input[name=login]``, ``input[name=password]``,
``button[type=submit]``) with an account's ``login`` (or its ``preferred_username``) and any
non-empty password.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any, TypedDict

OP_DIR = Path(__file__).resolve().parent / "op"
SERVER = OP_DIR / "server.mjs"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0


class Account(TypedDict):
    """One of the OP's users; ``email`` is None for the account whose token has no email."""

    login: str
    oid: str
    name: str
    email: str | None
    preferred_username: str


def _load_accounts() -> dict[str, Account]:
    document: dict[str, dict[str, Any]] = json.loads((OP_DIR / "accounts.json").read_text())
    return {
        login: Account(
            login=login,
            oid=str(entry["oid"]),
            name=str(entry["name"]),
            email=entry.get("email"),
            preferred_username=str(entry["preferred_username"]),
        )
        for login, entry in document.items()
    }


def node_available() -> bool:
    """True when ``node`` is on PATH and ``npm ci`` has been run in ``tests/e2e/op``."""
    return shutil.which("node") is not None and (OP_DIR / "node_modules" / "oidc-provider").is_dir()


class OpenIDProviderError(RuntimeError):
    """The OP did not start (the message ends with its log's last lines)."""


class OpenIDProvider:
    """One Entra-like tenant served by ``node server.mjs``; restarts keep the port."""

    ACCOUNTS: dict[str, Account] = _load_accounts()
    PASSWORD = "any non-empty password"  # what the login page accepts, for the record

    def __init__(
        self, workdir: Path, tenant_id: str, port: int = 0, profile: str = "entra"
    ) -> None:
        """``profile`` makes it look like another kind of provider (``server.mjs``): okta,
        pingone or oidc."""
        self.profile = profile
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tenant_id = str(uuid.UUID(tenant_id))  # lower-case canonical GUID
        self.port = port
        self.keys_file = self.workdir / "keys.json"
        self.clients_file = self.workdir / "clients.json"
        self.log_file = self.workdir / "op.log"
        self._clients: list[dict[str, Any]] = []
        if self.clients_file.exists():
            self._clients = json.loads(self.clients_file.read_text())
        self._process: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None
        self._issuer: str | None = None

    # -- addresses -------------------------------------------------------------------------

    @property
    def authority(self) -> str:
        """What the broker's ``SSO_BROKER_ENTRA_AUTHORITY`` is set to."""
        self._require_port()
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return self._issuer or f"{self.authority}/{self.tenant_id}/v2.0"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _require_port(self) -> None:
        if not self.port:
            raise OpenIDProviderError("the OP has no port yet: start it first")

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the OP and waits (at most 20 s) for its ready line; keeps its port."""
        if self.running:
            return
        node = shutil.which("node")
        if node is None:
            raise OpenIDProviderError("node is not on PATH (install Node.js 20+)")
        command = [
            node,
            str(SERVER),
            "--port",
            str(self.port),
            "--tenant",
            self.tenant_id,
            "--keys",
            str(self.keys_file),
            "--clients",
            str(self.clients_file),
            "--profile",
            self.profile,
        ]
        self._log = self.log_file.open("a", encoding="utf-8")
        self._log.write(f"--- starting: {' '.join(command)}\n")
        self._log.flush()
        process = subprocess.Popen(  # noqa: S603 - a fixed command line
            command,
            cwd=OP_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            encoding="utf-8",
            env={**os.environ, "NODE_ENV": "test"},
        )
        self._process = process
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read_stdout, args=(process, lines), daemon=True).start()
        try:
            ready = self._wait_ready(process, lines)
        except BaseException:
            self.stop()
            raise
        self.port = int(ready["port"])
        self._issuer = str(ready["issuer"])

    def _read_stdout(self, process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        """Hands the first line over and drains the rest, so the pipe never fills."""
        assert process.stdout is not None
        with process.stdout:
            for line in process.stdout:
                lines.put(line)
        lines.put(None)

    def _wait_ready(
        self, process: subprocess.Popen[str], lines: queue.Queue[str | None]
    ) -> dict[str, Any]:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OpenIDProviderError(
                    f"the OP did not start within {START_TIMEOUT:g} s{self._tail()}"
                )
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                process.wait(timeout=STOP_TIMEOUT)
                raise OpenIDProviderError(
                    f"the OP exited with status {process.returncode}{self._tail()}"
                )
            try:
                ready = json.loads(line)
            except ValueError:
                continue
            if isinstance(ready, dict) and "issuer" in ready and "port" in ready:
                return ready

    def _tail(self, count: int = 20) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            lines = self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return ":\n" + "\n".join(lines[-count:]) if lines else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        """Stops and starts again on the same port (in-memory sessions and codes are lost)."""
        self.stop()
        self.start()

    def __enter__(self) -> OpenIDProvider:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- keys and clients ------------------------------------------------------------------

    @property
    def kid(self) -> str:
        """The kid of the key the OP signs with now."""
        keys: list[dict[str, Any]] = json.loads(self.keys_file.read_text())["keys"]
        return str(keys[0]["kid"])

    def rotate_keys(self) -> str:
        """A new signing key (the old one is gone from the key set); returns its kid."""
        old = self.kid if self.keys_file.exists() else None
        was_running = self.running
        self.stop()
        self.keys_file.unlink(missing_ok=True)
        self.start()
        new = self.kid
        if new == old:
            raise OpenIDProviderError("the OP kept its old key")
        if not was_running:
            self.stop()
        return new

    def add_client(self, redirect_uri: str, post_logout_redirect_uri: str) -> tuple[str, str]:
        """Registers a confidential web client; returns its (client ID GUID, secret)."""
        client_id = str(uuid.uuid4())
        # Entra client secrets are 40 characters of this alphabet.
        secret = "".join(
            secrets.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789~._-")
            for _ in range(40)
        )
        self._clients.append(
            {
                "client_id": client_id,
                "client_secret": secret,
                "redirect_uris": [redirect_uri],
                "post_logout_redirect_uris": [post_logout_redirect_uri],
            }
        )
        self._write_clients()
        return client_id, secret

    def upload_keys(self, client_id: str, jwks: dict[str, Any] | None) -> None:
        """What an administrator does at the provider with the broker's certificate: the
        client then authenticates with private_key_jwt against these keys (None: its secret
        again)."""
        for entry in self._clients:
            if entry["client_id"] == client_id:
                if jwks is None:
                    entry.pop("jwks", None)
                else:
                    entry["jwks"] = jwks
        self._write_clients()

    def _write_clients(self) -> None:
        """Replaces the file atomically, so the running OP never reads half of it."""
        temporary = self.clients_file.with_name(f".{self.clients_file.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(self._clients, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, self.clients_file)
