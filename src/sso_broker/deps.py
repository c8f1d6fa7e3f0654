"""FastAPI dependencies: the request's database session, settings, and the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from sso_broker.config import Settings
from sso_broker.crypto import SecretBox
from sso_broker.database import session_scope
from sso_broker.errors import ErrorCode, Forbidden, NotAuthenticated
from sso_broker.ratelimit import CounterStore
from sso_broker.sessions import service as sessions_service
from sso_broker.sessions.service import Principal
from sso_broker.sessions.tokens import KeyRing
from sso_broker.sso.discovery import EntraDirectory
from sso_broker.users.models import Role

MAX_TOKEN_LENGTH = 4096


@dataclass(slots=True)
class AppContext:
    """What the lifespan builds once per process and every request shares."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    box: SecretBox
    keyring: KeyRing
    http: httpx.AsyncClient
    directory: EntraDirectory
    counters: CounterStore


def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


ContextDep = Annotated[AppContext, Depends(get_context)]


def get_settings(context: ContextDep) -> Settings:
    return context.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_session(context: ContextDep) -> AsyncIterator[AsyncSession]:
    """The request's unit of work, committed before the response is sent."""
    async with session_scope(context.sessionmaker) as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]

_bearer = HTTPBearer(auto_error=False, description="A session JWT (see /api/v1/auth/token)")


async def get_principal(
    context: ContextDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
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
    return await sessions_service.authenticate(
        session, context.keyring, context.sessionmaker, token
    )


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require_roles(*roles: Role) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    allowed = frozenset(roles)
    names = " or ".join(role.value for role in roles)

    async def dependency(principal: CurrentPrincipal) -> Principal:
        if principal.user.role not in allowed:
            raise Forbidden(f"This needs the {names} role; ask an administrator of your company.")
        return principal

    return dependency


CurrentAdmin = Annotated[Principal, Depends(require_roles(Role.ADMINISTRATOR))]
CurrentUserManager = Annotated[Principal, Depends(require_roles(Role.ADMINISTRATOR, Role.MANAGER))]
