"""What the OpenAPI document says about errors: the answers the app really sends, beyond
what each route declares (``errors.error_responses``)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.routing import APIRoute

from sso_broker.browser import BrowserRoute
from sso_broker.errors import PROBLEM_JSON
from sso_broker.ratelimit import is_rate_limited

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def no_database(endpoint: Endpoint) -> Endpoint:
    """Marks an endpoint that answers without the database, so its route documents no 503."""
    endpoint.__sso_no_database__ = True  # type: ignore[attr-defined]
    return endpoint


_RATE_LIMITED: dict[str, Any] = {
    "description": "Error codes: `rate_limited` (with `Retry-After`)",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}
_RATE_LIMITED_PAGE: dict[str, Any] = {
    "description": "Too many sign-in attempts: a small page, with `Retry-After`",
    "content": {"text/html": {"schema": {"type": "string"}}},
}
_DATABASE_DOWN: dict[str, Any] = {
    "description": "Error codes: `database_unavailable` (with `Retry-After`)",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}

# Answered by the size limits in front of every route (sso_broker.middleware), whatever the route.
_BODY_TOO_LARGE: dict[str, Any] = {
    "description": "Error codes: `request_too_large` (the body is over the size limit)",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}
_QUERY_TOO_LONG: dict[str, Any] = {
    "description": "Error codes: `request_too_large` (the query string is over the size limit)",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


def document_errors(app: FastAPI) -> None:
    """Makes ``app.openapi()`` describe the error answers the app really sends.

    * FastAPI files a ``responses=`` model under ``application/json``; problem documents are
      sent as ``application/problem+json``, so the schema belongs under that media type.
    * FastAPI adds a 422 to every route with parameters; browser routes never answer it (a
      malformed provider id redirects to the sign-in error page like any other failure).
    * The size limits answer 413 (body) and 414 (query string) in front of every route.
    * The rate limiter answers 429 on the sign-in routes and the token endpoint, and every
      route that reads the database may answer 503 while it is down.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            routes = {
                (route.path_format, method.lower()): route
                for route in app.routes
                if isinstance(route, APIRoute)
                for method in route.methods or ()
            }
            for path, path_item in spec.get("paths", {}).items():
                for method, operation in path_item.items():
                    route = routes.get((path, method))
                    browser = isinstance(route, BrowserRoute)
                    uses_database = route is None or not getattr(
                        route.endpoint, "__sso_no_database__", False
                    )
                    responses = operation.setdefault("responses", {})
                    for response in responses.values():
                        content = response.get("content", {})
                        if PROBLEM_JSON in content and "application/json" in content:
                            content[PROBLEM_JSON] = content.pop("application/json")
                    if browser:
                        responses.pop("422", None)
                    if "requestBody" in operation:
                        responses.setdefault("413", copy.deepcopy(_BODY_TOO_LARGE))
                    responses.setdefault("414", copy.deepcopy(_QUERY_TOO_LONG))
                    # The limiter's own rule says which routes it counts (ratelimit.py).
                    if is_rate_limited(path):
                        limited = _RATE_LIMITED_PAGE if browser else _RATE_LIMITED
                        responses.setdefault("429", copy.deepcopy(limited))
                    # Browser routes answer a database outage with the error redirect.
                    if uses_database and not browser:
                        responses.setdefault("503", copy.deepcopy(_DATABASE_DOWN))
            _drop_unreferenced_schemas(spec, ("HTTPValidationError", "ValidationError"))
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _drop_unreferenced_schemas(spec: dict[str, Any], names: tuple[str, ...]) -> None:
    schemas: dict[str, Any] = spec.get("components", {}).get("schemas", {})
    for name in names:
        if name not in schemas:
            continue
        definition = schemas.pop(name)
        if f'"#/components/schemas/{name}"' in json.dumps(spec):
            schemas[name] = definition
