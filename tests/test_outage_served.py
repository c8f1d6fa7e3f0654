"""A database outage, seen from outside (README, *Database outages*): a real ``sso-broker serve``
on PostgreSQL behind a proxy (``tests/pgproxy.py``) that makes the database go away in each
of the ways a real one does, while ten browsers sign in.

Whatever the fault, no client ever gets a 500: the API answers ``503 database_unavailable``
with ``Retry-After`` (or succeeds), a browser route answers a redirect (never a body), the
log stays short and holds no traceback, and sign-ins succeed again within about a second of
the database's return. The shared server itself is never stopped: the faults are the proxy's,
and ``pg_terminate_backend`` on a database of this module's own.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import (
    POSTGRES_URL,
    Database,
    _create_postgres_database,
    _drop_postgres_database,
    make_settings,
)
from tests.e2e.stack import Broker, free_port, in_thread
from tests.pgproxy import Mode, PgProxy
from tests.pkce import PKCE, code_grant
from tests.served import broker_env, running_identity_provider, seed

logger = logging.getLogger("sso_broker.tests.served")
pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="needs SSO_BROKER_TEST_POSTGRES_URL")

BROWSERS = 10
OUTAGE = 4.0  # seconds the database is gone
# Answers come from the database again within this of its return: about a second, which a
# test machine busy with other work may take twice over.
RECOVERY = 2.0
MAX_OUTAGE_LOG = 20_000  # bytes of warnings and errors an outage may log


@dataclass
class Served:
    broker: Broker
    proxy: PgProxy
    database: str  # its name, for pg_terminate_backend
    provider: str
    email: str
    admin: dict[str, str]  # an administrator's bearer header


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from sso_broker.database import create_engine
    from sso_broker.migrate import migrate

    tmp = tmp_path_factory.mktemp("outage")
    url = in_thread(_create_postgres_database)

    async def migrated() -> None:
        engine = create_engine(make_settings(url))
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    in_thread(migrated)
    upstream = make_url(url)
    proxy = PgProxy(upstream.host or "127.0.0.1", upstream.port or 5432).start()
    proxied = upstream.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        with running_identity_provider(tmp) as authority:
            port = free_port()
            broker = Broker(
                env=broker_env(
                    Database("postgres", proxied),
                    authority,
                    port,
                    # As deployed: the limiter's counters are in the database too, so every
                    # sign-in and token request meets the outage first in front of its route.
                    SSO_BROKER_RATE_LIMIT_ENABLED="true",
                    SSO_BROKER_RATE_LIMIT_SIGN_IN_PER_IP="1000000",
                    SSO_BROKER_RATE_LIMIT_TOKEN_PER_IP="1000000",
                ),
                port=port,
                log=tmp / "broker.log",
            )
            try:
                broker.start()
                seeded = seed(broker)
                yield Served(
                    broker,
                    proxy,
                    upstream.database or "",
                    seeded.provider,
                    seeded.email,
                    seeded.admin,
                )
            finally:
                broker.stop()
                # The served process's log goes through the suite's secret check too.
                if broker.log.exists():
                    for line in broker.log.read_text(errors="replace").splitlines():
                        logger.debug(line)
    finally:
        proxy.stop()
        in_thread(lambda: _drop_postgres_database(url))


@dataclass
class Answer:
    step: str  # initiate, authorize, callback, token, me, logout, users, refused grant
    began: float
    ended: float
    status: int  # 0: no answer at all
    content_type: str = ""
    location: str = ""
    retry_after: str | None = None
    body: str = ""


@dataclass
class Load:
    """``BROWSERS`` threads, each signing in again and again (initiate → the provider →
    callback → token → /me → logout) and calling the API's other ways to the database,
    every answer kept."""

    served: Served
    answers: list[Answer] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for _ in range(BROWSERS):
            thread = threading.Thread(target=self._browse, daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _send(self, step: str, send: Callable[[], httpx.Response]) -> Answer:
        began = time.monotonic()
        try:
            response = send()
        except httpx.HTTPError as e:
            answer = Answer(step, began, time.monotonic(), 0, body=repr(e))
        else:
            answer = Answer(
                step,
                began,
                time.monotonic(),
                response.status_code,
                response.headers.get("content-type", ""),
                response.headers.get("location", ""),
                response.headers.get("retry-after"),
                response.text,
            )
        self.answers.append(answer)
        return answer

    def _browse(self) -> None:
        # One client each for the broker and the provider, made once: making one (its TLS
        # context) costs more than a sign-in on a busy machine. A new sign-in forgets the
        # cookies of the last, as a new browser would.
        with (
            httpx.Client(base_url=self.served.broker.url, timeout=15) as browser,
            httpx.Client(timeout=15) as provider,
        ):
            while not self.stopping.is_set():
                browser.cookies.clear()
                self._sign_in(browser, provider)
                self._use_the_api(browser)
                time.sleep(0.01)

    def _use_the_api(self, browser: httpx.Client) -> None:
        """The API's other ways to the database: the admin API on SQLAlchemy, and the token
        grant's statement on the hot paths' own pool, with a code it refuses."""
        admin = self.served.admin
        self._send("users", lambda: browser.get("/api/v1/users", headers=admin))
        grant = code_grant("not-a-code-" + uuid.uuid4().hex)
        self._send("refused grant", lambda: browser.post("/api/v1/auth/token", json=grant))

    def _sign_in(self, browser: httpx.Client, provider: httpx.Client) -> None:
        provider_id, email = self.served.provider, self.served.email
        started = self._send(
            "initiate",
            lambda: browser.get(
                f"/sso/{provider_id}/initiate", params={**PKCE, "login_hint": email}
            ),
        )
        if "/oauth2/v2.0/authorize" not in started.location:
            return
        signed_in = self._send("authorize", lambda: provider.get(started.location))
        if signed_in.status != 302:
            return
        callback = self._send("callback", lambda: browser.get(signed_in.location))
        code = parse_qs(urlsplit(callback.location).query).get("code")
        if not code:
            return
        grant = code_grant(code[0])
        token = self._send("token", lambda: browser.post("/api/v1/auth/token", json=grant))
        if token.status != 200:
            return
        bearer = {"Authorization": f"Bearer {json.loads(token.body)['access_token']}"}
        self._send("me", lambda: browser.get("/api/v1/auth/me", headers=bearer))
        self._send("logout", lambda: browser.post("/api/v1/auth/logout", headers=bearer))


BROWSER_STEPS = ("initiate", "callback")


def _json_to_browser(answer: Answer) -> bool:
    return answer.step in BROWSER_STEPS and "json" in answer.content_type


def _acceptable(answer: Answer) -> bool:
    """A browser route answers a redirect, never a body; the API succeeds, or answers 503
    database_unavailable with Retry-After. The provider's own answers are not judged."""
    if answer.step == "authorize":
        return True
    if answer.step in BROWSER_STEPS:
        # server_error is a bug's code: an outage's is temporarily_unavailable.
        return (
            answer.status == 302
            and not _json_to_browser(answer)
            and "error=server_error" not in answer.location
        )
    if answer.step == "refused grant" and answer.status == 400:
        return '"invalid_grant"' in answer.body
    return answer.status == 200 or (
        answer.status == 503
        and '"database_unavailable"' in answer.body
        and answer.retry_after is not None
    )


def _from_the_database(answer: Answer) -> bool:
    """A success that needed the database (initiate's provider is cached for a second)."""
    return (
        (answer.step == "initiate" and "/oauth2/v2.0/authorize" in answer.location)
        or (answer.step in ("users", "token", "me", "logout") and answer.status == 200)
        or (answer.step == "refused grant" and answer.status == 400)
    )


@dataclass
class Outcome:
    """What the clients and the log saw of one fault."""

    answers: list[Answer]
    log: str  # what the process logged from the fault's start to a second after its end
    down: float  # when the fault began
    back: float  # when the database was back

    def statuses(self) -> dict[str, Counter[int]]:
        seen: dict[str, Counter[int]] = {}
        for answer in self.answers:
            seen.setdefault(answer.step, Counter())[answer.status] += 1
        return seen

    def wrong(self) -> list[Answer]:
        """Every answer no client may get during an outage."""
        return [answer for answer in self.answers if not _acceptable(answer)]

    def failure_log(self) -> str:
        """The lines the outage made the process log: its warnings and errors (the INFO lines
        of the sign-ins that still succeed are the log's ordinary traffic, as the access log,
        which is off here, would be)."""
        return "".join(
            line
            for line in self.log.splitlines(keepends=True)
            if not line.startswith("{") or '"level": "info"' not in line
        )

    def tracebacks(self) -> int:
        return sum(
            1 for line in self.log.splitlines() if "Traceback" in line or '"exception"' in line
        )

    def recovered_after(self) -> float | None:
        """Seconds from the database's return to the first answer read from it again (a
        request begun after the return, its route served by the database)."""
        served = [
            answer.ended - self.back
            for answer in self.answers
            if answer.began >= self.back and _from_the_database(answer)
        ]
        return min(served, default=None)

    def signed_in_after(self) -> float | None:
        """Seconds from the database's return to the first whole sign-in begun after it."""
        firsts = [
            answer.ended - self.back
            for answer in self.answers
            if answer.step == "token" and answer.status == 200 and answer.began >= self.back
        ]
        return min(firsts, default=None)

    def summary(self, name: str) -> str:
        statuses = {step: dict(sorted(seen.items())) for step, seen in self.statuses().items()}
        return (
            f"{name}: answers {statuses}; wrong {len(self.wrong())}"
            f" (500s {sum(1 for a in self.answers if a.status == 500)},"
            f" json on browser routes {sum(1 for a in self.answers if _json_to_browser(a))},"
            f" no answer {sum(1 for a in self.answers if a.status == 0)},"
            f" server_error redirects"
            f" {sum(1 for a in self.answers if 'error=server_error' in a.location)});"
            f" log {len(self.log.encode())} bytes, {len(self.log.splitlines())} lines"
            f" (warnings and errors {len(self.failure_log().encode())} bytes,"
            f" {len(self.failure_log().splitlines())} lines),"
            f" {self.tracebacks()} with a traceback; served from the database again after"
            f" {_seconds(self.recovered_after())}, a whole sign-in after"
            f" {_seconds(self.signed_in_after())}"
        )


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def _terminate_backends(database: str) -> int:
    """Ends every connection to ``database`` as an administrator would (57P01)."""

    async def terminate() -> int:
        admin = await asyncpg.connect(POSTGRES_URL.replace("+asyncpg", ""), timeout=5)
        try:
            ended = await admin.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
            return len(ended)
        finally:
            await admin.close()

    return in_thread(terminate)


def _through_a_fault(
    served: Served, fault: Callable[[], None], restore: Callable[[], None]
) -> Outcome:
    """Signs in under load for a second, then through ``fault`` for OUTAGE seconds, then
    ``restore`` and two seconds more; what the clients and the log saw."""
    log = served.broker.log
    with Load(served) as load:
        time.sleep(1.0)
        offset = log.stat().st_size
        down = time.monotonic()
        fault()
        while time.monotonic() - down < OUTAGE:
            time.sleep(0.05)
        restore()
        back = time.monotonic()
        time.sleep(1.0)
        with log.open("rb") as handle:
            handle.seek(offset)
            logged = handle.read().decode("utf-8", "replace")
        time.sleep(1.0)
    return Outcome(load.answers, logged, down, back)


def _check(outcome: Outcome, name: str) -> None:
    print(outcome.summary(name))
    wrong = outcome.wrong()
    assert not wrong, [(a.step, a.status, a.content_type, a.body[:200]) for a in wrong[:10]]
    assert outcome.tracebacks() == 0, outcome.log[:3000]
    failures = outcome.failure_log()
    assert len(failures.encode()) < MAX_OUTAGE_LOG, failures[:3000]
    recovered = outcome.recovered_after()
    assert recovered is not None, "no sign-in succeeded after the database came back"
    assert recovered < RECOVERY, recovered


def test_connections_cut_and_refused(served: Served) -> None:
    """The server restarts or the network drops: every connection ends at once, and new ones
    are refused until it is back."""
    proxy = served.proxy

    def fault() -> None:
        proxy.set_mode(Mode.REFUSE)
        proxy.cut()

    outcome = _through_a_fault(served, fault, lambda: proxy.set_mode(Mode.PASS))
    _check(outcome, "cut + refused")


def test_the_server_shutting_down(served: Served) -> None:
    """A fast shutdown: every session is terminated (57P01) and new connections are told
    "the database system is shutting down" (57P03) until it is back."""
    proxy = served.proxy
    stopping = threading.Event()

    def fault() -> None:
        proxy.set_mode(Mode.SHUTTING_DOWN)
        _terminate_backends(served.database)

    outcome = _through_a_fault(served, fault, lambda: proxy.set_mode(Mode.PASS))
    stopping.set()
    _check(outcome, "shutting down (57P01, then 57P03)")


def test_sessions_terminated_again_and_again(served: Served) -> None:
    """An administrator (or a failover tool) ends the service's sessions, again and again:
    AdminShutdownError on live connections, mid-statement or idle."""
    stopping = threading.Event()

    def terminate() -> None:
        while not stopping.is_set():
            _terminate_backends(served.database)
            time.sleep(0.1)

    killer = threading.Thread(target=terminate, daemon=True)

    def restore() -> None:
        stopping.set()
        killer.join(timeout=10)

    outcome = _through_a_fault(served, killer.start, restore)
    _check(outcome, "pg_terminate_backend every 0.1 s")
