"""Rate limits on the public routes, counted where every replica sees the same numbers.

Fixed one-minute windows, per client IP on ``/sso/*`` and ``/api/v1/auth/token``, and per
provider on ``/sso/{id}/*``. Counters live in Redis when ``SSO_BROKER_REDIS_URL`` names one
(one pipelined round trip), otherwise in the database (one upsert for all of a request's
counters). A limited request gets ``429`` with ``Retry-After``: problem+json on the API, a
small HTML page on browser routes.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from redis.asyncio import Redis
from sqlalchemy import String, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column
from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from sso_broker.config import Settings
from sso_broker.database import Base, session_scope, utcnow
from sso_broker.errors import ErrorCode, is_database_unavailable, problem_response

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
PURGE_PROBABILITY = 0.01
_SSO_PATH = re.compile(r"^/sso/([^/]{1,64})/")
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
    async def hit(self, keys: list[str], window_end: float) -> list[int]:
        """Adds one to each key's counter for the window ending at ``window_end``."""


class DatabaseCounters:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], dialect: str) -> None:
        self._sessionmaker = sessionmaker
        self._insert = postgresql.insert if dialect == "postgresql" else sqlite.insert

    async def hit(self, keys: list[str], window_end: float) -> list[int]:
        expires = datetime.fromtimestamp(window_end, tz=utcnow().tzinfo) + timedelta(seconds=5)
        values = [{"key": key, "count": 1, "expires_at": expires} for key in keys]
        statement = (
            self._insert(RateLimitCounter)
            .values(values)
            .on_conflict_do_update(
                index_elements=[RateLimitCounter.key],
                set_={"count": RateLimitCounter.count + 1},
            )
            .returning(RateLimitCounter.key, RateLimitCounter.count)
        )
        async with session_scope(self._sessionmaker) as session:
            rows = (await session.execute(statement)).all()
            counts: dict[str, int] = {str(key): int(count) for key, count in rows}
            if random.random() < PURGE_PROBABILITY:  # noqa: S311 - housekeeping, not security
                await session.execute(
                    delete(RateLimitCounter).where(RateLimitCounter.expires_at < utcnow())
                )
        return [int(counts[key]) for key in keys]


class RedisCounters:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def hit(self, keys: list[str], window_end: float) -> list[int]:
        ttl = max(1, math.ceil(window_end - time.time()) + 5)
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.incr(f"sso-broker:rl:{key}")
                pipe.expire(f"sso-broker:rl:{key}", ttl)
            results = await pipe.execute()
        return [int(value) for value in results[::2]]


def _limits(settings: Settings, path: str, client_ip: str) -> list[Limit]:
    if path == TOKEN_PATH:
        return [Limit(f"token:ip:{client_ip}", settings.rate_limit_token_per_ip)]
    match = _SSO_PATH.match(path)
    if match is None:
        return []
    return [
        Limit(f"sso:ip:{client_ip}", settings.rate_limit_sign_in_per_ip),
        Limit(
            f"sso:provider:{_provider_key(match.group(1))}",
            settings.rate_limit_sign_in_per_provider,
        ),
    ]


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


class RateLimitMiddleware:
    """Counts the public routes' requests and answers 429 over the limit.

    If the counter store itself fails, the request goes through (and the failure is logged):
    a limiter outage must not become a sign-in outage.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = scope["app"].state.context
        settings: Settings = context.settings
        client = scope.get("client")
        limits = (
            _limits(settings, scope["path"], client[0] if client else "unknown")
            if settings.rate_limit_enabled
            else []
        )
        if limits:
            now = time.time()
            window = int(now // WINDOW_SECONDS)
            window_end = (window + 1) * WINDOW_SECONDS
            keys = [f"{limit.key}:{window}" for limit in limits]
            try:
                counts = await context.counters.hit(keys, window_end)
            except Exception as e:
                if not is_database_unavailable(e) and not _is_redis_error(e):
                    raise
                logger.warning(
                    "rate limiter unavailable; request let through",
                    extra={"error": type(e).__name__},
                )
                counts = [0] * len(keys)
            if any(count > limit.limit for count, limit in zip(counts, limits, strict=True)):
                retry_after = max(1, math.ceil(window_end - now))
                logger.info("rate limited", extra={"path": scope["path"]})
                await _too_many(scope["path"], retry_after)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _is_redis_error(exc: BaseException) -> bool:
    from redis.exceptions import RedisError

    return isinstance(exc, RedisError)


def counter_store(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], dialect: str
) -> tuple[CounterStore, Redis | None]:
    """The store the settings ask for, and the Redis client to close at shutdown (if any)."""
    if settings.redis_url is not None:
        redis = Redis.from_url(
            settings.redis_url.get_secret_value(),
            socket_timeout=settings.database_timeout,
            socket_connect_timeout=settings.database_timeout,
        )
        return RedisCounters(redis), redis
    return DatabaseCounters(sessionmaker, dialect), None
