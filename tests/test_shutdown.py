"""Graceful shutdown (README, *Graceful shutdown*): on SIGTERM a served process stops taking
new work, says so on ``/readyz``, lets the requests in flight finish, and exits as soon as
they are done or when ``SSO_BROKER_SHUTDOWN_GRACE`` runs out. Real processes: a broker, and
the bench's identity provider with a slow token endpoint."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from sso_broker.deps import AppContext
from tests.conftest import Database, _empty_tables
from tests.e2e.stack import Broker, free_port, in_thread
from tests.served import broker_env, login_code_of, seed, set_token_delay, to_the_callback

IDP_DELAY = 2.0


class Served:
    def __init__(self, database: Database, authority: str, tmp_path: Path) -> None:
        self.database, self.authority, self.tmp_path = database, authority, tmp_path
        self.brokers: list[Broker] = []

    def start(self, grace: float) -> Broker:
        port = free_port()
        env = broker_env(self.database, self.authority, port, SSO_BROKER_SHUTDOWN_GRACE=str(grace))
        broker = Broker(env=env, port=port, log=self.tmp_path / f"broker-{port}.log")
        broker.start()
        self.brokers.append(broker)
        return broker


@pytest.fixture
def served(database: Database, identity_provider: str, tmp_path: Path) -> Iterator[Served]:
    processes = Served(database, identity_provider, tmp_path)
    try:
        yield processes
    finally:
        for broker in processes.brokers:
            broker.stop()
        in_thread(lambda: _empty_tables(database.url))


def _raw_get(sock: socket.socket, path: str) -> bytes:
    """One request on an open keep-alive connection; its status line (b"" when closed)."""
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        return sock.recv(65536).split(b"\r\n", 1)[0]
    except OSError:
        return b""


def _in_flight_callback(broker: Broker, provider: str, email: str) -> tuple[threading.Thread, list]:
    """Starts a sign-in whose callback waits on the slow token endpoint; the thread puts the
    callback's answer (or the error) in the list."""
    client = httpx.Client(base_url=broker.url, timeout=30)
    callback = to_the_callback(client, provider, email)
    outcome: list[httpx.Response | Exception] = []

    def follow() -> None:
        try:
            outcome.append(client.get(callback))
        except httpx.HTTPError as e:
            outcome.append(e)
        finally:
            client.close()

    thread = threading.Thread(target=follow)
    thread.start()
    return thread, outcome


def test_an_in_flight_sign_in_completes_after_sigterm(served: Served) -> None:
    broker = served.start(grace=15)
    seeded = seed(broker)
    assert broker.process is not None
    # A keep-alive connection a load balancer holds, opened while the process is ready.
    held = socket.create_connection(("127.0.0.1", broker.port))
    assert b" 200 " in _raw_get(held, "/readyz")

    set_token_delay(served.authority, IDP_DELAY)
    thread, outcome = _in_flight_callback(broker, seeded.provider, seeded.email)
    time.sleep(0.5)  # the callback is waiting on the token endpoint now
    sent = time.monotonic()
    broker.process.send_signal(signal.SIGTERM)

    # From now on the process is not ready: 503 on a connection still served, or no
    # connection at all; never 200.
    assert b" 200 " not in _raw_get(held, "/readyz")
    answers: list[str] = []
    while broker.process.poll() is None and time.monotonic() - sent < 1.0:
        try:
            answers.append(str(httpx.get(f"{broker.url}/readyz", timeout=2).status_code))
        except httpx.HTTPError:
            answers.append("refused")
        time.sleep(0.05)
    assert "200" not in answers, answers

    thread.join(timeout=20)
    (finished,) = outcome
    assert isinstance(finished, httpx.Response), finished
    assert login_code_of(finished)  # the sign-in ended as any other does

    broker.process.wait(timeout=15)
    took = time.monotonic() - sent
    # It waited for the callback, and not for the grace once the callback was done.
    assert IDP_DELAY - 0.5 - 0.2 <= took < IDP_DELAY + 5, took
    held.close()


def test_the_grace_bounds_the_wait(served: Served) -> None:
    broker = served.start(grace=1)
    seeded = seed(broker)
    assert broker.process is not None
    set_token_delay(served.authority, 10)
    thread, outcome = _in_flight_callback(broker, seeded.provider, seeded.email)
    time.sleep(0.5)
    sent = time.monotonic()
    broker.process.send_signal(signal.SIGTERM)
    broker.process.wait(timeout=10)
    took = time.monotonic() - sent
    assert took < 1 + 3, took  # the grace, and the lifespan's own shutdown
    thread.join(timeout=15)
    assert outcome  # the browser got an answer or a closed connection, not a hang
    set_token_delay(served.authority, 0)


async def test_readyz_says_shutting_down_while_draining(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    context: AppContext = app.state.context
    assert (await client.get("/readyz")).status_code == 200
    context.draining = True
    try:
        answer = await client.get("/readyz")
    finally:
        context.draining = False
    assert answer.status_code == 503
    assert answer.json()["code"] == "shutting_down"
    assert answer.headers["retry-after"]
    # Everything else is still served: the requests in flight must finish.
    assert (await client.get("/healthz")).status_code == 200
