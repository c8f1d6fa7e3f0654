"""The hot routes, called straight from the front middleware (``middleware.py``).

A request on its way to a route passed, after the front middleware, Starlette's exception
middleware, FastAPI's exit-stack middleware, the router's walk over the routes, the route's
``handle`` and ``request_response`` with two more exit stacks and an exception wrapper: a
fifth of ``/api/v1/auth/me``'s CPU and a twentieth of a sign-in's, for routes whose handlers
need none of it (a py-spy profile; README, *Performance*). A route class that offers
:meth:`DirectRoute.direct_handler` (the browser routes with direct endpoints, the token
endpoint, the caller-only API routes) is matched here by the route's own ``matches`` and its
handler called at once; every other request takes the full way.

What the skipped layers did for these routes is done here the same way: the route's path
parameters, endpoint and router in the scope, and an exception the handler raises answered by
the app's handler for its status or class, looked up as Starlette looks it up. As FastAPI
does, the handlers for ``Exception`` and 500 are not among them: an exception no handler takes
goes on to the front middleware, which answers it as it answered it before.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

Handler = Callable[[Request], Awaitable[Response]]
ExceptionHandler = Callable[[Request, Exception], Any]


@runtime_checkable
class DirectRoute(Protocol):
    def direct_handler(self) -> Handler | None:
        """``handler(request) -> Response`` when the route needs nothing of the framework
        between the front middleware and that handler; None otherwise."""


class _Entry:
    __slots__ = ("handler", "prefix", "route", "suffix")

    def __init__(self, route: APIRoute, handler: Handler) -> None:
        self.route = route
        self.handler = handler
        # The literal text around the path's parameters: a cheap test before the regex, so
        # that requests to other routes pay next to nothing here.
        path = route.path_format
        self.prefix = path.split("{", 1)[0]
        self.suffix = path.rsplit("}", 1)[-1] if "}" in path else ""


class DirectRoutes:
    """The app's direct routes, found on the first request (every route and exception
    handler is registered by then)."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app
        self._entries: list[_Entry] | None = None
        self._status_handlers: dict[int, ExceptionHandler] = {}
        self._class_handlers: dict[type[BaseException], ExceptionHandler] = {}

    def _build(self) -> list[_Entry]:
        entries = []
        for route in self._app.router.routes:
            if isinstance(route, APIRoute) and isinstance(route, DirectRoute):
                handler = route.direct_handler()
                if handler is not None:
                    entries.append(_Entry(route, handler))
        for key, value in self._app.exception_handlers.items():
            if key in (500, Exception):  # ServerErrorMiddleware's, not the routes' (FastAPI)
                continue
            if isinstance(key, int):
                self._status_handlers[key] = value
            else:
                self._class_handlers[key] = value
        self._entries = entries
        return entries

    def find(self, scope: Scope) -> tuple[_Entry, Scope] | None:
        """The direct route that fully matches the request, and its child scope."""
        entries = self._entries if self._entries is not None else self._build()
        path: str = scope["path"]
        for entry in entries:
            if not (path.startswith(entry.prefix) and path.endswith(entry.suffix)):
                continue
            match, child = entry.route.matches(scope)
            if match is Match.FULL:
                return entry, child
        return None

    def _handler_for(self, exc: Exception) -> ExceptionHandler | None:
        if isinstance(exc, HTTPException):
            found = self._status_handlers.get(exc.status_code)
            if found is not None:
                return found
        for cls in type(exc).__mro__:
            found = self._class_handlers.get(cls)
            if found is not None:
                return found
        return None

    async def serve(
        self, entry: _Entry, child: Scope, scope: Scope, receive: Receive, send: Send
    ) -> None:
        scope.update(child)
        scope.setdefault("router", self._app.router)
        request = Request(scope, receive, send)
        try:
            response = await entry.handler(request)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise
            if inspect.iscoroutinefunction(handler):
                answer = await handler(request, exc)
            else:  # as Starlette runs a plain function: on its thread pool
                answer = await run_in_threadpool(handler, request, exc)
            if answer is not None:  # as in Starlette, a handler may answer nothing
                await answer(scope, receive, send)
            exc.__traceback__ = None  # as Starlette does: a reused exception keeps none
            return
        await response(scope, receive, send)
