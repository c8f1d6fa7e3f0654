"""The ASGI application: ``create_app()`` builds it; the lifespan owns every shared resource."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from sso_broker import __version__
from sso_broker.audit.router import router as audit_router
from sso_broker.config import Settings
from sso_broker.crypto import SecretBox
from sso_broker.database import bootstrap_connection, create_engine, create_sessionmaker
from sso_broker.deps import AppContext
from sso_broker.errors import install_error_handlers
from sso_broker.health import router as health_router
from sso_broker.logs import RequestContextMiddleware
from sso_broker.middleware import (
    ApiCORSMiddleware,
    BodySizeLimitMiddleware,
    SecurityHeadersMiddleware,
)
from sso_broker.providers.router import router as providers_router
from sso_broker.ratelimit import RateLimitMiddleware, counter_store
from sso_broker.sessions.router import router as sessions_router
from sso_broker.sessions.tokens import KeyRing, ensure_signing_key
from sso_broker.sso.discovery import EntraDirectory
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


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        box = SecretBox.from_settings(settings)
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.http_timeout, connect=min(settings.http_timeout, 5.0)),
            follow_redirects=False,
            headers={"User-Agent": f"sso-broker/{__version__}"},
        )
        sessionmaker = create_sessionmaker(engine)
        counters, redis = counter_store(settings, sessionmaker, engine.dialect.name)
        context = AppContext(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            box=box,
            keyring=KeyRing(settings, box),
            http=http,
            directory=EntraDirectory(http, settings.entra_authority_base),
            counters=counters,
        )
        try:
            await _load_keys(context)
            app.state.context = context
            yield
        finally:
            await http.aclose()
            if redis is not None:
                await redis.aclose()
            await engine.dispose()

    app = FastAPI(
        title="sso-broker",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(ApiCORSMiddleware, frontend_origin=settings.frontend_origin)
    app.add_middleware(RateLimitMiddleware)
    app.add_middleware(BodySizeLimitMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(RequestContextMiddleware, access_log=settings.access_log)
    app.include_router(health_router)
    app.include_router(sessions_router)
    app.include_router(providers_router)
    app.include_router(users_router)
    app.include_router(sso_router)
    app.include_router(audit_router)
    return app
