"""Browser routes: every failure is a 302 to the frontend's sign-in error page."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.responses import Response

from sso_broker.deps import ContextDep, SessionDep
from sso_broker.errors import BrowserRoute, sign_in_failure
from sso_broker.sessions import service as sessions_service
from sso_broker.sso import service
from sso_broker.sso.state import STATE_TTL, cookie_name

_REDIRECT: dict[int | str, dict[str, Any]] = {
    302: {"description": "To Entra, or to the frontend's completion or error page"}
}


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


router = APIRouter(prefix="/sso/{provider_id}", tags=["Browser sign-in"], route_class=BrowserRoute)


def _cookie_path(context: ContextDep, provider_id: uuid.UUID) -> str:
    prefix = context.settings.public_url.path or ""
    return f"{prefix.rstrip('/')}/sso/{provider_id}/callback"


@router.get(
    "/initiate",
    summary="Start a sign-in: redirect the browser to the provider",
    status_code=302,
    response_class=RedirectResponse,
    responses=_REDIRECT,
)
async def initiate(
    provider_id: uuid.UUID,
    session: SessionDep,
    context: ContextDep,
    return_to: Annotated[str | None, Query()] = None,
    login_hint: Annotated[str | None, Query()] = None,
    domain_hint: Annotated[str | None, Query()] = None,
    prompt: Annotated[str | None, Query()] = None,
) -> Response:
    result = await service.initiate(
        session,
        context,
        provider_id,
        return_to=return_to,
        login_hint=login_hint,
        domain_hint=domain_hint,
        prompt=prompt,
    )
    response = RedirectResponse(result.authorization_url, status_code=302)
    response.set_cookie(
        result.login.cookie_name,
        result.login.seal(context.box),
        max_age=int(STATE_TTL.total_seconds()),
        path=_cookie_path(context, provider_id),
        secure=context.settings.secure_cookies,
        httponly=True,
        samesite="lax",
    )
    return _no_store(response)


async def _finish(
    request: Request,
    context: ContextDep,
    provider_id: uuid.UUID,
    params: service.CallbackParams,
) -> Response:
    sealed = request.cookies.get(cookie_name(params.state)) if params.state else None
    response: Response
    try:
        target = await service.complete(context, provider_id, params, sealed)
        response = RedirectResponse(target, status_code=302)
    except Exception as e:
        # Answered here rather than by BrowserRoute, so the spent cookie is cleared too.
        response = sign_in_failure(request, e)
    if params.state:
        response.delete_cookie(
            cookie_name(params.state),
            path=_cookie_path(context, provider_id),
            secure=context.settings.secure_cookies,
            httponly=True,
            samesite="lax",
        )
    return _no_store(response)


@router.get(
    "/callback",
    summary="Where the provider sends the browser back (response_mode=query)",
    status_code=302,
    response_class=RedirectResponse,
    responses=_REDIRECT,
)
async def callback(
    request: Request,
    provider_id: uuid.UUID,
    context: ContextDep,
    state: Annotated[str | None, Query()] = None,
    code: Annotated[str | None, Query()] = None,
    error: Annotated[str | None, Query()] = None,
    error_description: Annotated[str | None, Query()] = None,
    iss: Annotated[str | None, Query()] = None,
) -> Response:
    params = service.CallbackParams(
        state=state, code=code, error=error, error_description=error_description, iss=iss
    )
    return await _finish(request, context, provider_id, params)


@router.post(
    "/callback",
    summary="Where the provider posts the browser back (response_mode=form_post)",
    status_code=302,
    response_class=RedirectResponse,
    responses=_REDIRECT,
)
async def callback_form_post(
    request: Request,
    provider_id: uuid.UUID,
    context: ContextDep,
    state: Annotated[str | None, Form()] = None,
    code: Annotated[str | None, Form()] = None,
    error: Annotated[str | None, Form()] = None,
    error_description: Annotated[str | None, Form()] = None,
    iss: Annotated[str | None, Form()] = None,
) -> Response:
    params = service.CallbackParams(
        state=state, code=code, error=error, error_description=error_description, iss=iss
    )
    return await _finish(request, context, provider_id, params)


@router.get(
    "/logout",
    summary="Front-channel logout (with sid) or the landing after the provider's sign-out",
    responses={**_REDIRECT, 200: {"description": "Sessions with that sid ended"}},
    response_class=HTMLResponse,
)
async def logout(
    provider_id: uuid.UUID,
    session: SessionDep,
    context: ContextDep,
    sid: Annotated[str | None, Query()] = None,
) -> Response:
    """With ``sid``: Entra's front-channel logout (it loads this in a hidden frame), which
    ends every session of this provider with that Entra session. Without: the page Entra
    sends the browser to after its sign-out, which forwards to the frontend."""
    if not sid:
        return _no_store(RedirectResponse(context.settings.logged_out, status_code=302))
    if "\x00" not in sid:  # no session has such a sid (PostgreSQL cannot even compare it)
        await sessions_service.revoke_by_idp_session(session, provider_id, sid)
    return _no_store(HTMLResponse("<!doctype html><title>Signed out</title>", status_code=200))
