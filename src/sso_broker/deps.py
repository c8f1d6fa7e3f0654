"""FastAPI dependencies: the request's database session, settings, and the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.responses import Response

from sso_broker.caches import Caches
from sso_broker.config import Settings
from sso_broker.crypto import SecretBox
from sso_broker.database import session_scope
from sso_broker.errors import ErrorCode, Forbidden, NotAuthenticated
from sso_broker.hotpath import HotPath
from sso_broker.http import IdentityProviderClient
from sso_broker.idp import Adapters
from sso_broker.ratelimit import Leases
from sso_broker.sealing import Sealer
from sso_broker.sessions import service as sessions_service
from sso_broker.sessions.service import Principal
from sso_broker.sessions.tokens import KeyRing
from sso_broker.sso.breaker import Breakers
from sso_broker.sso.discovery import ProviderDirectory
from sso_broker.users.models import Role

MAX_TOKEN_LENGTH = 4096
JSON = "application/json"


@dataclass(slots=True)
class AppContext:
    """What the lifespan builds once per process and every request shares."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    # Sessions whose statements commit one by one: single reads and single writes.
    autocommit: async_sessionmaker[AsyncSession]
    caches: Caches
    # The hot paths' statements: asyncpg's own on PostgreSQL (fastpath.py), a thread of
    # their own on SQLite (fastpath_sqlite.py).
    fast: HotPath
    box: SecretBox
    # Seals login-state cookies: keys of its own, derived from the encryption keys.
    sealer: Sealer
    # Keys refresh-token successors (sessions/service.py), derived from the encryption key.
    successor_key: bytes
    keyring: KeyRing
    http: IdentityProviderClient
    directory: ProviderDirectory
    # Each provider's circuit breaker in this process (sso/breaker.py).
    breakers: Breakers
    adapters: Adapters
    counters: Leases
    # Set on SIGTERM (``lifecycle.py``): /readyz answers 503 while the requests in flight end.
    draining: bool = False
    # The metrics' last reading of credential expiries: (monotonic time, secrets, certificates)
    # by provider type (``health.py``).
    expiry_read: tuple[float, dict[str, datetime], dict[str, datetime]] | None = None


async def get_context(request: Request) -> AppContext:
    # async, so FastAPI calls it inline instead of hopping to its threadpool.
    context: AppContext = request.app.state.context
    return context


ContextDep = Annotated[AppContext, Depends(get_context)]


async def get_settings(context: ContextDep) -> Settings:
    # async, so FastAPI calls it inline: as a plain function it ran on anyio's thread pool,
    # a hop to another thread on every admin request (0.08 ms of CPU, a tenth of the
    # benchmark's providers row) and ten more threads in every worker (1 MB of an SQLite
    # one; README, *Performance*).
    return context.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_session(context: ContextDep) -> AsyncIterator[AsyncSession]:
    """The request's unit of work, committed before the response is sent."""
    async with session_scope(context.sessionmaker) as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def get_read_session(context: ContextDep) -> AsyncIterator[AsyncSession]:
    """A session for routes that only read: no transaction round trips around their SELECT."""
    async with context.autocommit() as session:
        yield session


ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session, scope="function")]


class SessionBearer(HTTPBearer):
    """The caller behind ``Authorization: Bearer <session JWT>``, checked for ``roles``.

    One dependency rather than a chain (bearer → context → principal → role check): FastAPI's
    dependency solving cost more per node than the cached lookup itself, on every API request
    (README, *Performance*). It stays an ``HTTPBearer``, so OpenAPI documents the scheme.
    """

    def __init__(self, *roles: Role) -> None:
        super().__init__(
            auto_error=False,
            scheme_name="HTTPBearer",
            description="A session JWT (see /api/v1/auth/token)",
        )
        self.allowed = frozenset(roles)
        self.names = " or ".join(role.value for role in roles)

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        credentials = await super().__call__(request)
        if credentials is None or not credentials.credentials:
            raise NotAuthenticated(
                "Send a session token as `Authorization: Bearer <token>`.",
                code=ErrorCode.NOT_AUTHENTICATED,
            )
        token = credentials.credentials
        if len(token) > MAX_TOKEN_LENGTH:
            raise NotAuthenticated(
                "The bearer token is not a valid session token; sign in again.",
                code=ErrorCode.INVALID_TOKEN,
            )
        context: AppContext = request.app.state.context
        principal = await sessions_service.authenticate(
            context.autocommit, context.fast, context.keyring, context.caches, token
        )
        if self.allowed and principal.user.role not in self.allowed:
            raise Forbidden(
                f"This needs the {self.names} role; ask an administrator of your company."
            )
        return principal


CurrentPrincipal = Annotated[Principal, Depends(SessionBearer())]
CurrentAdmin = Annotated[Principal, Depends(SessionBearer(Role.ADMINISTRATOR))]
CurrentUserManager = Annotated[Principal, Depends(SessionBearer(Role.ADMINISTRATOR, Role.MANAGER))]


class PrincipalRoute(APIRoute):
    """A route whose endpoint takes nothing but the caller (``endpoint(principal) -> model``):
    the route resolves the caller and serialises the model itself, without FastAPI's
    dependency and response machinery, which cost a third of ``/api/v1/auth/me`` (README,
    *Performance*). OpenAPI still reads the endpoint's signature and ``response_model``.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        dependencies = self.dependant.dependencies
        bearer = dependencies[0].call if len(dependencies) == 1 else None
        plain = not (
            self.dependant.path_params
            or self.dependant.query_params
            or self.dependant.header_params
            or self.dependant.cookie_params
            or self.dependant.body_params
        )
        if not isinstance(bearer, SessionBearer) or not plain:
            raise TypeError(f"{self.path}: a PrincipalRoute's endpoint takes only the caller")
        endpoint: Callable[[Principal], Coroutine[Any, Any, BaseModel]] = self.endpoint
        status = self.status_code or 200

        async def handler(request: Request) -> Response:
            model = await endpoint(await bearer(request))
            return Response(model.model_dump_json(), status_code=status, media_type=JSON)

        return handler

    def direct_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The same handler, for the front middleware to call at once (``direct_routes.py``):
        it needs nothing of the framework in between."""
        return self.get_route_handler()
