from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Response

from sso_broker.apidocs import no_database
from sso_broker.deps import ContextDep, CurrentPrincipal, PrincipalRoute, SessionDep
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


@router.post(
    "/api/v1/auth/token",
    summary="Trade a login code or a refresh token for a session JWT",
    response_model=TokenResponse,
    responses=error_responses(ErrorCode.INVALID_GRANT, ErrorCode.VALIDATION_ERROR),
)
async def token(
    request: Annotated[TokenRequest, Body()], context: ContextDep, response: Response
) -> TokenResponse:
    response.headers["Cache-Control"] = "no-store"
    pair = await service.grant(
        context.fast,
        context.sessionmaker,
        context.settings,
        context.keyring,
        context.successor_key,
        login_code=request.code if isinstance(request, LoginCodeGrant) else None,
        code_verifier=request.code_verifier if isinstance(request, LoginCodeGrant) else None,
        refresh_token=request.refresh_token if isinstance(request, RefreshTokenGrant) else None,
    )
    service.remember(context.caches, pair.access)
    return TokenResponse(
        access_token=pair.access.token,
        # Not simply ACCESS_TOKEN_TTL: a token is cut short when its session ends sooner.
        expires_in=pair.access.expires_in,
        refresh_token=pair.refresh_token,
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
