"""Open redirects: no ``return_to`` and no redirect from ``/sso/*`` leaves the frontend origin.

The corpus is ``tests/data/open_redirects.jsonl``, one JSON string per line, written by
``tests/data/make_open_redirects.py`` (run it to regenerate; a test below checks the committed
file is what it writes). Test ids are the corpus's line numbers, so ``L123`` is line 123.

``safe_return_to`` may keep a value only if every way a frontend might use it stays on
``https://app.example.com``: resolved as it is, after percent-decoding once or until nothing
changes (or as ``URLSearchParams`` decodes, ``+`` as a space), after Unicode compatibility
normalisation (NFKC, as some proxies and frameworks apply), read the way a WHATWG URL parser
reads it (tab and newline removed, C0 controls and spaces trimmed, ``\\`` as ``/``, any run of
leading slashes as ``//``), and once more after a router takes the resolved path (dot
segments removed, ``%2e`` counting as a dot, as browsers do) and navigates to it.
"""

from __future__ import annotations

import importlib.util
import json
import re
import unicodedata
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from urllib.parse import parse_qs, unquote, unquote_plus, urljoin, urlsplit, urlunsplit

import httpx
import pytest

from sso_broker.errors import SignInErrorCode
from sso_broker.models import SSOProvider
from sso_broker.sso.redirects import MAX_RETURN_TO, safe_return_to
from tests.conftest import Factory
from tests.fixtures.entra import CLIENT_ID, CLIENT_SECRET, TENANT_ID, EntraUser, FakeEntra
from tests.pkce import PKCE

DATA = Path(__file__).resolve().parents[1] / "data"
CORPUS_FILE = DATA / "open_redirects.jsonl"
GENERATOR = DATA / "make_open_redirects.py"

FRONTEND = "https://app.example.com"
FRONTEND_ORIGIN = ("https", "app.example.com")
COMPLETE_URL = f"{FRONTEND}/sso/complete"
ERROR_URL = f"{FRONTEND}/sso/error"
LOGGED_OUT_URL = f"{FRONTEND}/sso/logged-out"
# Where a frontend resolves return_to from: its root, and the completion page it arrives on.
BASES = (f"{FRONTEND}/", f"{COMPLETE_URL}?code=abc")
ERROR_CODES = frozenset(code.value for code in SignInErrorCode)


def _load_corpus() -> list[tuple[int, str]]:
    numbered = []
    for number, line in enumerate(CORPUS_FILE.read_text(encoding="utf-8").split("\n"), 1):
        if line:
            payload = json.loads(line)
            assert isinstance(payload, str), f"line {number} is not a JSON string"
            numbered.append((number, payload))
    return numbered


CORPUS = _load_corpus()


def _params(numbered: list[tuple[int, str]]) -> list[object]:
    return [pytest.param(payload, id=f"L{number}") for number, payload in numbered]


# --- how a frontend might read a return_to --------------------------------------------------

_C0_OR_SPACE = "".join(chr(code) for code in range(0x21))
_TAB_OR_NEWLINE = {ord("\t"): None, ord("\n"): None, ord("\r"): None}
_LEADING_SLASHES = re.compile(r"^/{2,}")
_HTTPS_PREFIX = re.compile(r"^https:", re.IGNORECASE)
_PATH_AND_REST = re.compile(r"^([^?#]*)(.*)$", re.DOTALL)
_SINGLE_DOT = frozenset({".", "%2e"})
_DOUBLE_DOT = frozenset({"..", ".%2e", "%2e.", "%2e%2e"})


def decodings(value: str) -> dict[str, str]:
    """``value`` as is, percent-decoded once and repeatedly, and as ``URLSearchParams`` does."""
    found = {"as is": value}
    current = value
    for rounds in range(1, 32):
        decoded = unquote(current)
        if decoded == current:
            break
        found[f"unquoted {rounds}x"] = decoded
        current = decoded
    found["unquote_plus"] = unquote_plus(value)
    return found


def whatwg_cleaned(value: str) -> str:
    """``value`` as a WHATWG URL parser reads it against an https base, before resolving.

    Leading and trailing C0 controls and spaces are trimmed, tab, LF and CR removed anywhere,
    backslashes are slashes (special scheme), and the "special authority ignore slashes" state
    makes ``///host`` (or ``https:///host``) the host ``host``.
    """
    cleaned = value.strip(_C0_OR_SPACE).translate(_TAB_OR_NEWLINE).replace("\\", "/")
    if _HTTPS_PREFIX.match(cleaned):
        rest = cleaned[len("https:") :]
        return "https:" + _LEADING_SLASHES.sub("//", rest)
    return _LEADING_SLASHES.sub("//", cleaned)


def whatwg_path(path: str) -> str:
    """An absolute ``path`` with dot segments removed as browsers do (``%2e`` is a dot)."""
    output: list[str] = []
    segments = path.split("/")[1:]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        lowered = segment.lower()
        if lowered in _DOUBLE_DOT:
            if output:
                output.pop()
            if last:
                output.append("")
        elif lowered in _SINGLE_DOT:
            if last:
                output.append("")
        else:
            output.append(segment)
    return "/" + "/".join(output)


def _nfkc(value: str) -> str:
    return unicodedata.normalize("NFKC", value)


TRANSFORMS: dict[str, Callable[[str], str]] = {"": lambda value: value, "NFKC, ": _nfkc}


def _off_origin(base: str, reference: str) -> str | None:
    """The URL ``reference`` resolves to from ``base``, if it is not on the frontend origin."""
    try:
        joined = urljoin(base, reference)
        parts = urlsplit(joined)
    except ValueError as e:  # a parser that chokes: treat as unsafe, never as a pass
        return f"<{e}>"
    if (parts.scheme, parts.netloc) != FRONTEND_ORIGIN:
        return joined
    return None


def escapes(value: str) -> list[str]:
    """Every reading of ``value`` under which a frontend would leave its origin (empty: safe)."""
    failures = []

    def check(reading: str, base: str, reference: str) -> bool:
        landed = _off_origin(base, reference)
        if landed is not None:
            failures.append(f"{reading} from {base}: {reference!r} -> {landed!r}")
        return landed is None

    for decoding, decoded in decodings(value).items():
        for transform_name, transform in TRANSFORMS.items():
            candidate = transform(decoded)
            reading = f"{transform_name}{decoding}"
            for base in BASES:
                # Python's resolver, then a router navigating to the resolved path.
                if check(f"urljoin, {reading}", base, candidate):
                    parts = urlsplit(urljoin(base, candidate))
                    path = urlunsplit(("", "", parts.path, parts.query, parts.fragment))
                    check(f"urljoin, {reading}, path re-read", base, path)
                    check(f"urljoin, {reading}, path re-read WHATWG", base, whatwg_cleaned(path))
                # A browser's resolver, then a router navigating to the normalised path.
                cleaned = whatwg_cleaned(candidate)
                if check(f"WHATWG, {reading}", base, cleaned) and cleaned.startswith("/"):
                    match = _PATH_AND_REST.fullmatch(cleaned)
                    assert match is not None
                    normalised = whatwg_cleaned(whatwg_path(match[1]) + match[2])
                    check(f"WHATWG, {reading}, path re-read", base, normalised)
    return failures


# --- the corpus and the oracle --------------------------------------------------------------


class TestCorpus:
    def test_the_corpus_is_big_and_without_duplicates(self) -> None:
        payloads = [payload for _, payload in CORPUS]
        assert len(payloads) >= 600
        assert len(set(payloads)) == len(payloads)

    def test_the_corpus_is_what_the_generator_writes(self) -> None:
        spec = importlib.util.spec_from_file_location("make_open_redirects", GENERATOR)
        assert spec is not None
        assert spec.loader is not None
        module: ModuleType = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.render() == CORPUS_FILE.read_text(encoding="utf-8"), (
            "stale corpus: run python tests/data/make_open_redirects.py"
        )

    def test_every_line_is_printable(self) -> None:
        """CR, LF, NUL and invisible characters are escaped, so lines split only on \\n."""
        for number, line in enumerate(CORPUS_FILE.read_text(encoding="utf-8").splitlines(), 1):
            assert line.isprintable(), f"line {number}"
            assert json.loads(line) == CORPUS[number - 1][1]

    @pytest.mark.parametrize(
        "value",
        [
            "//evil.com",
            "///evil.com",
            "/\\evil.com",
            "/\t/evil.com",
            " //evil.com",
            "https://evil.com",
            "https:///evil.com",
            "javascript:alert(1)",
            "/%2F%2Fevil.com",
            "/%252F%252Fevil.com",
            "/%5Cevil.com",
            "/..//evil.com",
            "/a/..//evil.com",
            "/%2e%2e//evil.com",
            "/.%2e/%2e%2e//evil.com",
            "/%EF%BC%8F%EF%BC%8Fevil.com",
            "/%EF%BC%BCevil.com",
            "https://app.example.com@evil.com",
            "https://app.example.com:443@evil.com",
            "https://APP.example.com",
            "http://app.example.com",
        ],
    )
    def test_the_oracle_sees_each_kind_of_escape(self, value: str) -> None:
        """The check is not vacuous: it catches each trick on its own."""
        assert escapes(value), value

    @pytest.mark.parametrize(
        "value",
        [
            "/",
            "/reports",
            "/reports?tab=summary&range=7d",
            "/a/b#section-2",
            "/?next=//evil.com",
            "/#//evil.com",
            "/evil.com",
            "/a//b",
            "/dashboard/%E2%9C%93",
        ],
    )
    def test_the_oracle_lets_paths_on_the_frontend_through(self, value: str) -> None:
        assert escapes(value) == []


# --- every payload ----------------------------------------------------------------------------


@pytest.mark.parametrize("payload", _params(CORPUS))
def test_a_kept_return_to_never_leaves_the_frontend(payload: str) -> None:
    kept = safe_return_to(payload)
    if kept is not None:
        assert escapes(kept) == [], f"safe_return_to kept {kept!r}"


KEPT = [
    "/",
    "/reports",
    "/reports/2024/q1",
    "/reports?tab=summary",
    "/a/b#section-2",
    "/dashboard/%E2%9C%93",
    "/users/~admin",
    "/search?q=a+b",
    "/search?q=a%20b",
    "/projects/42",
    "/a.b/c..d/...e",
    "/?next=//evil.com",
    "/#//evil.com",
    "/" + "a" * (MAX_RETURN_TO - 1),
]


@pytest.mark.parametrize("path", KEPT)
def test_a_plain_path_on_the_frontend_is_kept(path: str) -> None:
    """The corpus's controls: hardening must not drop ordinary paths."""
    assert path in {payload for _, payload in CORPUS}
    assert safe_return_to(path) == path


# --- end to end: a full sign-in with each sampled return_to -----------------------------------


NAMED = [
    "//evil.com",
    "https://app.example.com@evil.com",
    "/\\evil.com",
    "/%2F%2Fevil.com",
    "/\t/evil.com",
    "/..//evil.com",
    "/.%2e/%2e%2e//evil.com",
    "/%EF%BC%8F%EF%BC%8Fevil.com",
    "/reports?tab=summary&range=7d",
    "/?next=//evil.com",
    "/" + "a" * (MAX_RETURN_TO - 1),
    "/" + "a" * MAX_RETURN_TO,
    "/" + "a" * 3000,
]


def _sample() -> list[tuple[int, str]]:
    by_payload = {payload: number for number, payload in CORPUS}
    missing = [payload for payload in NAMED if payload not in by_payload]
    assert not missing, f"named payloads missing from the corpus: {missing}"
    chosen = dict(CORPUS[::10])
    chosen.update((by_payload[payload], payload) for payload in NAMED)
    return sorted(chosen.items())


def query_of(url: str) -> dict[str, str]:
    parsed = parse_qs(urlsplit(url).query, keep_blank_values=True, strict_parsing=True)
    for name, values in parsed.items():
        assert len(values) == 1, f"{name} appears {len(values)} times in {url}"
    return {name: values[0] for name, values in parsed.items()}


async def signed_in_provider(factory: Factory) -> tuple[SSOProvider, EntraUser]:
    """An enabled provider of the fake tenant and an Entra user provisioned for it."""
    company = await factory.company()
    provider = await factory.provider(
        company,
        base_url=TENANT_ID,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        enabled=True,
    )
    person = EntraUser.make()
    assert person.email is not None
    await factory.user(company, email=person.email, provider=provider)
    return provider, person


async def sign_in(
    client: httpx.AsyncClient,
    entra: FakeEntra,
    provider: SSOProvider,
    person: EntraUser,
    **params: str,
) -> str:
    """Initiate with ``params``, sign in at Entra, come back: the callback's Location."""
    started = await client.get(f"/sso/{provider.id}/initiate", params={**PKCE, **params})
    assert started.status_code == 302, started.text
    location = started.headers["location"]
    assert location.startswith(entra.authorization_endpoint + "?"), location
    assert "return_to" not in query_of(location), "return_to never goes to Entra"
    finished = await client.get(entra.authorize(location, user=person))
    assert finished.status_code == 302, finished.text
    assert len(finished.headers.get_list("location")) == 1
    return str(finished.headers["location"])


async def lands_on_the_frontend(
    client: httpx.AsyncClient,
    entra: FakeEntra,
    provider: SSOProvider,
    person: EntraUser,
    payload: str,
) -> None:
    target = await sign_in(client, entra, provider, person, return_to=payload)

    parts = urlsplit(target)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "app.example.com", "/sso/complete")
    assert target.startswith(f"{COMPLETE_URL}?code="), target
    assert not parts.fragment, target
    query = query_of(target)
    assert query["code"], target
    assert set(query) <= {"code", "return_to"}, target
    expected = safe_return_to(payload)
    if expected is None:
        assert "return_to" not in query, target
    else:
        assert query["return_to"] == expected, target
        assert escapes(query["return_to"]) == [], target


async def each(items: list[tuple[str, str]], check: Callable[[str], Awaitable[None]]) -> None:
    """Runs ``check`` on every item, then fails listing every item that failed, by label."""
    failures = []
    for label, item in items:
        try:
            await check(item)
        except AssertionError as e:
            failures.append(f"{label} {item[:100]!r}: {str(e)[:500]}")
    assert not failures, f"{len(failures)} failed:\n" + "\n".join(failures)


SAMPLE = _sample()
CHUNK = 25
CHUNKS = [SAMPLE[start : start + CHUNK] for start in range(0, len(SAMPLE), CHUNK)]


@pytest.mark.parametrize(
    "chunk", [pytest.param(chunk, id=f"L{chunk[0][0]}-L{chunk[-1][0]}") for chunk in CHUNKS]
)
async def test_a_sign_in_with_a_hostile_return_to_lands_on_the_frontend(
    client: httpx.AsyncClient,
    factory: Factory,
    entra: FakeEntra,
    chunk: list[tuple[int, str]],
) -> None:
    """Every 10th payload and the named ones, one provider per chunk of the sample."""
    provider, person = await signed_in_provider(factory)

    async def check(payload: str) -> None:
        await lands_on_the_frontend(client, entra, provider, person, payload)

    await each([(f"L{number}", payload) for number, payload in chunk], check)
    assert len(entra.token_requests) == len(chunk), "every sign-in went through Entra"


def test_the_sample_is_every_tenth_payload_and_the_named_ones() -> None:
    sampled = [payload for _, payload in SAMPLE]
    assert len(sampled) >= len(CORPUS) // 10
    assert set(NAMED) <= set(sampled)
    assert sum(len(chunk) for chunk in CHUNKS) == len(SAMPLE)


# --- every other redirect from /sso/* ---------------------------------------------------------


HOSTILE_VALUES = [
    "//evil.com",
    "https://evil.com/",
    "/\\evil.com",
    "/%2F%2Fevil.com",
    "https://app.example.com@evil.com",
    "javascript:alert('evil')",
    "\r\nLocation: https://evil.com",
    "%0d%0aLocation:%20https://evil.com",
    "/..//evil.com",
    "evil.com\x00",
    "<script>evil()</script>",
    "AADSTS65004: see https://evil.com",
    "//evil.com/" + "a" * 1000,
]
HOSTILE_PARAMS = (
    "state",
    "code",
    "error",
    "error_description",
    "iss",
    "return_to",
    "redirect_uri",
    "post_logout_redirect_uri",
    "next",
    "url",
)


def assert_nothing_hostile(response: httpx.Response, hostile: str) -> None:
    """No header but the cookies carries attacker text, in any decoding."""
    for name, value in response.headers.multi_items():
        if name.lower() == "set-cookie":
            continue
        for decoded in decodings(value).values():
            assert "evil" not in decoded.lower(), f"{name}: {value}"
            assert hostile.strip() not in decoded, f"{name}: {value}"


def assert_error_redirect(response: httpx.Response, hostile: str) -> str:
    """A 302 to exactly ``ERROR_URL?error=<code>``; returns the code."""
    assert response.status_code == 302, response.text
    assert len(response.headers.get_list("location")) == 1
    location = response.headers["location"]
    prefix = f"{ERROR_URL}?error="
    assert location.startswith(prefix), location
    code = location[len(prefix) :]
    assert code in ERROR_CODES, location
    assert response.content == b""
    assert_nothing_hostile(response, hostile)
    return code


def hostile_query(hostile: str, **fixed: str) -> dict[str, str]:
    return {**dict.fromkeys(HOSTILE_PARAMS, hostile), **fixed}


HOSTILE = [(f"hostile #{index}", value) for index, value in enumerate(HOSTILE_VALUES)]


class TestOtherRedirects:
    """Error and logged-out redirects go to the configured frontend pages, echoing nothing.

    Each test loops over every hostile value with one provider (see :func:`each`).
    """

    async def test_a_callback_without_a_sign_in(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        provider, _ = await signed_in_provider(factory)
        path = f"/sso/{provider.id}/callback"

        async def check(hostile: str) -> None:
            got = await client.get(path, params=hostile_query(hostile))
            assert assert_error_redirect(got, hostile) == "invalid_state"
            posted = await client.post(path, data=hostile_query(hostile))
            assert assert_error_redirect(posted, hostile) == "invalid_state"

        await each(HOSTILE, check)

    async def test_an_error_answer_from_entra(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        provider, _ = await signed_in_provider(factory)

        async def check(hostile: str) -> None:
            for error in ("access_denied", hostile):
                started = await client.get(
                    f"/sso/{provider.id}/initiate", params={**PKCE, "return_to": hostile}
                )
                back = entra.authorize_error(
                    started.headers["location"],
                    error=error,
                    description=hostile,
                    response_params={"iss": hostile, "return_to": hostile, "next": hostile},
                )
                code = assert_error_redirect(await client.get(back), hostile)
                assert code in {"access_denied", "idp_error"}

        await each(HOSTILE, check)
        assert entra.token_calls == 0

    async def test_a_wrong_iss_in_the_authorization_response(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        provider, person = await signed_in_provider(factory)

        async def check(hostile: str) -> None:
            started = await client.get(
                f"/sso/{provider.id}/initiate", params={**PKCE, "return_to": hostile}
            )
            back = entra.authorize(
                started.headers["location"],
                user=person,
                response_params={"iss": hostile, "return_to": hostile, "redirect_uri": hostile},
            )
            assert assert_error_redirect(await client.get(back), hostile) == "idp_error"

        await each(HOSTILE, check)
        assert entra.token_calls == 0

    async def test_a_real_state_without_its_cookie(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        """The state of another attempt, hostile companions: invalid_state, nothing echoed."""
        provider, _ = await signed_in_provider(factory)

        async def check(hostile: str) -> None:
            first = await client.get(f"/sso/{provider.id}/initiate", params=PKCE)
            client.cookies.clear()
            await client.get(f"/sso/{provider.id}/initiate", params={**PKCE, "return_to": hostile})
            state = query_of(first.headers["location"])["state"]
            got = await client.get(
                f"/sso/{provider.id}/callback", params=hostile_query(hostile, state=state)
            )
            assert assert_error_redirect(got, hostile) == "invalid_state"

        await each(HOSTILE, check)

    async def test_initiate_goes_to_entra_or_the_error_page(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        enabled, _ = await signed_in_provider(factory)
        disabled = await factory.provider(await factory.company(), base_url=TENANT_ID)

        async def check(hostile: str) -> None:
            response = await client.get(
                f"/sso/{enabled.id}/initiate", params={**hostile_query(hostile), **PKCE}
            )
            assert response.status_code == 302, response.text
            location = response.headers["location"]
            assert location.startswith(entra.authorization_endpoint + "?"), location
            assert_nothing_hostile(response, hostile)
            response = await client.get(
                f"/sso/{disabled.id}/initiate", params=hostile_query(hostile)
            )
            assert assert_error_redirect(response, hostile) == "provider_disabled"

        await each(HOSTILE, check)

    async def test_an_unknown_or_malformed_provider(
        self, client: httpx.AsyncClient, entra: FakeEntra
    ) -> None:
        async def check(hostile: str) -> None:
            for provider_id in (
                "evil.com",
                "%5Cevil.com",
                "javascript:alert(1)",
                "@evil.com",
                str(uuid.uuid4()),
            ):
                for route in ("initiate", "callback"):
                    response = await client.get(
                        f"/sso/{provider_id}/{route}", params=hostile_query(hostile)
                    )
                    assert assert_error_redirect(response, hostile) == "provider_not_found"

        await each(HOSTILE, check)
        assert entra.discovery_calls == 0

    async def test_the_landing_after_entra_signs_out(
        self, client: httpx.AsyncClient, factory: Factory, entra: FakeEntra
    ) -> None:
        provider, _ = await signed_in_provider(factory)

        async def check(hostile: str) -> None:
            for provider_id in (provider.id, uuid.uuid4()):
                response = await client.get(
                    f"/sso/{provider_id}/logout", params=hostile_query(hostile)
                )
                assert response.status_code == 302, response.text
                assert response.headers.get_list("location") == [LOGGED_OUT_URL]
                assert_nothing_hostile(response, hostile)

        await each(HOSTILE, check)
