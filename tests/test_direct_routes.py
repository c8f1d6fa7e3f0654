"""The hot routes are called straight from the front middleware (``direct_routes.py``), and
answer exactly as they did through FastAPI's router; every other request takes the router."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import Depends, FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.routing import Router
from starlette.types import Receive, Scope, Send

from sso_broker.direct_routes import DirectRoutes
from sso_broker.errors import ErrorCode, NotAuthenticated
from sso_broker.sessions import service as sessions_service
from sso_broker.sessions.router import TokenRoute
from sso_broker.users.models import Role
from tests.conftest import Factory
from tests.fixtures.entra import FakeEntra, provider_and_person
from tests.pkce import PKCE, code_grant
from tests.problems import assert_problem

PROVIDER = "/sso/0b3b6c30-17b7-4c1e-9a9e-2f0f6a1d2c3e"
ENDED = "The session has ended; sign in again."


@contextmanager
def routed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The paths of the requests that reached the app's router."""
    seen: list[str] = []
    original = Router.__call__

    async def recording(self: Router, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            seen.append(scope["path"])
        await original(self, scope, receive, send)

    monkeypatch.setattr(Router, "__call__", recording)
    yield seen


def _found(app: FastAPI, method: str, path: str) -> str | None:
    direct = DirectRoutes(app)
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "app": app}
    found = direct.find(scope)
    return None if found is None else found[0].route.path


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("GET", "/api/v1/auth/me", "/api/v1/auth/me"),
        ("POST", "/api/v1/auth/token", "/api/v1/auth/token"),
        ("GET", f"{PROVIDER}/initiate", "/sso/{provider_id}/initiate"),
        ("GET", f"{PROVIDER}/callback", "/sso/{provider_id}/callback"),
        # Not an id: the route's own handler answers it, as through the router.
        ("GET", "/sso/not-an-id/initiate", "/sso/{provider_id}/initiate"),
        # Another method, another path, a trailing slash: the router's answer (405, 404...).
        ("HEAD", "/api/v1/auth/me", None),
        ("GET", "/api/v1/auth/token", None),
        ("POST", "/api/v1/auth/me", None),
        ("GET", "/api/v1/auth/me/", None),
        ("GET", f"{PROVIDER}/initiate/", None),
        ("GET", f"{PROVIDER}/nowhere/initiate", None),
        ("GET", "/api/v1/sso-providers", None),
        ("GET", "/healthz", None),
    ],
)
def test_which_requests_are_direct(app: FastAPI, method: str, path: str, route: str | None) -> None:
    assert _found(app, method, path) == route


async def test_a_sign_in_never_reaches_the_router(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider, person = await provider_and_person(factory)
    with routed(monkeypatch) as seen:
        started = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)
        finished = await client.get(entra.authorize(started.headers["location"], user=person))
        code = parse_qs(urlsplit(finished.headers["location"]).query)["code"][0]
        tokens = await client.post("/api/v1/auth/token", json=code_grant(code))
        bearer = {"Authorization": f"Bearer {tokens.json()['access_token']}"}
        me = await client.get("/api/v1/auth/me", headers=bearer)
        refreshed = await client.post(
            "/api/v1/auth/token",
            json={"grant_type": "refresh_token", "refresh_token": tokens.json()["refresh_token"]},
        )
        assert seen == []
        listed = await client.get("/api/v1/sso-providers", headers=bearer)
        assert seen == ["/api/v1/sso-providers"]
    assert (started.status_code, finished.status_code) == (302, 302)
    assert (tokens.status_code, me.status_code, refreshed.status_code) == (200, 200, 200)
    assert me.json()["user"]["email"] == person.email
    assert listed.status_code == 403  # a user, not an administrator: the router's answer


async def test_the_headers_every_answer_carries(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user(await factory.company(), Role.USER)
    me = await client.get(
        "/api/v1/auth/me", headers={**(await factory.headers(user)), "X-Request-ID": "abc-123"}
    )
    assert me.status_code == 200
    assert me.headers["cache-control"] == "no-store"
    assert me.headers["x-content-type-options"] == "nosniff"
    assert me.headers["x-request-id"] == "abc-123"
    assert me.headers["content-type"] == "application/json"


async def test_an_error_is_answered_by_its_handler(
    client: httpx.AsyncClient, factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raised in a direct handler, an AppError becomes its problem, as the exception
    middleware made it; a token that is not ours is 401 with its challenge."""
    anonymous = await client.get("/api/v1/auth/me")
    assert_problem(anonymous, 401, "not_authenticated")

    async def refused(*_args: object, **_kwargs: object) -> None:
        raise NotAuthenticated(ENDED, code=ErrorCode.INVALID_TOKEN)

    user = await factory.user(await factory.company(), Role.USER)
    headers = await factory.headers(user)
    monkeypatch.setattr(sessions_service, "authenticate", refused)
    ended = await client.get("/api/v1/auth/me", headers=headers)
    assert assert_problem(ended, 401, "invalid_token")["detail"] == ENDED


async def test_an_error_no_handler_takes_is_answered_by_the_front_middleware(
    client: httpx.AsyncClient, factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a direct handler: 500 ``server_error``, logged, as before; no traceback or
    message reaches the caller."""

    async def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("secret internals")

    user = await factory.user(await factory.company(), Role.USER)
    headers = await factory.headers(user)
    monkeypatch.setattr(sessions_service, "authenticate", broken)
    answer = await client.get("/api/v1/auth/me", headers=headers)
    assert_problem(answer, 500, "server_error")
    assert "secret internals" not in answer.text


@pytest.mark.parametrize(
    "request_args",
    [
        {"content": b"grant_type=login_code&code=x", "headers": {"Content-Type": "text/plain"}},
        {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
        {"json": {"grant_type": "login_code"}},
    ],
)
async def test_token_bodies_the_lean_path_declines_take_fastapis(
    client: httpx.AsyncClient, request_args: dict[str, Any]
) -> None:
    """FastAPI's own handler, called from the direct route, answers 422 as it did."""
    answer = await client.post("/api/v1/auth/token", **request_args)
    assert_problem(answer, 422, "validation_error")


async def _yielding() -> AsyncIterator[int]:
    yield 1


def _generator() -> Iterator[int]:
    yield 1


class _Yielding:
    async def __call__(self) -> AsyncIterator[int]:
        yield 1


async def _plain() -> int:
    return 1


@pytest.mark.parametrize(
    ("dependency", "direct"),
    [
        (_plain, True),
        (_yielding, False),
        (_generator, False),
        (_Yielding(), False),
        (functools.partial(_yielding), False),
    ],
)
def test_a_token_route_with_a_yielding_dependency_takes_the_router(
    dependency: Any, direct: bool
) -> None:
    """Its exit stacks would close before the answer on the direct way (sessions/router.py),
    where FastAPI closes them after: such a route is left to FastAPI."""

    async def endpoint() -> int:
        return 1

    # A dependency of a dependency; declared in the route, since the postponed annotations of
    # this module cannot name a local.
    nested = _nested(dependency)
    route = TokenRoute("/token", endpoint, methods=["POST"], dependencies=[Depends(nested)])
    assert (route.direct_handler() is not None) is direct


def _nested(dependency: Any) -> Any:
    async def outer(value: Any = Depends(dependency)) -> Any:  # noqa: B008 - FastAPI's way
        return value

    return outer


class _Refused(Exception):
    pass


class _Ignored(Exception):
    pass


class _Direct(APIRoute):
    def direct_handler(self) -> Any:
        async def handler(request: Request) -> Response:
            raise {"refused": _Refused, "ignored": _Ignored}[request.path_params["how"]]()

        return handler


async def test_an_exception_handler_answers_or_answers_nothing() -> None:
    """As in Starlette: the handler's answer is sent, and a handler that returns None sends
    nothing (the exception is not raised again)."""
    app = FastAPI()

    async def teapot(request: Request, exc: Exception) -> Response:
        return Response("refused", status_code=418)

    async def silent(request: Request, exc: Exception) -> None:
        return None

    app.add_exception_handler(_Refused, teapot)
    app.add_exception_handler(_Ignored, silent)
    app.router.routes.append(_Direct("/x/{how}", lambda how: None, methods=["GET"]))
    direct = DirectRoutes(app)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for how, expected in (("refused", [418]), ("ignored", [])):
        scope: dict[str, Any] = {
            "type": "http", "method": "GET", "path": f"/x/{how}", "root_path": "", "app": app,
            "headers": [], "query_string": b"",
        }  # fmt: skip
        found = direct.find(scope)
        assert found is not None
        sent.clear()
        await direct.serve(*found, scope, receive, send)
        assert [m["status"] for m in sent if m["type"] == "http.response.start"] == expected
