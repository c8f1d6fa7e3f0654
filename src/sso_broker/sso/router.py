"""Browser routes: every failure is a 302 to the frontend's sign-in error page."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.responses import Response

from sso_broker.browser import BrowserRoute, direct, sign_in_failure
from sso_broker.deps import AppContext, ContextDep, SessionDep
from sso_broker.sso import service, signout
from sso_broker.sso.state import STATE_TTL, cookie_name, opened_before, stale_attempts

_REDIRECT: dict[int | str, dict[str, Any]] = {
    302: {"description": "To the provider, or to the frontend's start, completion or error page"}
}


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


router = APIRouter(prefix="/sso/{provider_id}", tags=["Browser sign-in"], route_class=BrowserRoute)


def _optional_query(*names: str) -> dict[str, Any]:
    """OpenAPI for optional text query parameters that a route reads from the request itself.

    Declared parameters cost FastAPI more per request than the whole sign-in redirect (README,
    *Performance*); the spec stays the same as if they were declared.
    """
    text_or_null = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    return {
        "parameters": [
            {
                "in": "query",
                "name": name,
                "required": False,
                "schema": {**text_or_null, "title": name.replace("_", " ").title()},
            }
            for name in names
        ]
    }


def _login_state_cookie(context: AppContext, name: str, value: str, max_age: int) -> bytes:
    """A Set-Cookie value for a login state (URL-safe base64: nothing to quote), or with
    ``max_age`` 0 the one that expires it. Path=/, as the __Host- prefix requires, so every
    initiate sees the browser's earlier attempts. Built here rather than by Starlette's
    ``set_cookie``/``delete_cookie``, whose ``SimpleCookie`` cost a callback more than its
    redirect (README, *Performance*)."""
    cookie = f"{name}={value}; HttpOnly; Max-Age={max_age}; Path=/; SameSite=lax"
    if max_age == 0:  # for browsers that know no Max-Age
        cookie += "; expires=Thu, 01 Jan 1970 00:00:00 GMT"
    if context.settings.secure_cookies:
        cookie += "; Secure"
    return cookie.encode("latin-1")


@router.get(
    "/initiate",
    summary="Start a sign-in: redirect the browser to the provider",
    description=(
        "`code_challenge` is the frontend's PKCE challenge (S256 of its verifier, 43 "
        "characters, with `code_challenge_method=S256`): the login code the sign-in ends with "
        "is trade-able only with that verifier. Without a challenge (the Entra My Apps tile, a "
        "bookmark) the browser is sent to `SIGN_IN_START_URL?provider_id=…` (with `return_to` "
        "and `login_hint`), which makes one and comes back; a malformed or empty challenge, a "
        "method without one, or another method ends at "
        "`SIGN_IN_ERROR_URL?error=invalid_request`."
    ),
    status_code=302,
    response_class=RedirectResponse,
    responses=_REDIRECT,
    openapi_extra=_optional_query(
        "code_challenge",
        "code_challenge_method",
        "return_to",
        "login_hint",
        "domain_hint",
        "prompt",
    ),
)
@direct
async def initiate(request: Request, provider_id: uuid.UUID) -> Response:
    context: AppContext = request.app.state.context
    query = request.query_params
    result = await service.initiate(
        context,
        provider_id,
        code_challenge=query.get("code_challenge"),
        code_challenge_method=query.get("code_challenge_method"),
        return_to=query.get("return_to"),
        login_hint=query.get("login_hint"),
        domain_hint=query.get("domain_hint"),
        prompt=query.get("prompt"),
    )
    response = RedirectResponse(result.location, status_code=302)
    if result.login is None:  # to the frontend's start page, for a PKCE challenge
        return _no_store(response)
    secure = context.settings.secure_cookies
    name = cookie_name(result.login.state, secure=secure)
    sealed = result.login.seal(context.sealer)
    ttl = int(STATE_TTL.total_seconds())
    response.raw_headers.append((b"set-cookie", _login_state_cookie(context, name, sealed, ttl)))
    if request.headers.get("cookie"):
        # The oldest attempts make room (state.py): the browser's Cookie header stays bounded.
        size = len(name) + len(sealed) + 3
        for stale in stale_attempts(context.sealer, request.cookies, secure=secure, new_size=size):
            response.raw_headers.append((b"set-cookie", _login_state_cookie(context, stale, "", 0)))
    return _no_store(response)


async def _finish(
    request: Request,
    context: AppContext,
    provider_id: uuid.UUID,
    params: service.CallbackParams,
) -> Response:
    secure = context.settings.secure_cookies
    name = cookie_name(params.state, secure=secure) if params.state else None
    sealed = request.cookies.get(name) if name else None
    response: Response
    try:
        opened = opened_before(request.scope, params.state, sealed)
        target = await service.complete(context, provider_id, params, sealed, opened)
        response = RedirectResponse(target, status_code=302)
    except Exception as e:
        # Answered here rather than by BrowserRoute, so the spent cookie is cleared too.
        response = sign_in_failure(request, e)
    if name:
        response.raw_headers.append((b"set-cookie", _login_state_cookie(context, name, "", 0)))
    return _no_store(response)


@router.get(
    "/callback",
    summary="Where the provider sends the browser back (response_mode=query)",
    status_code=302,
    response_class=RedirectResponse,
    responses=_REDIRECT,
    openapi_extra=_optional_query("state", "code", "error", "error_description", "iss"),
)
@direct
async def callback(request: Request, provider_id: uuid.UUID) -> Response:
    query = request.query_params
    params = service.CallbackParams(
        state=query.get("state"),
        code=query.get("code"),
        error=query.get("error"),
        error_description=query.get("error_description"),
        iss=query.get("iss"),
    )
    return await _finish(request, request.app.state.context, provider_id, params)


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
    iss: Annotated[str | None, Query()] = None,
) -> Response:
    """With ``sid``: the provider's front-channel logout (it loads this in a hidden frame),
    which ends every session of this provider with that IdP session; an ``iss`` that is not
    the provider's issuer ends nothing. Without: the page the provider sends the browser to
    after its sign-out, which forwards to the frontend."""
    if not sid:
        return _no_store(RedirectResponse(context.settings.logged_out, status_code=302))
    await signout.front_channel_logout(context, session, provider_id, sid, iss)
    return _no_store(HTMLResponse("<!doctype html><title>Signed out</title>", status_code=200))
