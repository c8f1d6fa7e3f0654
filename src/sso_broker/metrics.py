"""Prometheus metrics: the instruments the service counts with, and ``GET /metrics``.

No label ever holds a provider or user id, an email, a token or a client address: a label's
values are a route template, a provider type, an error code or a fixed name, so the number of
series stays small whatever the traffic (README, *Operating sso-broker*).

With several uvicorn workers (``sso-broker serve --workers N``) each worker is its own
process with its own counters: the CLI then points ``PROMETHEUS_MULTIPROC_DIR`` at an empty
folder before the workers start, prometheus-client keeps every worker's values in files
there, and whichever worker answers a scrape sums them all (its multiprocess mode). With one
worker (one per pod in Kubernetes) the values stay in memory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from starlette.types import Scope

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

# Seconds. A sign-in's own routes answer in a few milliseconds; a callback waits on the
# identity provider, whose calls are bounded by SSO_BROKER_HTTP_TIMEOUT (10 s by default).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

SIGN_INS = Counter(
    "sso_broker_sign_ins",
    "Sign-ins by provider type and outcome: succeeded when the callback hands out the login "
    "code, else the error code of the failed initiate or callback.",
    ["type", "outcome"],
)
REQUEST_DURATION = Histogram(
    "sso_broker_http_request_duration_seconds",
    "Time to answer a request, by route template, method and status.",
    ["route", "method", "status"],
    buckets=DURATION_BUCKETS,
)
IDP_REQUEST_DURATION = Histogram(
    "sso_broker_idp_request_duration_seconds",
    "Calls to identity providers, by provider type and endpoint (metadata, keys, token); "
    "failed calls included.",
    ["type", "endpoint"],
    buckets=DURATION_BUCKETS,
)
RATE_LIMITED = Counter(
    "sso_broker_rate_limited",
    "Requests refused for a rate limit, by the limit (sign_in, token, connection_test).",
    ["limit"],
)
CACHE_REQUESTS = Counter(
    "sso_broker_cache_requests",
    "Lookups in the per-process caches of provider metadata and signing keys.",
    ["cache", "result"],
)
IDP_CIRCUIT_OPENED = Counter(
    "sso_broker_idp_circuit_open",
    "Times a provider's circuit breaker opened (its calls timed out, failed to connect or "
    "answered 5xx too often in a row), by provider type; each replica counts its own.",
    ["type"],
)
IDP_CIRCUITS_OPEN = Gauge(
    "sso_broker_idp_circuits_open",
    "Circuit breakers open now (a provider's sign-ins fail at once but for one probe now "
    "and then), by provider type; each process has one per provider, all workers summed.",
    ["type"],
    multiprocess_mode="livesum",
)
DB_CONNECTIONS_IN_USE = Gauge(
    "sso_broker_db_connections_in_use",
    "Database connections checked out of the pools (all workers together).",
    multiprocess_mode="livesum",
)

METADATA_HIT = CACHE_REQUESTS.labels("metadata", "hit")
METADATA_MISS = CACHE_REQUESTS.labels("metadata", "miss")
KEYS_HIT = CACHE_REQUESTS.labels("keys", "hit")
KEYS_MISS = CACHE_REQUESTS.labels("keys", "miss")

SUCCEEDED = "succeeded"  # the sign-ins' outcome when no error code applies
UNMATCHED = "unmatched"  # a path no route serves: never the path itself, which is unbounded

# One child per (route, method, status): looking the labels up costs more than observing.
_request_children: dict[tuple[str, str, int], Any] = {}


def observe_request(scope: Scope, status: int, seconds: float) -> None:
    """Counts one answered request under its route's template, never its path."""
    route = scope.get("route")
    template = getattr(route, "path", None) or UNMATCHED
    key = (template, scope["method"], status)
    child = _request_children.get(key)
    if child is None:
        # The method is the client's to choose: any but the standard ones is "other", so a
        # client cannot mint series (nor grow this map) at will.
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        child = REQUEST_DURATION.labels(template, method, str(status))
        if method == scope["method"]:
            _request_children[key] = child
    child.observe(seconds)


_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


def count_sign_in(provider_type: str | None, outcome: str) -> None:
    """One finished sign-in attempt; ``unknown`` type when there is no such provider."""
    SIGN_INS.labels(provider_type or "unknown", outcome).inc()


class IdPTimer:
    """Times one call to an identity provider, failed or not: ``with IdPTimer(type, "token")``."""

    __slots__ = ("_child", "_started")

    def __init__(self, provider_type: str, endpoint: str) -> None:
        self._child = IDP_REQUEST_DURATION.labels(provider_type, endpoint)
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *_: object) -> None:
        self._child.observe(time.perf_counter() - self._started)


class Expiry(Collector):
    """The least time left on any enabled provider's credential, by provider type, read from
    the database when scraped (so it holds across replicas and never goes stale)."""

    def __init__(
        self, secrets: dict[str, datetime], certificates: dict[str, datetime], now: datetime
    ) -> None:
        self.families = (
            ("sso_broker_client_secret_expiry_seconds", secrets, "client secrets"),
            ("sso_broker_certificate_expiry_seconds", certificates, "certificates"),
        )
        self.now = now

    def collect(self) -> Iterable[Metric]:
        for name, soonest, what in self.families:
            family = GaugeMetricFamily(
                name,
                f"Seconds until the first of the enabled providers' {what} expires, by "
                "provider type (negative: expired). Which provider: its warnings in the API.",
                labels=["type"],
            )
            for provider_type, expires in sorted(soonest.items()):
                family.add_metric([provider_type], (expires - self.now).total_seconds())
            yield family


def is_multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROCESS_DIR))


def exposition(extra: Collector | None = None) -> bytes:
    """The text a scrape answers: this process's values (every worker's, in multiprocess
    mode), plus ``extra`` read at scrape time."""
    if is_multiprocess():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    if extra is not None:
        scraped = CollectorRegistry()
        scraped.register(extra)
        text += generate_latest(scraped)
    return text


def worker_exited(pid: int) -> None:
    """Drops a finished worker's live gauges (the pools it no longer holds)."""
    if is_multiprocess():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


__all__ = [
    "CONTENT_TYPE_LATEST",
    "KEYS_HIT",
    "KEYS_MISS",
    "METADATA_HIT",
    "METADATA_MISS",
    "Collector",
    "IdPTimer",
    "count_sign_in",
    "exposition",
    "observe_request",
]
