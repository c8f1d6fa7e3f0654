from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError

from sso_broker.apidocs import no_database
from sso_broker.deps import (
    JSON,
    AppContext,
    ContextDep,
    CurrentPrincipal,
    PrincipalRoute,
    SessionDep,
)
from sso_broker.errors import AUTHENTICATION_ERRORS, ErrorCode, error_responses
from sso_broker.sessions import service
from sso_broker.sessions.schemas import (
    CompanyRead,
    LoginCodeGrant,
    LogoutResponse,
    MeResponse,
    RefreshTokenGrant,
    SessionRead,
    TokenRequest,
    TokenResponse,
)
from sso_broker.sso import signout
from sso_broker.users.schemas import UserRead

router = APIRouter(tags=["Sessions"])


@router.get(
    "/.well-known/jwks.json",
    summary="Public keys that verify session JWTs",
    response_description="A JSON Web Key Set (RFC 7517)",
)
@no_database  # the key ring is loaded at start-up
async def jwks(context: ContextDep, response: Response) -> dict[str, Any]:
    # Cacheable briefly: a new key is published before it signs anything.
    response.headers["Cache-Control"] = "public, max-age=300"
    return context.keyring.jwks


async def _issue(context: AppContext, grant: LoginCodeGrant | RefreshTokenGrant) -> TokenResponse:
    read = context.caches.principals.stamp()  # before the grant reads the caller
    pair = await service.grant(
        context.fast,
        context.sessionmaker,
        context.settings,
        context.keyring,
        context.successor_key,
        login_code=grant.code if isinstance(grant, LoginCodeGrant) else None,
        code_verifier=grant.code_verifier if isinstance(grant, LoginCodeGrant) else None,
        refresh_token=grant.refresh_token if isinstance(grant, RefreshTokenGrant) else None,
    )
    service.remember(context.caches, pair, read)
    return TokenResponse(
        access_token=pair.access.token,
        # Not simply ACCESS_TOKEN_TTL: a token is cut short when its session ends sooner.
        expires_in=pair.access.expires_in,
        refresh_token=pair.refresh_token,
    )


_TOKEN_REQUEST: TypeAdapter[LoginCodeGrant | RefreshTokenGrant] = TypeAdapter(TokenRequest)


class TokenRoute(APIRoute):
    """The token endpoint without FastAPI's body and dependency solving, a tenth of a token
    request's CPU (README, *Performance*): a JSON body that validates goes straight to the
    grant. Any other body (another content type, invalid JSON, a field wrong) takes FastAPI's
    own path, so every ``422`` answers as it did; the same model validates both ways."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        framework = super().get_route_handler()

        async def framework_way(request: Request) -> Response:
            if _FILE_STACK in request.scope:
                return await framework(request)
            # Called straight from the front middleware (direct_routes.py): FastAPI's own
            # handler wants the exit stacks its middleware and request_response would have
            # put in the scope. Nothing it runs for this route needs them after it returns.
            async with (
                AsyncExitStack() as files,
                AsyncExitStack() as inner,
                AsyncExitStack() as function,
            ):
                request.scope.update(
                    {
                        _FILE_STACK: files,
                        "fastapi_inner_astack": inner,
                        "fastapi_function_astack": function,
                    }
                )
                return await framework(request)

        async def handler(request: Request) -> Response:
            content_type = request.headers.get("content-type", "").lower()
            if content_type == JSON or content_type.startswith(JSON + ";"):
                try:
                    grant = _TOKEN_REQUEST.validate_json(await request.body())
                except ValidationError:
                    return await framework_way(request)
                answer = await _issue(request.app.state.context, grant)
                return Response(answer.model_dump_json(), media_type=JSON, headers=_NO_STORE)
            return await framework_way(request)

        return handler

    def direct_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]] | None:
        """The same handler, for the front middleware to call at once (``direct_routes.py``),
        unless a dependency yields: its exit stacks close before the answer is sent there
        (``framework_way``), where FastAPI closes a yielding dependency's after."""
        if yields(self.dependant):
            return None
        return self.get_route_handler()


def yields(dependant: Dependant) -> bool:
    """Whether any of ``dependant``'s dependencies, at any depth, is a generator."""
    for dependency in dependant.dependencies:
        call = dependency.call
        while isinstance(call, functools.partial):
            call = call.func
        # A callable instance's generator is its class's __call__.
        target = call if inspect.isroutine(call) or not callable(call) else type(call).__call__
        if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
            return True
        if yields(dependency):
            return True
    return False


_FILE_STACK = "fastapi_middleware_astack"


_NO_STORE = {"Cache-Control": "no-store"}


async def token(
    request: Annotated[TokenRequest, Body()], context: ContextDep, response: Response
) -> TokenResponse:
    response.headers["Cache-Control"] = "no-store"
    return await _issue(context, request)


router.add_api_route(
    "/api/v1/auth/token",
    token,
    methods=["POST"],
    summary="Trade a login code or a refresh token for a session JWT",
    response_model=TokenResponse,
    responses=error_responses(ErrorCode.INVALID_GRANT, ErrorCode.VALIDATION_ERROR),
    route_class_override=TokenRoute,
)


async def me(principal: CurrentPrincipal) -> MeResponse:
    # no-store comes from FrontMiddleware (middleware.py), as on every API answer.
    return MeResponse(
        user=UserRead.model_validate(principal.user),
        company=CompanyRead(id=principal.company.id, name=principal.company.name),
        session=SessionRead(
            id=principal.session.id,
            provider_id=principal.session.provider_id,
            expires_at=principal.session.expires_at,
        ),
    )


router.add_api_route(
    "/api/v1/auth/me",
    me,
    methods=["GET"],
    summary="The signed-in user, their company and session",
    response_model=MeResponse,
    responses=error_responses(*AUTHENTICATION_ERRORS),
    route_class_override=PrincipalRoute,
)


@router.post(
    "/api/v1/auth/logout",
    summary="End the session now; returns the provider's sign-out URL",
    response_model=LogoutResponse,
    responses=error_responses(*AUTHENTICATION_ERRORS),
)
async def logout(
    principal: CurrentPrincipal, session: SessionDep, context: ContextDep, response: Response
) -> LogoutResponse:
    response.headers["Cache-Control"] = "no-store"
    url = await signout.sign_out(context, session, principal)
    return LogoutResponse(idp_logout_url=url)
