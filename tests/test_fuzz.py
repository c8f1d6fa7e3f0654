"""API fuzzing: schemathesis against the app, driven by the committed ``openapi/openapi.json``.

Every operation of the spec is fuzzed (explicit examples, coverage and fuzzing phases, valid and
invalid input) three ways: as an administrator of a seeded company, with no credentials, and with
garbage credentials. Each response must not be a server error and must match the spec: a
documented status code, a documented content type, a body that matches its schema. Beyond
schemathesis's own checks, this module checks what the spec cannot say by itself: a problem
document names the code its status documents, schema-valid input is refused only by rules a
JSON Schema cannot express, protected routes refuse anonymous callers, and browser routes only
ever redirect to the frontend or to Entra (never to ``error=server_error``, a 500 in disguise).
Two deterministic sweeps add what random generation rarely meets: bodies and query strings over
the size limits, and hostile strings (NUL, CRLF, bidi overrides, open-redirect payloads...) in
every path and query parameter.

How requests reach the app: schemathesis's ASGI transport runs the application on an event loop
of its own, in a thread, but the app's database pool and HTTP client live on the test's loop
(the ``app`` fixture runs the lifespan there, with the fake Entra tenant mocked by respx). So
schemathesis calls :class:`AppBridge`, which hands each request over to the app on the test's
loop, while the test lets that loop run until schemathesis (and any probe a check sends) is done.

Runs are reproducible (fixed seed, ``deterministic``) and bounded by ``MAX_EXAMPLES``. The
settings are production's: rate limiting on (with limits no run reaches), access log on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, Response
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from sso_broker.config import Settings
from sso_broker.database import session_scope
from sso_broker.deps import AppContext
from sso_broker.errors import SignInErrorCode
from sso_broker.middleware import MAX_BODY_BYTES, MAX_QUERY_BYTES
from sso_broker.models import User
from sso_broker.sessions import service as sessions_service
from sso_broker.users.models import Role
from tests.conftest import Database, Factory, make_settings
from tests.fixtures.entra import AUTHORITY, CLIENT_ID, CLIENT_SECRET, TENANT_ID, FakeEntra
from tests.pkce import CHALLENGE, VERIFIER

SPEC = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"
SEED = 20261127
MAX_EXAMPLES = 25  # per operation, fuzzing phase, administrator run
ANONYMOUS_MAX_EXAMPLES = 8  # per operation and kind of missing credentials

PROBLEM_JSON = "application/problem+json"
AUTH_CODES = {"not_authenticated", "invalid_token", "token_expired", "session_expired"}


def _config(max_examples: int, *, coverage: bool = True) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "phases": {"coverage": {"enabled": coverage}},
            "generation": {
                "max-examples": max_examples,
                "deterministic": True,
                "database": "none",
            },
        }
    )


admin_schema = schemathesis.openapi.from_path(SPEC, config=_config(MAX_EXAMPLES))
# Without credentials every protected operation answers 401 before reading its input: the
# coverage phase's hundreds of input variations would all meet the same refusal.
anonymous_schema = schemathesis.openapi.from_path(
    SPEC, config=_config(ANONYMOUS_MAX_EXAMPLES, coverage=False)
)


# ---------------------------------------------------------------------------------------------
# The harness: seeded data, credentials, and the bridge to the app's event loop
# ---------------------------------------------------------------------------------------------


@dataclass
class Harness:
    """What the current test seeded, and how schemathesis reaches the app."""

    loop: asyncio.AbstractEventLoop
    app: FastAPI
    settings: Settings
    admin_token: str
    new_admin_token: Callable[[], Awaitable[str]]
    new_grant: Callable[[str], Awaitable[str]]
    user_ids: list[str]
    provider_id: str
    garbage_tokens: list[str]
    credentials: str = "administrator"  # or "none" or "garbage"
    _garbage: Iterator[str] = field(init=False)

    def __post_init__(self) -> None:
        self._garbage = _cycle(self.garbage_tokens)

    def authenticate(self, case: Case) -> None:
        """Puts the run's credentials where schemathesis put the placeholder.

        Cases without it (a coverage case testing a missing ``Authorization``) stay without.
        """
        headers = dict(case.headers or {})
        for name, value in list(headers.items()):
            if name.lower() == "authorization" and value == f"Bearer {PLACEHOLDER}":
                if self.credentials == "administrator":
                    headers[name] = f"Bearer {self.admin_token}"
                elif self.credentials == "garbage":
                    headers[name] = f"Bearer {next(self._garbage)}"
                else:
                    del headers[name]
        case.headers = headers

    def run(self, case: Case, checks: list[Callable[..., Any]]) -> Response:
        """Sends ``case`` and runs ``checks`` (and their probes) off the loop that serves them."""
        if case.operation.label == "POST /api/v1/auth/logout":
            # Each sign-out ends the session its token belongs to: give each one its own.
            self.admin_token = self.loop.run_until_complete(self.new_admin_token())
        if isinstance(case.body, dict):
            for key, value in case.body.items():
                if value in FRESH_GRANTS:
                    case.body[key] = self.loop.run_until_complete(self.new_grant(value))
        self.authenticate(case)

        def call_and_validate() -> Response:
            response = case.call()
            case.validate_response(response, checks=checks)
            return response

        return self.loop.run_until_complete(asyncio.to_thread(call_and_validate))


def _cycle(values: list[str]) -> Iterator[str]:
    while True:
        yield from values


_HARNESS: Harness | None = None


def harness() -> Harness:
    assert _HARNESS is not None, "the `fuzz` fixture is not active"
    return _HARNESS


class AppBridge:
    """The ASGI app schemathesis calls; it runs each request on the test's event loop.

    The request body is read in full first and the response collected in full before it is
    replayed: bodies are small, and nothing streams.
    """

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            # Refusing the lifespan scope before reading a message tells schemathesis the app has
            # none; the `app` fixture runs the real one on the test's loop.
            raise RuntimeError("the lifespan runs in the app fixture")
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        target = harness()
        future = asyncio.run_coroutine_threadsafe(
            _serve(target.app, dict(scope), body), target.loop
        )
        for message in await asyncio.wrap_future(future):
            await send(message)


async def _serve(app: FastAPI, scope: dict[str, Any], body: bytes) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    request_read = False

    async def receive() -> dict[str, Any]:
        nonlocal request_read
        if request_read:
            await asyncio.Event().wait()  # the client never disconnects early
        request_read = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


BRIDGE = AppBridge()
admin_schema.app = BRIDGE
anonymous_schema.app = BRIDGE


@pytest.fixture
def settings(database: Database) -> Settings:
    # The production configuration: rate limiting on (with limits no fuzz run reaches), so the
    # limiter's own handling of hostile paths is fuzzed too.
    return make_settings(
        database.url,
        rate_limit_enabled=True,
        rate_limit_sign_in_per_ip=1_000_000,
        rate_limit_sign_in_per_provider=1_000_000,
        rate_limit_token_per_ip=1_000_000,
    )


@pytest.fixture
async def fuzz(
    app: FastAPI, context: AppContext, factory: Factory, entra: FakeEntra
) -> AsyncIterator[Harness]:
    """A company with an administrator, a second user and an enabled Entra provider."""
    global _HARNESS
    company = await factory.company("Fuzz & Co")
    admin = await factory.user(company, Role.ADMINISTRATOR)
    colleague = await factory.user(company, Role.MANAGER)
    provider = await factory.provider(
        company, base_url=TENANT_ID, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, enabled=True
    )
    token = await factory.token(admin, ttl=3600)
    header, payload, signature = token.split(".")
    none_header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    _HARNESS = Harness(
        loop=asyncio.get_running_loop(),
        app=app,
        settings=app.state.context.settings,
        admin_token=token,
        new_admin_token=lambda: factory.token(admin, ttl=3600),
        new_grant=lambda kind: _new_grant(context, admin, kind),
        user_ids=[str(colleague.id), str(admin.id)],
        provider_id=str(provider.id),
        garbage_tokens=[
            "garbage",
            f"{header}.{payload}.{signature[::-1]}",  # a forged signature
            f"{none_header}.{payload}.",  # alg: none
            f"{header}.{payload}",  # truncated
            "x" * 5000,  # longer than any token
        ],
    )
    try:
        yield _HARNESS
    finally:
        _HARNESS = None


async def _new_grant(context: AppContext, user: User, sentinel: str) -> str:
    """A login code, or a refresh token, that the token endpoint accepts once."""
    async with session_scope(context.sessionmaker) as session:
        sign_in = await sessions_service.start(
            session, user, provider_id=None, lifetime=timedelta(hours=1)
        )
        code = await sessions_service.create_login_code(session, sign_in, code_challenge=CHALLENGE)
    if sentinel == FRESH_LOGIN_CODE:
        return code
    pair = await sessions_service.grant(
        context.fast,
        context.sessionmaker,
        context.settings,
        context.keyring,
        context.successor_key,
        login_code=code,
        code_verifier=VERIFIER,
    )
    return pair.refresh_token


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# Credentials are applied when a case is generated, and explicit examples are generated at
# collection, before any fixture runs: schemathesis puts a placeholder that `Harness.authenticate`
# swaps for the run's credentials when the case is sent.
PLACEHOLDER = "fuzz-credentials"


class Credentials:
    def get(self, case: Case, ctx: schemathesis.AuthContext) -> str:
        return PLACEHOLDER

    def set(self, case: Case, data: str, ctx: schemathesis.AuthContext) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


admin_schema.auth(refresh_interval=None)(Credentials)
anonymous_schema.auth(refresh_interval=None)(Credentials)

# Stand-ins for a login code and a refresh token, minted when the case is sent (each works once).
FRESH_LOGIN_CODE = "fuzz-fresh-login-code"
FRESH_REFRESH_TOKEN = "fuzz-fresh-refresh-token"
FRESH_GRANTS = (FRESH_LOGIN_CODE, FRESH_REFRESH_TOKEN)
GRANT_FIELDS = {"login_code": "code", "refresh_token": "refresh_token"}


@admin_schema.hook
def flatmap_case(context: schemathesis.HookContext, case: Case) -> st.SearchStrategy[Case]:
    """Points some valid requests at the seeded resources, so their 2xx answers are checked.

    Generated ids almost never exist, and generated login codes and refresh tokens never do;
    without this, GET/PATCH/DELETE of one user or provider, the browser routes and the token
    endpoint would only ever answer "not found" or "invalid grant".
    """
    target = _HARNESS
    if target is None or case.meta is None or not case.meta.generation.mode.is_positive:
        return st.just(case)
    if isinstance(case.body, dict) and case.body.get("grant_type") in GRANT_FIELDS:
        field_name = GRANT_FIELDS[case.body["grant_type"]]
        sentinel = FRESH_LOGIN_CODE if field_name == "code" else FRESH_REFRESH_TOKEN

        def granted(use_fresh: bool) -> Case:
            if use_fresh:
                case.body[field_name] = sentinel
            return case

        return st.booleans().map(granted)
    choices: dict[str, list[str]] = {}
    if "user_id" in (case.path_parameters or {}):
        choices["user_id"] = target.user_ids
    if "provider_id" in (case.path_parameters or {}):
        choices["provider_id"] = [target.provider_id]
    links_provider = isinstance(case.body, dict) and "sso_provider_id" in case.body
    if not choices and not links_provider:
        return st.just(case)

    names = list(choices)

    def seeded(drawn: tuple[Any, ...]) -> Case:
        use_seeded, *ids = drawn
        if use_seeded:
            for name, value in zip(names, ids, strict=True):
                case.path_parameters[name] = value
            if links_provider:
                case.body["sso_provider_id"] = target.provider_id
        return case

    return st.tuples(st.booleans(), *(st.sampled_from(choices[n]) for n in names)).map(seeded)


# ---------------------------------------------------------------------------------------------
# Checks beyond schemathesis's
# ---------------------------------------------------------------------------------------------


def _is_browser_route(case: Case) -> bool:
    return case.operation.path.startswith("/sso/")


def _is_protected(case: Case) -> bool:
    return bool(case.operation.definition.raw.get("security"))


def _problem(response: Response) -> dict[str, Any] | None:
    if not response.headers.get("content-type", [""])[0].startswith(PROBLEM_JSON):
        return None
    body = response.json()
    return body if isinstance(body, dict) else None


def problem_names_a_documented_code(ctx: CheckContext, response: Response, case: Case) -> None:
    """A problem document carries its HTTP status and a code its status documents."""
    problem = _problem(response)
    if problem is None:
        return
    assert problem.get("status") == response.status_code, (
        f"problem status {problem.get('status')} on a {response.status_code} answer"
    )
    documented = case.operation.definition.raw["responses"].get(str(response.status_code))
    if documented is None:
        return  # an undocumented status: status_code_conformance reports it
    codes = re.findall(r"`([a-z_]+)`", documented.get("description", ""))
    assert problem.get("code") in codes, (
        f"{response.status_code} answered code {problem.get('code')!r}; "
        f"the spec documents {codes} for it"
    )


# Rules a JSON Schema does not express: display names are trimmed and refuse control characters,
# email addresses must be deliverable-looking, cursors must be ones the API gave out...
_VALUE_RULES = {"value_error", "string_too_short"}


def valid_input_passes_request_validation(
    ctx: CheckContext, response: Response, case: Case
) -> None:
    """Input the spec calls valid is never refused for its shape (type, null, field, enum).

    Such a refusal means the spec describes the request body or parameters wrongly.
    """
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return
    problem = _problem(response)
    if problem is None or problem.get("code") != "validation_error":
        return
    for error in problem.get("errors") or []:
        refused = f"a schema-valid request was refused: {error}"
        assert error.get("type") in _VALUE_RULES, refused
        assert "cannot be null" not in str(error.get("msg", "")), refused


def anonymous_callers_are_refused(ctx: CheckContext, response: Response, case: Case) -> None:
    """Without valid credentials, a protected operation answers 401 and nothing else.

    Except for what is refused before anyone is authenticated: a body that is not JSON (422
    ``json_invalid``), the size limits (413, 414).
    """
    if harness().credentials == "administrator" or not _is_protected(case):
        return
    problem = _problem(response) or {}
    if response.status_code == 422:
        assert {e.get("type") for e in problem.get("errors") or [{}]} == {"json_invalid"}, problem
    elif response.status_code not in (413, 414):
        assert response.status_code == 401, f"{response.status_code} without valid credentials"
        assert problem.get("code") in AUTH_CODES, problem


def browser_routes_redirect_home(ctx: CheckContext, response: Response, case: Case) -> None:
    """Browser routes redirect only to the frontend or to Entra, and never hide a 500."""
    if not _is_browser_route(case) or response.status_code != 302:
        return
    settings = harness().settings
    location = response.headers.get("location", [""])[0]
    parts = urlsplit(location)
    origin = f"{parts.scheme}://{parts.netloc}"
    assert origin in (settings.frontend_origin, AUTHORITY), f"redirect off-site: {location}"
    if location.startswith(settings.sign_in_error):
        errors = parse_qs(parts.query).get("error", [])
        assert len(errors) == 1, location
        assert errors[0] in set(SignInErrorCode), location
        assert errors[0] != SignInErrorCode.SERVER_ERROR, (
            "the route failed unexpectedly (a 500 behind the redirect): see the log"
        )


RESPONSE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    missing_required_header,
    unsupported_method,
    problem_names_a_documented_code,
    valid_input_passes_request_validation,
    anonymous_callers_are_refused,
    browser_routes_redirect_home,
]


def invalid_input_is_rejected(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """schemathesis' negative-data check, for which the size limits' 413 and 414 reject too:
    a ``cursor`` of 1,600 four-byte characters is over the 16 kB query limit once
    percent-encoded, and the middleware answers before validation (README, *The admin API in
    short*)."""
    if response.status_code in (413, 414):
        return None
    return negative_data_rejection(ctx, response, case)


def checks_for(case: Case) -> list[Callable[..., Any]]:
    # Browser routes answer every failure, a malformed provider id included, with a redirect to
    # the sign-in error page (README, *Signing in*), never with a 4xx: there, invalid input
    # rejected means "redirected to the error page", which `browser_routes_redirect_home` checks.
    if _is_browser_route(case):
        return RESPONSE_CHECKS
    return [*RESPONSE_CHECKS, invalid_input_is_rejected]


# ---------------------------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------------------------


# The `fuzz` fixture is function-scoped on purpose: one seeded company per operation, shared by
# its examples (which may change it, as a client would).
SHARED_FIXTURE = hypothesis.settings(
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture]
)


@admin_schema.parametrize()
@SHARED_FIXTURE
def test_as_an_administrator(case: Case, fuzz: Harness) -> None:
    fuzz.run(case, checks_for(case))


@pytest.mark.parametrize("credentials", ["none", "garbage"])
@anonymous_schema.parametrize()
@SHARED_FIXTURE
def test_without_valid_credentials(case: Case, fuzz: Harness, credentials: str) -> None:
    fuzz.credentials = credentials
    fuzz.run(case, checks_for(case))


def _oversized(case: Case, what: str) -> None:
    if what == "body":
        media_type = case.media_type or "application/json"
        filler = "a" * (MAX_BODY_BYTES + 1)
        case.body = {"state": filler} if "form" in media_type else {"name": filler}
    else:
        case.query = {**(case.query or {}), "q": "a" * (MAX_QUERY_BYTES + 1)}


@pytest.mark.parametrize("what", ["body", "query"])
def test_size_limits_answer_as_documented(fuzz: Harness, what: str) -> None:
    """Over the size limits, every operation answers a documented 413/414 problem."""
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        problem_names_a_documented_code,
    ]
    tried = 0
    for result in admin_schema.get_all_operations():
        operation = result.ok()
        bodies = list(operation.body)
        if what == "body" and not bodies:
            continue
        case = operation.Case(
            path_parameters={name: str(uuid.uuid4()) for name in _path_names(operation.path)},
            headers={"Authorization": f"Bearer {PLACEHOLDER}"},
            media_type=bodies[0].media_type if bodies else None,
        )
        _oversized(case, what)
        response = fuzz.run(case, checks)
        assert response.status_code == (413 if what == "body" else 414), operation.label
        tried += 1
    assert tried


def _path_names(path: str) -> list[str]:
    return re.findall(r"{([^}]+)}", path)


# Inputs that break SQL drivers (PostgreSQL cannot store NUL), headers, logs and redirects, and
# that random generation meets once in a million: each goes into every path and query parameter,
# and every field of the browser callback's form.
HOSTILE_STRINGS = {
    "nul": "\x00",
    "nul-inside": "a\x00b",
    "percent-nul": "%00",
    "crlf": "\r\nSet-Cookie: injected=1",
    "bidi-override": "\u202eexe.txt",
    "bom": "\ufeff",
    "longer-when-lowered": "İ" * 40,
    "emoji": "🙂" * 70,
    "long": "x" * 300,
    "blank": " ",
    "traversal": "../../../etc/passwd",
    "protocol-relative": "//evil.example/",
    "backslashes": "/\\evil.example",
    "absolute-url": "https://evil.example/",
    "javascript-url": "javascript:alert(1)",
    "sql": "' OR '1'='1' --",
    # An audit cursor (base64 of "<time>|<id>") forged with a time without a timezone.
    "forged-cursor": base64.urlsafe_b64encode(
        b"2026-01-01T00:00:00|00000000-0000-4000-8000-000000000000"
    ).decode(),
}


@pytest.mark.parametrize("value", HOSTILE_STRINGS.values(), ids=HOSTILE_STRINGS.keys())
def test_hostile_strings_in_every_parameter(fuzz: Harness, value: str) -> None:
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        problem_names_a_documented_code,
        browser_routes_redirect_home,
    ]
    sent = 0
    for result in admin_schema.get_all_operations():
        operation = result.ok()
        valid_path = {name: _seeded_id(fuzz, name) for name in _path_names(operation.path)}
        bodies = list(operation.body)
        media_type = bodies[0].media_type if bodies else None
        form = media_type == "application/x-www-form-urlencoded"
        targets = [("path", p.name) for p in operation.path_parameters]
        targets += [("query", p.name) for p in operation.query]
        if form:
            schema = bodies[0].definition["schema"]
            targets += [("form", name) for name in _form_fields(schema)]
        for location, name in targets:
            if location == "path" and "/" in value:
                continue  # a slash in a segment is another path: routing answers, not the route
            case = operation.Case(
                path_parameters={**valid_path, name: value} if location == "path" else valid_path,
                query={name: value} if location == "query" else None,
                headers={"Authorization": f"Bearer {PLACEHOLDER}"},
                body={name: value} if location == "form" else ({} if bodies else NOT_SET),
                media_type=media_type,
            )
            fuzz.run(case, checks)
            sent += 1
    assert sent


def _seeded_id(target: Harness, name: str) -> str:
    return target.provider_id if name == "provider_id" else target.user_ids[0]


def _form_fields(schema: dict[str, Any]) -> list[str]:
    return list(schema.get("properties", {}))
