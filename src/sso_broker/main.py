"""The ASGI application: ``create_app()`` builds it; the lifespan owns every shared resource."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from sso_broker import __version__
from sso_broker.apidocs import document_errors
from sso_broker.audit.router import router as audit_router
from sso_broker.caches import SESSION_INFO_KEY, Caches
from sso_broker.config import Settings
from sso_broker.crypto import SecretBox
from sso_broker.database import (
    bootstrap_connection,
    create_autocommit,
    create_engine,
    create_sessionmaker,
)
from sso_broker.deps import AppContext
from sso_broker.direct_routes import DirectRoutes
from sso_broker.health import router as health_router
from sso_broker.hotpath import HotPath
from sso_broker.housekeeping import housekeeping
from sso_broker.http import IdentityProviderClient
from sso_broker.idp import adapters_for
from sso_broker.lifecycle import pool_sampler, watch_for_shutdown
from sso_broker.logs import configure_logging
from sso_broker.metrics import worker_exited
from sso_broker.middleware import FrontMiddleware
from sso_broker.problems import install_error_handlers
from sso_broker.providers.router import public_router as provider_keys_router
from sso_broker.providers.router import router as providers_router
from sso_broker.ratelimit import counter_store
from sso_broker.sealing import Sealer
from sso_broker.sessions.router import router as sessions_router
from sso_broker.sessions.tokens import KeyRing, ensure_signing_key
from sso_broker.sso.breaker import Breakers
from sso_broker.sso.discovery import ProviderDirectory
from sso_broker.sso.router import router as sso_router
from sso_broker.users.router import router as users_router

DESCRIPTION = """
Single sign-on broker between Microsoft Entra ID and the Patchworks dashboard.

Admin routes take `Authorization: Bearer <session JWT>`. Errors are
`application/problem+json` with a stable `code`.
"""


async def _load_keys(context: AppContext) -> None:
    """Creates the shared signing key on the very first start (under the bootstrap lock)."""
    async with (
        bootstrap_connection(context.engine) as connection,
        context.sessionmaker(bind=connection) as session,
    ):
        await ensure_signing_key(session, context.box)
        await context.keyring.load(session)


# A request's objects live for a few thousand allocations: with the youngest generation
# collected every 700 (Python's default) they were scanned, promoted, and scanned again
# before dying. Every 2,000 costs no more CPU than every 10,000 did (alternating benchmark
# runs, 1.97-2.00 ms a sign-in either way) and holds 1.5 MB less cyclic garbage at the
# worker's peak (README, *Performance*).
GC_THRESHOLDS = (2_000, 10, 10)


def _freeze_startup_objects() -> None:
    """Moves everything start-up made (modules, routes, models: most of the heap) out of the
    garbage collector's sight; it lives as long as the process anyway.

    Without this every full collection walked all of it again: in the benchmark's sign-in
    row 13 of them cost 650 ms of CPU, up to 67 ms each, with every request in the process
    waiting (README, *Performance*; the ``gc.freeze`` documentation recommends exactly this
    after start-up). Collections of what requests create go on as before.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _hot_path(settings: Settings, engine: AsyncEngine) -> HotPath:
    """The hot paths' statements for the database in use. Imported here, so a process loads
    only its own database's driver: asyncpg for PostgreSQL, ``sqlite3`` for SQLite (the other
    one cost each worker up to 2.6 MB; README, *Performance*)."""
    if engine.dialect.name == "postgresql":
        from sso_broker.fastpath import FastPath

        return await FastPath.connect(settings)
    from sso_broker.fastpath_sqlite import SQLiteFastPath

    return await SQLiteFastPath.connect(engine, lock_timeout=settings.database_timeout)


def create_app(settings: Settings | None = None, *, serving: bool = False) -> FastAPI:
    """The app; ``serving`` (``sso-broker serve``) also tunes the garbage collector for a
    long-lived server process once it has started (``_freeze_startup_objects``), which a
    test process that builds many apps must not have."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not logging.getLogger().handlers:
            # A worker process that uvicorn started (serve --workers N) has not run the
            # CLI's set-up: without this its log lines, access log included, were lost.
            configure_logging(settings.logging_level, settings.log_format)
        engine = create_engine(settings)
        box = SecretBox.from_settings(settings)
        http = IdentityProviderClient(
            timeout=settings.http_timeout,
            connect_timeout=min(settings.http_timeout, 5.0),
            user_agent=f"sso-broker/{__version__}",
            # No internal address, however an issuer's DNS answers, but for the authorities
            # the operator configured, and loopback in development (README, *Security model*).
            public_only=not settings.allow_http_issuers,
            trusted_hosts=settings.trusted_idp_hosts,
        )
        caches = Caches()
        sessionmaker = create_sessionmaker(engine, info={SESSION_INFO_KEY: caches})
        autocommit = create_autocommit(engine, info={SESSION_INFO_KEY: caches})
        fast = await _hot_path(settings, engine)
        counters, redis = counter_store(settings, fast)
        context = AppContext(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            autocommit=autocommit,
            caches=caches,
            fast=fast,
            box=box,
            sealer=Sealer.for_purpose(box, b"sso-broker login-state cookie"),
            successor_key=box.derive(b"sso-broker refresh-token successor"),
            keyring=KeyRing(settings, box),
            http=http,
            directory=ProviderDirectory(http),
            breakers=Breakers(settings.idp_breaker_failures, settings.idp_breaker_open_seconds),
            adapters=adapters_for(settings.adapter_config),
            counters=counters,
        )
        try:
            await _load_keys(context)
            app.state.context = context
            if serving:
                watch_for_shutdown(context)
                _freeze_startup_objects()
            async with pool_sampler(context), housekeeping(context):
                yield
        finally:
            if serving:
                worker_exited(os.getpid())
            await http.aclose()
            await fast.close()
            if redis is not None:
                await redis.aclose()
            await engine.dispose()

    app = FastAPI(
        title="sso-broker",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # No OpenTelemetry here: asking on every request whether it is configured cost 3 %
        # of /me (README, *Performance*).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app, settings.database_url)
    document_errors(app)
    app.add_middleware(
        FrontMiddleware,
        frontend_origin=settings.frontend_origin,
        access_log=settings.access_log,
        metrics=settings.metrics_enabled,
        direct=DirectRoutes(app),
    )
    # The routers' routes go straight into the app's route list, the sign-in's hottest first
    # (routes are tried in order): an included router is matched twice on every request, its
    # own match and then its routes', which cost as much as the /me handler (README,
    # *Performance*). None of the routers adds include-level options.
    routes = [
        route
        for router in (
            sso_router,
            sessions_router,
            health_router,
            providers_router,
            provider_keys_router,
            users_router,
            audit_router,
        )
        for route in router.routes
    ]
    app.router.routes[0:0] = routes
    return app


def create_served_app() -> FastAPI:
    """What ``sso-broker serve`` runs in each worker (uvicorn's factory)."""
    return create_app(serving=True)
