"""Closed-loop "browsers" (``lean_http``) for the flows that carry state, and a fallback route
driver.

Each browser has its own keep-alive connections and its own cookie jar, follows no redirect
by itself: it reads every ``Location``, checks it, and requests it,
so the login-state cookie the service set at initiate is what the jar sends to the callback.

A run starts ``concurrency`` browsers, lets them warm up, then measures a window: what
completes inside it counts (rate, p50/p99 of the whole flow and of each step), and the
service's CPU is read from /proc at both ends of the window. Every answer is checked; an
unexpected status or ``Location`` is an error, counted (warm-up included) and reported.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from bench.common import CLIENT_SECRET, FRONTEND_URL, HotUser
from bench.lean_http import CookieJar, LeanClient, Reply
from bench.procs import CLOCK_TICKS, Meter

REQUEST_TIMEOUT_S = 30.0
_JSON = {"Content-Type": "application/json"}
_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class FlowError(Exception):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


def percentile(samples: Sequence[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class Result:
    """What one measured window gave: counts, latencies (ms), CPU of the watched processes."""

    completed: int = 0
    window_s: float = 0.0
    samples: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    cpu_ticks: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.completed / self.window_s if self.window_s else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def cpu_ms_per_op(self, name: str) -> float | None:
        ticks = self.cpu_ticks.get(name)
        if ticks is None or not self.completed:
            return None
        return ticks / CLOCK_TICKS * 1000 / self.completed

    def latency(self, step: str = "total") -> dict[str, float | None]:
        samples = self.samples.get(step, [])
        return {"p50": percentile(samples, 50), "p99": percentile(samples, 99)}


Flow = Callable[[], Awaitable[dict[str, float]]]


async def closed_loop(
    flows: Sequence[Flow],
    *,
    warmup: float,
    duration: float,
    watch: dict[str, int],
) -> Result:
    """Runs each flow in a loop (one per browser); measures the window after ``warmup``.

    ``watch`` names process trees (root pids) whose CPU is read at both ends of the window.
    A flow returns its steps' durations in ms (``total`` included) or raises.
    """
    meter = Meter(watch)
    result = Result()
    window: list[float] = []  # [start, end] once known
    stopping = False

    async def browser(flow: Flow) -> None:
        while not stopping:
            try:
                steps = await flow()
            except FlowError as e:
                result.errors[f"{e.step}: {e.reason}"] += 1
                await asyncio.sleep(0.01)
                continue
            except OSError as e:  # TimeoutError and LeanHTTPError too
                result.errors[f"transport: {type(e).__name__}"] += 1
                await asyncio.sleep(0.01)
                continue
            now = time.perf_counter()
            if len(window) == 1 or (len(window) == 2 and now <= window[1]):
                result.completed += 1
                for step, ms in steps.items():
                    result.samples.setdefault(step, []).append(ms)

    tasks = [asyncio.create_task(browser(flow)) for flow in flows]
    try:
        await asyncio.sleep(warmup)
        meter.start()
        window.append(time.perf_counter())
        await asyncio.sleep(duration)
        window.append(time.perf_counter())
        result.cpu_ticks = meter.stop()
        result.window_s = window[1] - window[0]
        stopping = True
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    finally:
        for task in tasks:
            task.cancel()
    return result


def pkce_pair() -> tuple[str, str]:
    """A fresh PKCE verifier and its S256 challenge (RFC 7636)."""
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _location(reply: Reply, step: str, prefix: str) -> str:
    if reply.status != 302:
        raise FlowError(step, f"status {reply.status}")
    location = reply.headers.get("location", "")
    if not location.startswith(prefix):
        query = parse_qs(urlsplit(location).query)
        error = query.get("error", [""])[0]
        raise FlowError(step, f"unexpected Location {error or location[:60]!r}")
    return location


def _query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


class Browser:
    """One browser: its own connections and cookie jar; signs its users in, one at a time.

    It speaks through ``lean_http`` rather than aiohttp: on this 2-core machine the
    generator's own CPU competed with the service it measured (``lean_http.py``)."""

    def __init__(self, service: str, idp: str, users: Sequence[HotUser]) -> None:
        self.service = service.rstrip("/")
        self.idp = idp.rstrip("/")
        self.users = list(users)
        self.turn = 0
        self.to_service = LeanClient(self.service, timeout=REQUEST_TIMEOUT_S)
        self.to_idp = LeanClient(self.idp, timeout=REQUEST_TIMEOUT_S)
        self.jar = CookieJar()  # the service's cookies (the IdP sets none)
        self.tokens: dict[str, str] = {}  # user id → latest access token
        self.refresh_token: str | None = None

    async def __aenter__(self) -> Browser:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.to_service.aclose()
        await self.to_idp.aclose()

    def _next_user(self) -> HotUser:
        user = self.users[self.turn % len(self.users)]
        self.turn += 1
        return user

    async def _get_service(self, url: str, headers: dict[str, str] | None = None) -> Reply:
        reply = await self.to_service.request(
            "GET", url, headers={**self.jar.header(), **(headers or {})}
        )
        self.jar.update(reply.cookies)
        return reply

    async def _post_json(self, path: str, document: dict[str, str]) -> Reply:
        return await self.to_service.request(
            "POST", path, headers=_JSON, body=json.dumps(document).encode()
        )

    async def sign_in(self) -> dict[str, float]:
        """initiate → IdP authorize → callback → token (login code) → me."""
        user = self._next_user()
        steps: dict[str, float] = {}
        started = time.perf_counter()

        mark = time.perf_counter()
        # As the dashboard does: a fresh PKCE pair per sign-in, the challenge at initiate and
        # the verifier with the login code (README, *Signing in*).
        verifier, challenge = pkce_pair()
        url = f"/sso/{user.provider_id}/initiate?" + urlencode(
            {"login_hint": user.email, "code_challenge": challenge, "code_challenge_method": "S256"}
        )
        reply = await self._get_service(url)
        to_idp = _location(reply, "initiate", f"{self.idp}/{user.tenant}/oauth2/v2.0/authorize?")
        if not reply.cookies:
            raise FlowError("initiate", "no login-state cookie")
        query = _query(to_idp)
        callback = f"{self.service}/sso/{user.provider_id}/callback"
        if query.get("client_id") != user.client_id or query.get("redirect_uri") != callback:
            raise FlowError("initiate", "wrong client_id or redirect_uri")
        if query.get("login_hint") != user.email:
            raise FlowError("initiate", "login_hint not passed on")
        steps["initiate"] = (time.perf_counter() - mark) * 1000

        mark = time.perf_counter()
        reply = await self.to_idp.request("GET", to_idp)
        back = _location(reply, "authorize", callback + "?")
        steps["authorize"] = (time.perf_counter() - mark) * 1000

        mark = time.perf_counter()
        reply = await self._get_service(back)
        done = _location(reply, "callback", f"{FRONTEND_URL}/sso/complete?code=")
        code = _query(done)["code"]
        steps["callback"] = (time.perf_counter() - mark) * 1000

        mark = time.perf_counter()
        reply = await self._post_json(
            "/api/v1/auth/token",
            {"grant_type": "login_code", "code": code, "code_verifier": verifier},
        )
        if reply.status != 200:
            raise FlowError("token", f"status {reply.status}")
        tokens = reply.json()
        if not isinstance(tokens, dict) or tokens.get("token_type") != "Bearer":
            raise FlowError("token", f"not a token response: {reply.body[:60]!r}")
        access, self.refresh_token = tokens["access_token"], tokens["refresh_token"]
        steps["token"] = (time.perf_counter() - mark) * 1000

        mark = time.perf_counter()
        reply = await self.to_service.request(
            "GET", "/api/v1/auth/me", headers={"Authorization": f"Bearer {access}"}
        )
        if reply.status != 200:
            raise FlowError("me", f"status {reply.status}")
        me = reply.json()
        if me.get("user", {}).get("email") != user.email or me["user"].get("id") != user.id:
            raise FlowError("me", "signed in as someone else")
        steps["me"] = (time.perf_counter() - mark) * 1000
        steps["total"] = (time.perf_counter() - started) * 1000
        self.tokens[user.id] = access
        return steps

    async def refresh(self) -> dict[str, float]:
        """One link of this browser's rotating refresh-token chain."""
        if self.refresh_token is None:
            await self.sign_in()
        mark = time.perf_counter()
        reply = await self._post_json(
            "/api/v1/auth/token",
            {"grant_type": "refresh_token", "refresh_token": self.refresh_token or ""},
        )
        if reply.status != 200:
            self.refresh_token = None  # the chain is broken: sign in again
            raise FlowError("refresh", f"status {reply.status}")
        self.refresh_token = reply.json()["refresh_token"]
        ms = (time.perf_counter() - mark) * 1000
        return {"refresh": ms, "total": ms}

    async def idp_pair(self) -> dict[str, float]:
        """The IdP alone: what the service asks of it per sign-in (authorize, then token)."""
        user = self._next_user()
        verifier, challenge = pkce_pair()
        redirect_uri = f"http://127.0.0.1:9/sso/{user.provider_id}/callback"
        state = secrets.token_urlsafe(32)
        base = f"/{user.tenant}/oauth2/v2.0"
        url = f"{base}/authorize?" + urlencode(
            {
                "response_type": "code",
                "client_id": user.client_id,
                "redirect_uri": redirect_uri,
                "scope": "openid profile email offline_access",
                "state": state,
                "nonce": secrets.token_urlsafe(32),
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "response_mode": "query",
                "login_hint": user.email,
            }
        )
        started = time.perf_counter()
        reply = await self.to_idp.request("GET", url)
        back = _location(reply, "authorize", redirect_uri + "?")
        query = _query(back)
        if query.get("state") != state:
            raise FlowError("authorize", "state not returned")
        mark = time.perf_counter()
        authorize_ms = (mark - started) * 1000
        form = {
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": redirect_uri,
            "client_id": user.client_id,
            "client_secret": CLIENT_SECRET,
            "code_verifier": verifier,
        }
        reply = await self.to_idp.request(
            "POST", f"{base}/token", headers=_FORM, body=urlencode(form).encode()
        )
        if reply.status != 200:
            raise FlowError("token", f"status {reply.status}")
        document = reply.json()
        if not isinstance(document.get("id_token"), str):
            raise FlowError("token", "no id_token")
        done = time.perf_counter()
        return {
            "authorize": authorize_ms,
            "token": (done - mark) * 1000,
            "total": (done - started) * 1000,
        }


def partition(users: Sequence[HotUser], count: int) -> list[list[HotUser]]:
    """Each browser gets its own users, so no user signs in twice at once."""
    count = max(1, min(count, len(users)))
    return [list(users[index::count]) for index in range(count)]


async def run_browsers(
    kind: str,
    *,
    service: str,
    idp: str,
    users: Sequence[HotUser],
    concurrency: int,
    warmup: float,
    duration: float,
    watch: dict[str, int],
) -> tuple[Result, dict[str, str]]:
    """``kind`` is ``signin``, ``refresh`` or ``idp``. Returns the result and, for sign-ins
    and refreshes, the latest access token of every user signed in."""
    browsers = [Browser(service, idp, part) for part in partition(users, concurrency)]
    for browser in browsers:
        await browser.__aenter__()
    try:
        if kind == "refresh":  # every browser opens its session first (not measured)
            await asyncio.gather(*(browser.sign_in() for browser in browsers))
        flows: list[Flow] = [
            {"signin": b.sign_in, "refresh": b.refresh, "idp": b.idp_pair}[kind] for b in browsers
        ]
        result = await closed_loop(flows, warmup=warmup, duration=duration, watch=watch)
    finally:
        for browser in browsers:
            await browser.__aexit__(None, None, None)
    tokens: dict[str, str] = {}
    for browser in browsers:
        tokens.update(browser.tokens)
    return result, tokens


@dataclass(frozen=True, slots=True)
class RouteRequest:
    path: str
    headers: dict[str, str] = field(default_factory=dict)


async def run_route(
    base: str,
    requests: Sequence[RouteRequest],
    *,
    expect_status: int,
    expect_location: str | None,
    concurrency: int,
    warmup: float,
    duration: float,
    watch: dict[str, int],
) -> Result:
    """The fallback for single routes when wrk is missing: same checks, Python client."""
    clients = [LeanClient(base, timeout=REQUEST_TIMEOUT_S) for _ in range(concurrency)]
    turn = 0

    def flow_for(http: LeanClient) -> Flow:
        async def flow() -> dict[str, float]:
            nonlocal turn
            request = requests[turn % len(requests)]
            turn += 1
            started = time.perf_counter()
            reply = await http.request("GET", request.path, headers=request.headers)
            if reply.status != expect_status:
                raise FlowError("route", f"status {reply.status}")
            if expect_location is not None and not reply.headers.get("location", "").startswith(
                expect_location
            ):
                raise FlowError("route", "unexpected Location")
            return {"total": (time.perf_counter() - started) * 1000}

        return flow

    try:
        return await closed_loop(
            [flow_for(http) for http in clients], warmup=warmup, duration=duration, watch=watch
        )
    finally:
        for http in clients:
            await http.aclose()


def summary(result: Result, steps: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "completed": result.completed,
        "window_s": round(result.window_s, 3),
        "rate": result.rate,
        **result.latency(),
        "steps": {step: result.latency(step) for step in steps},
        "errors": result.error_count,
        "error_kinds": dict(result.errors.most_common(5)),
    }
