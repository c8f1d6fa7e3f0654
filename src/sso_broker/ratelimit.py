"""Rate limits on the public routes, counted where every replica sees the same numbers.

Fixed one-minute windows, per client address on ``/sso/*`` and ``/api/v1/auth/token`` (an
IPv6 client per /64, the block one subscriber gets), and per provider on callbacks that
carry no login state of ours. No bucket that anonymous requests can fill stops a real
sign-in: initiates count per address only, and a callback whose login-state cookie opens
with our key counts per address only too (README, *Rate limits*).
Counters live in Redis when ``SSO_BROKER_REDIS_URL`` names one
(one pipelined round trip), otherwise in the database (one upsert for all of a request's
counters). A limited request gets ``429`` with ``Retry-After``: problem+json on the API, a
small HTML page on browser routes.

A process does not ask the store on every request: it reserves *leases* of hits
(:class:`Leases`). Far from a limit a lease covers up to :data:`MAX_LEASE` requests, one
round trip for all of them; near the limit leases shrink to a single hit, so every replica
counts exactly there. A hit is only ever served from a reservation the store has counted, so
no window ever lets more than its limit through; reserved hits a process did not use can
only make others stop a little early (README, *Rate limits*).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import random
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import Scope

from sso_broker.config import Settings
from sso_broker.database import Base, utcnow
from sso_broker.errors import ErrorCode, SignInError
from sso_broker.metrics import RATE_LIMITED
from sso_broker.problems import outage_cause, outage_log, problem_response
from sso_broker.redis_client import RedisClient, RedisError
from sso_broker.sso.state import cookie_name, open_state, remember_opened

if TYPE_CHECKING:
    from sso_broker.fastpath import HotPath

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
PURGE_PROBABILITY = 0.01
# Any first segment: a sign-in route's provider id is the client's to choose, and a path
# whose segment no route accepts (too long, not an id) is still a request to count.
_SSO_PATH = re.compile(r"^/sso/([^/]+)/")
MAX_PROVIDER_SEGMENT = 64
TOKEN_PATH = "/api/v1/auth/token"  # noqa: S105 - a route, not a secret


class RateLimitCounter(Base):
    """One counter of one window; rows of past windows are purged now and then."""

    __tablename__ = "rate_limit_counters"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    count: Mapped[int]
    expires_at: Mapped[datetime] = mapped_column(index=True)


@dataclass(frozen=True, slots=True)
class Limit:
    key: str
    limit: int


class CounterStore(Protocol):
    async def hit(self, increments: dict[str, int], window_end: float) -> dict[str, int]:
        """Adds each key's increment to its counter for the window ending at ``window_end``;
        returns every key's new total."""


class DatabaseCounters:
    """The counters in the database, through the hot paths' own connections (``fastpath.py``,
    ``fastpath_sqlite.py``): through SQLAlchemy's async layer each lease cost half a
    millisecond of CPU, a sixth of a limited initiate's (README, *Performance*)."""

    def __init__(self, fast: HotPath) -> None:
        self._fast = fast

    async def hit(self, increments: dict[str, int], window_end: float) -> dict[str, int]:
        expires = datetime.fromtimestamp(window_end, tz=utcnow().tzinfo) + timedelta(seconds=5)
        purge = random.random() < PURGE_PROBABILITY  # noqa: S311 - housekeeping, not security
        purge_before = utcnow() if purge else None
        return await self._fast.count_hits(increments, expires, purge_before=purge_before)


class RedisCounters:
    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis

    async def hit(self, increments: dict[str, int], window_end: float) -> dict[str, int]:
        ttl = max(1, math.ceil(window_end - time.time()) + 5)
        commands: list[tuple[str | int, ...]] = []
        for key, count in increments.items():
            commands.append(("INCRBY", f"sso-broker:rl:{key}", count))
            commands.append(("EXPIRE", f"sso-broker:rl:{key}", ttl))
        results = await self._redis.execute(*commands)  # one round trip for all of them
        totals: dict[str, int] = {}
        for key, total in zip(increments, results[::2], strict=True):
            if not isinstance(total, int):
                raise RedisError("INCRBY answered something other than an integer")
            totals[key] = total
        return totals


MAX_LEASE = 100
# A lease is at most this fraction of what is left of a limit, so the hits other replicas
# hold unused can never take more than a small share of it.
LEASE_SHARE = 8
MAX_LEASED_KEYS = 100_000


@dataclass(slots=True)
class _Lease:
    left: int  # reserved hits not used yet
    total: int  # the store's total for the key when this process last asked


class Leases:
    """Serves hits from reservations in the shared store (see the module docstring)."""

    def __init__(self, store: CounterStore) -> None:
        self.store = store
        self._window = -1
        self._leases: dict[str, _Lease] = {}

    @staticmethod
    def lease_size(limit: int, total: int) -> int:
        return max(1, min(MAX_LEASE, (limit - total) // LEASE_SHARE))

    async def allow(self, limits: list[Limit], window: int, window_end: float) -> bool:
        """Takes one hit of every limit; False when any of them is spent this window."""
        if window != self._window or len(self._leases) > MAX_LEASED_KEYS:
            # A new window starts every count afresh; unused reservations only ever count
            # against a limit, never for it, so dropping them is safe.
            self._leases.clear()
            self._window = window
        wanted: dict[str, int] = {}
        allowed = True
        for limit in limits:
            lease = self._leases.get(limit.key)
            if lease is not None and lease.left > 0:
                lease.left -= 1
            elif lease is not None and lease.total >= limit.limit:
                allowed = False  # spent: asking the store again would only add to it
            else:
                wanted[limit.key] = self.lease_size(limit.limit, lease.total if lease else 0)
        if not wanted:
            return allowed
        totals = await self.store.hit(wanted, window_end)
        for limit in limits:
            size = wanted.get(limit.key)
            if size is None:
                continue
            total = totals[limit.key]
            # The reservation is hits total-size+1 … total; only those within the limit count.
            usable = min(size, limit.limit - (total - size))
            if usable <= 0:
                allowed = False
            # Concurrent requests may have reserved at the same time: their leases add up,
            # so no reserved hit is dropped and the next round trip is as far off as it can be.
            lease = self._leases.get(limit.key)
            left = max(0, usable - 1) + (lease.left if lease is not None else 0)
            latest = max(total, lease.total) if lease is not None else total
            self._leases[limit.key] = _Lease(left=left, total=latest)
        return allowed


def is_rate_limited(path: str) -> bool:
    """Whether requests to ``path`` (or a route's path template) are counted."""
    return path == TOKEN_PATH or _SSO_PATH.match(path) is not None


@lru_cache(maxsize=65_536)
def client_key(host: str) -> str:
    """The bucket of a client address: an IPv4 address itself, an IPv6 address's /64 (one
    subscriber's block: counting each of its 2^64 addresses apart would be no limit), an
    IPv4-mapped IPv6 address as the IPv4 it is; anything that is not an address shares one
    bucket (a misconfigured proxy header must not mint counters at will)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "invalid"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _limits(
    settings: Settings, path: str, client: str, window: int, *, has_state: bool
) -> list[Limit]:
    if path == TOKEN_PATH:
        return [Limit(f"token:ip:{client}:{window}", settings.rate_limit_token_per_ip)]
    match = _SSO_PATH.match(path)
    if match is None:
        return []
    limits = [Limit(f"sso:ip:{client}:{window}", settings.rate_limit_sign_in_per_ip)]
    if not has_state and path.endswith("/callback"):
        # Callbacks without a login state of ours are anonymous noise: they may fill a
        # shared bucket, which only ever stops other callbacks without one.
        limits.append(
            Limit(
                # Cut short: no id is this long, and the cache below keeps what it is given.
                f"sso:provider:{_provider_key(match.group(1)[:MAX_PROVIDER_SEGMENT])}:{window}",
                settings.rate_limit_sign_in_per_provider,
            )
        )
    return limits


def _carries_login_state(scope: Scope, context: Any) -> bool:
    """Whether a GET callback carries the login-state cookie its ``state`` names, sealed by
    us for this provider and unexpired (``sso/state.py``)."""
    if scope["method"] != "GET" or not scope["path"].endswith("/callback"):
        return False
    request = Request(scope)
    state = request.query_params.get("state")
    match = _SSO_PATH.match(scope["path"])
    if not state or match is None:
        return False
    try:
        provider_id = uuid.UUID(match.group(1))
        name = cookie_name(state, secure=context.settings.secure_cookies)
        sealed = request.cookies.get(name)
        opened = open_state(context.sealer, sealed, state=state, provider_id=provider_id)
    except (ValueError, SignInError):
        return False
    # The callback opens the same cookie: it takes this one instead of opening it again
    # (README, *Performance*; sso/router.py).
    remember_opened(scope, state, sealed, opened)
    return True


@lru_cache(maxsize=4096)  # the same few providers over and over: parse each once
def _provider_key(segment: str) -> str:
    """The provider's id in canonical form; one shared bucket for anything that is not an id.

    The segment is chosen by the client: it must neither mint counters at will nor reach the
    database with text it cannot store (PostgreSQL refuses NUL, which turned into a 500).
    """
    try:
        return str(uuid.UUID(segment))
    except ValueError:
        return "malformed"


def _too_many(path: str, retry_after: int) -> Response:
    headers = {"Retry-After": str(retry_after), "Cache-Control": "no-store"}
    if path.startswith("/sso/"):
        return HTMLResponse(
            "<!doctype html><title>Too many sign-in attempts</title>"
            f"<p>Too many sign-in attempts. Try again in {retry_after} seconds.</p>",
            status_code=429,
            headers=headers,
        )
    return problem_response(
        429,
        ErrorCode.RATE_LIMITED,
        "Too many requests",
        f"Too many requests from this address; retry in {retry_after} seconds.",
        headers=headers,
    )


async def take(context: Any, limits_for: Callable[[int], list[Limit]]) -> int | None:
    """Takes one hit of each limit ``limits_for(window)`` names for the current window: the
    seconds to wait when one of them is spent, else None. If the counter store itself fails,
    the hit goes through (and the failure is logged): a limiter outage must not become an
    outage of what it guards."""
    now = time.time()
    window = int(now // WINDOW_SECONDS)
    limits = limits_for(window)
    if not limits:
        return None
    window_end = (window + 1) * WINDOW_SECONDS
    try:
        allowed = await context.counters.allow(limits, window, window_end)
    except Exception as e:
        cause = e if _is_redis_error(e) else outage_cause(e)
        if cause is None:
            raise
        # The request's own failure (if the database is down for it too) logs its line;
        # both share the outage's budget of lines (problems.OutageLog).
        outage_log.warning("rate limiter unavailable; request let through", cause)
        return None
    return None if allowed else max(1, math.ceil(window_end - now))


async def over_limit(scope: Scope) -> Response | None:
    """The 429 answer when this request is over a limit; None when it may go on.

    Called for every request by the middleware in front of the routes (``middleware.py``).
    """
    context = scope["app"].state.context
    settings: Settings = context.settings
    if not settings.rate_limit_enabled:
        return None
    client = scope.get("client")
    retry_after = await take(
        context,
        lambda window: _limits(
            settings,
            scope["path"],
            client_key(client[0]) if client else "invalid",
            window,
            has_state=_carries_login_state(scope, context),
        ),
    )
    if retry_after is None:
        return None
    logger.info("rate limited", extra={"path": scope["path"]})
    RATE_LIMITED.labels("token" if scope["path"] == TOKEN_PATH else "sign_in").inc()
    return _too_many(scope["path"], retry_after)


def _is_redis_error(exc: BaseException) -> bool:
    return isinstance(exc, RedisError)


def counter_store(settings: Settings, fast: HotPath) -> tuple[Leases, RedisClient | None]:
    """The store the settings ask for, behind this process's leases, and the Redis client to
    close at shutdown (if any)."""
    if settings.redis_url is not None:
        redis = RedisClient(
            settings.redis_url.get_secret_value(), timeout=settings.database_timeout
        )
        return Leases(RedisCounters(redis)), redis
    return Leases(DatabaseCounters(fast)), None
