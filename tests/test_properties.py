"""Property-based tests (hypothesis) of company isolation and roles on every admin route.

The admin API (README, *The admin API in short*): every resource is scoped to the caller's
company (another company's resources are ``404``, exactly like ids that exist nowhere), and
each role may do exactly what the README lists. Those rules are written out below as an
independent oracle, not imported from the service, so a change to the service's rules fails here.

Every example builds its own companies (the app and database are shared by all examples of
a test), and what a company holds is read straight from the database, bypassing the API,
before and after the requests under test.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Label, Select, Table, Uuid, bindparam, or_, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import NullType

from sso_broker.audit import service as audit
from sso_broker.audit.service import EventType
from sso_broker.database import session_scope, utcnow
from sso_broker.deps import AppContext
from sso_broker.models import Base, Company, IdentityLink, RefreshToken, SSOProvider, User
from sso_broker.sessions import service as sessions_service
from sso_broker.users.models import Role
from sso_broker.users.repository import normalize_email
from tests.conftest import Factory
from tests.pkce import CHALLENGE
from tests.problems import assert_problem

USERS = "/api/v1/users"
PROVIDERS = "/api/v1/sso-providers"
AUDIT = "/api/v1/audit-events"

PROPERTIES = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    # No shrinking: an example takes up to a second, so shrinking a failure would take
    # minutes; the assertions name the case, and hypothesis prints every draw.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- the oracle: the README's admin API rules, written out -------------------------------

# "Roles: administrator, manager, user, read_only", highest first.
RANK: dict[Role, int] = {
    Role.ADMINISTRATOR: 3,
    Role.MANAGER: 2,
    Role.USER: 1,
    Role.READ_ONLY: 0,
}
# "Only administrators read or change SSO providers."
PROVIDER_STAFF = frozenset({Role.ADMINISTRATOR})
# "Administrators and managers read and change users."
USER_STAFF = frozenset({Role.ADMINISTRATOR, Role.MANAGER})
# "An administrator may grant up to manager, a manager up to user (administrators are made
# with the CLI only)."
GRANT_CEILING: dict[Role, Role] = {Role.ADMINISTRATOR: Role.MANAGER, Role.MANAGER: Role.USER}


def staff_of(collection: str) -> frozenset[Role]:
    return USER_STAFF if collection == USERS else PROVIDER_STAFF


def may_grant(actor: Role, role: Role) -> bool:
    ceiling = GRANT_CEILING.get(actor)
    return ceiling is not None and RANK[role] <= RANK[ceiling]


def may_manage(actor: Role, target: Role, *, is_self: bool) -> bool:
    """Nobody changes or deletes themselves, or anyone at or above their own level."""
    return actor in USER_STAFF and not is_self and RANK[target] < RANK[actor]


SUCCESS = {"list": 200, "get": 200, "create": 201, "patch": 200, "patch_role": 200, "delete": 204}


def documented_status(
    actor: Role, collection: str, op: str, *, target: Role, requested: Role, is_self: bool
) -> int:
    """The status the README's admin API rules give ``actor`` for ``op`` on an own-company
    resource."""
    if actor not in staff_of(collection):
        return 403
    if collection == USERS:
        if op == "create" and not may_grant(actor, requested):
            return 403
        if op in ("patch", "patch_role", "delete") and not may_manage(
            actor, target, is_self=is_self
        ):
            return 403
        if op == "patch_role" and not may_grant(actor, requested):
            return 403
    return SUCCESS[op]


# -- reading a company's rows straight from the database ----------------------------------

TABLES = Base.metadata.tables
Snapshot = dict[tuple[str, str], tuple[Any, ...]]


COMPANY = bindparam("company", type_=Uuid())


def _raw(table: Table) -> list[Label[Any]]:
    """The table's columns without SQLAlchemy's result processing: the driver's own values."""
    return [type_coerce(column, NullType()).label(column.name) for column in table.c]


def _company_queries() -> dict[str, Select[Any]]:
    """For every table holding rows of a company: the query for those rows.

    A row belongs to the company through its ``company_id``, or through a foreign key to a
    row that has one (a user's identity links, a session's refresh tokens); so a row of
    another company that points at one of this company's (a user linked to its provider)
    counts as this company's too.
    """
    queries: dict[str, Select[Any]] = {}
    for table in Base.metadata.sorted_tables:
        conditions = []
        if table.name == "companies":
            conditions.append(table.c.id == COMPANY)
        if "company_id" in table.c:
            conditions.append(table.c.company_id == COMPANY)
        for foreign_key in table.foreign_keys:
            referred = foreign_key.column.table
            if referred.name != "companies" and "company_id" in referred.c:
                owned = select(foreign_key.column).where(referred.c.company_id == COMPANY)
                conditions.append(foreign_key.parent.in_(owned))
        if conditions:
            queries[table.name] = (
                select(*_raw(table)).where(or_(*conditions)).order_by(*table.primary_key.columns)
            )
    return queries


COMPANY_QUERIES = _company_queries()
# Append-only records of what happened: an allowed change may add to them.
RECORD_TABLES = frozenset({"audit_events"})


def key(table: str, value: Any) -> tuple[str, str]:
    """A row's identity: table and primary key (UUIDs in one spelling on every backend)."""
    column = next(iter(TABLES[table].primary_key.columns))
    return table, str(uuid.UUID(str(value))) if isinstance(column.type, Uuid) else str(value)


async def rows_of(engine: AsyncEngine, company_id: uuid.UUID) -> Snapshot:
    """Every row the company owns, as the database driver returns it (no ORM, no types)."""
    snapshot: Snapshot = {}
    async with engine.connect() as connection:
        for table, query in COMPANY_QUERIES.items():
            pk = next(iter(TABLES[table].primary_key.columns)).name
            result = await connection.execute(query, {"company": company_id})
            index = list(result.keys()).index(pk)
            for row in result.all():
                snapshot[key(table, row[index])] = tuple(row)
    return snapshot


def changed(before: Snapshot, after: Snapshot) -> set[tuple[str, str]]:
    """The rows added, removed or changed; records of changes (the audit log, which has its
    own tests) only when one was changed or removed, never when one was added."""
    return {
        k
        for k in before.keys() | after.keys()
        if before.get(k) != after.get(k) and (k[0] not in RECORD_TABLES or k in before)
    }


def ids_in(snapshot: Snapshot, table: str) -> set[str]:
    return {pk for name, pk in snapshot if name == table}


# -- strategies ----------------------------------------------------------------------------

NAMES = st.text(
    alphabet=st.characters(categories=("L", "N", "Zs", "Pd")), min_size=1, max_size=40
).filter(lambda s: s.strip() != "")
LOCAL_PARTS = st.from_regex(r"[a-zéøü][a-z0-9éøü]{0,9}(\.[a-z0-9]{1,6})?", fullmatch=True)
DOMAINS = st.sampled_from(["example.com", "contoso.com", "fabrikam.com", "mail.example.org"])
EMAILS = st.builds("{}@{}".format, LOCAL_PARTS, DOMAINS)
CONSUMER_TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
TENANTS = st.one_of(
    st.uuids().map(str).filter(lambda t: t != CONSUMER_TENANT),
    st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True).map("{}.onmicrosoft.com".format),
)
CLIENT_IDS = st.uuids().map(str)
SECRETS = st.from_regex(r"[A-Za-z0-9~._]{8,40}", fullmatch=True)  # no "-": never a GUID


def fresh_email() -> str:
    return f"fresh-{uuid.uuid4().hex}@example.net"


def recased(value: str) -> st.SearchStrategy[str]:
    """The same address in random letter case: equal case-insensitively."""
    flips = st.lists(st.booleans(), min_size=len(value), max_size=len(value))
    return flips.map(
        lambda up: "".join(c.upper() if u else c for c, u in zip(value, up, strict=True))
    )


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    base_url: str
    client_id: str | None
    client_secret: str | None
    enabled: bool


@dataclass(frozen=True)
class UserSpec:
    email: str
    name: str
    role: Role
    provider: int | None  # index into the company's providers


@dataclass(frozen=True)
class CompanySpec:
    name: str
    providers: list[ProviderSpec]
    users: list[UserSpec]


@st.composite
def provider_specs(draw: st.DrawFn) -> ProviderSpec:
    client_id = draw(st.none() | CLIENT_IDS)
    secret = draw(st.none() | SECRETS)
    enabled = client_id is not None and secret is not None and draw(st.booleans())
    return ProviderSpec(draw(NAMES), draw(TENANTS), client_id, secret, enabled)


@st.composite
def company_specs(draw: st.DrawFn, emails: st.SearchStrategy[str]) -> CompanySpec:
    providers = draw(st.lists(provider_specs(), max_size=2))
    links = (st.none() | st.sampled_from(range(len(providers)))) if providers else st.none()
    users = draw(
        st.lists(
            st.builds(UserSpec, emails, NAMES, st.sampled_from(Role), links),
            min_size=1,
            max_size=4,
            unique_by=lambda u: normalize_email(u.email),
        )
    )
    return CompanySpec(draw(NAMES), providers, users)


def user_patch_bodies(
    emails: st.SearchStrategy[str], provider_ids: Sequence[uuid.UUID]
) -> st.SearchStrategy[dict[str, Any]]:
    """Valid PATCH /users bodies (each would succeed on a manageable user of one's own)."""
    return st.fixed_dictionaries(
        {},
        optional={
            "name": NAMES,
            "email": emails,
            "role": st.sampled_from([r.value for r in Role]),
            "sso_provider_id": st.sampled_from([None, *(str(p) for p in provider_ids)]),
        },
    )


@st.composite
def provider_patch_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Valid PATCH /sso-providers bodies, enabling only together with the credentials."""
    body = draw(
        st.fixed_dictionaries(
            {},
            optional={"name": NAMES, "base_url": TENANTS, "enabled": st.just(False)},
        )
    )
    if draw(st.booleans()):
        body |= {"client_id": draw(CLIENT_IDS), "client_secret": draw(SECRETS)}
        body["enabled"] = draw(st.booleans())
    return body


PROVIDER_CREATE_BODIES = st.fixed_dictionaries(
    {"type": st.just("entra"), "base_url": TENANTS}, optional={"name": NAMES}
)


# -- building companies --------------------------------------------------------------------


@dataclass
class Built:
    company: Company
    providers: list[SSOProvider]
    users: list[User]


async def build(context: AppContext, factory: Factory, spec: CompanySpec) -> Built:
    """The company as drawn, each user recorded in the audit log and signed in once (with a
    login code and refresh token) and, when linked to a provider, with an identity link."""
    company = await factory.company(spec.name)
    async with session_scope(context.sessionmaker) as session:
        providers = [
            SSOProvider(
                id=uuid.uuid4(),
                company_id=company.id,
                type="entra",
                name=p.name,
                base_url=p.base_url,
                client_id=p.client_id,
                client_secret_encrypted=context.box.encrypt(p.client_secret)
                if p.client_secret
                else None,
                enabled=p.enabled,
            )
            for p in spec.providers
        ]
        session.add_all(providers)
        await session.flush()
        users = [
            User(
                id=uuid.uuid4(),
                company_id=company.id,
                email=u.email,
                email_normalized=normalize_email(u.email),
                name=u.name,
                role=u.role,
                sso_provider_id=None if u.provider is None else providers[u.provider].id,
            )
            for u in spec.users
        ]
        session.add_all(users)
        await session.flush()
        for user in users:
            sign_in = await sessions_service.start(
                session, user, provider_id=user.sso_provider_id, lifetime=timedelta(hours=1)
            )
            await sessions_service.create_login_code(session, sign_in, code_challenge=CHALLENGE)
            session.add(
                RefreshToken(
                    token_hash=sessions_service.token_hash(uuid.uuid4().hex),
                    session_id=sign_in.id,
                    expires_at=utcnow() + timedelta(days=1),
                )
            )
            audit.record(session, company.id, EventType.USER_CREATED, user_id=user.id)
            if user.sso_provider_id is not None:
                session.add(
                    IdentityLink(
                        id=uuid.uuid4(),
                        provider_id=user.sso_provider_id,
                        namespace=str(uuid.uuid4()),
                        subject=uuid.uuid4().hex,
                        user_id=user.id,
                    )
                )
    return Built(company=company, providers=providers, users=users)


async def one_of_each_role(factory: Factory, built: Built) -> dict[Role, dict[str, str]]:
    """Auth headers for a user of every role: a drawn user of that role, else a new one."""
    headers: dict[Role, dict[str, str]] = {}
    for role in Role:
        user = next((u for u in built.users if u.role is role), None)
        if user is None:
            user = await factory.user(built.company, role, email=fresh_email())
            built.users.append(user)
        headers[role] = await factory.headers(user)
    return headers


# -- requests and answers ------------------------------------------------------------------


def answer(response: httpx.Response) -> tuple[int, str, Any]:
    """What a response tells the caller: status, content type and body."""
    body = response.json() if response.content else None
    return response.status_code, response.headers.get("content-type", ""), body


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: Any = None,
) -> httpx.Response:
    if body is None:
        return await client.request(method, url, headers=headers)
    return await client.request(method, url, headers=headers, json=body)


async def audit_log(
    client: httpx.AsyncClient, headers: Mapping[str, str]
) -> tuple[httpx.Response, set[str]]:
    """The ids of every audit event the caller can page through, and the last answer."""
    ids: set[str] = set()
    params: dict[str, Any] = {"limit": 200}
    while True:
        response = await client.get(AUDIT, params=params, headers=headers)
        if response.status_code != 200:
            return response, ids
        page = response.json()
        ids |= {str(uuid.UUID(item["id"])) for item in page["items"]}
        if not page["next_cursor"]:
            return response, ids
        params["cursor"] = page["next_cursor"]


async def emails_of(engine: AsyncEngine, company_id: uuid.UUID) -> set[str]:
    users = TABLES["users"]
    async with engine.connect() as connection:
        result = await connection.execute(
            select(users.c.email_normalized).where(users.c.company_id == company_id)
        )
        return set(result.scalars())


# -- tenant isolation ----------------------------------------------------------------------


@PROPERTIES
@given(data=st.data())
async def test_no_admin_route_reaches_another_company(
    client: httpx.AsyncClient, context: AppContext, factory: Factory, data: st.DataObject
) -> None:
    """Whatever any role of B sends, A's rows are never listed, read, changed or deleted."""
    a_spec = data.draw(company_specs(EMAILS), label="company A")
    a_emails = [u.email for u in a_spec.users]
    # B's addresses: A's in another letter case (the same address to the database) or new.
    like_a = st.sampled_from(a_emails).flatmap(recased)
    b_spec = data.draw(company_specs(st.one_of(like_a, EMAILS)), label="company B")
    a = await build(context, factory, a_spec)
    b = await build(context, factory, b_spec)
    b_headers = await one_of_each_role(factory, b)
    event(f"A: {len(a.users)} users, {len(a.providers)} providers")
    a_addresses = {normalize_email(e) for e in a_emails}
    shared = {normalize_email(s.email) for s in b_spec.users} & a_addresses
    event(f"B shares {len(shared)} of A's emails")
    engine = context.engine
    a_user_ids = [u.id for u in a.users]
    a_provider_ids = [p.id for p in a.providers]
    before = await rows_of(engine, a.company.id)

    # Bodies that would succeed on B's own resources, naming A's emails and providers too.
    b_provider_ids = [p.id for p in b.providers]
    user_patch = data.draw(
        user_patch_bodies(st.one_of(like_a, EMAILS), [*a_provider_ids, *b_provider_ids]),
        label="PATCH /users body",
    )
    provider_patch = data.draw(provider_patch_bodies(), label="PATCH /sso-providers body")
    patches = {USERS: user_patch, PROVIDERS: provider_patch}
    victims = {USERS: a_user_ids, PROVIDERS: a_provider_ids}

    for role, headers in b_headers.items():
        # Lists: B's rows only, straight from the database.
        b_rows = await rows_of(engine, b.company.id)
        for collection, table in ((USERS, "users"), (PROVIDERS, "sso_providers")):
            response = await client.get(collection, headers=headers)
            if role not in staff_of(collection):
                assert_problem(response, 403, "forbidden")
                continue
            assert response.status_code == 200, response.text
            listed = {str(uuid.UUID(item["id"])) for item in response.json()["items"]}
            assert listed == ids_in(b_rows, table)
            assert listed.isdisjoint(str(i) for i in a_user_ids + a_provider_ids)

        # The audit log (administrators only): B's events, every page of them.
        response, events = await audit_log(client, headers)
        if role in PROVIDER_STAFF:
            assert response.status_code == 200, response.text
            assert events == ids_in(b_rows, "audit_events")
            assert events.isdisjoint(ids_in(before, "audit_events"))
        else:
            assert_problem(response, 403, "forbidden")

        # By id: A's ids answer exactly like an id that exists nowhere.
        for collection, ids in victims.items():
            for method in ("GET", "PATCH", "DELETE"):
                body = patches[collection] if method == "PATCH" else None
                unknown = await send(client, method, f"{collection}/{uuid.uuid4()}", headers, body)
                if role in staff_of(collection):
                    assert_problem(unknown, 404, "not_found")
                else:
                    assert_problem(unknown, 403, "forbidden")
                for victim in ids:
                    response = await send(client, method, f"{collection}/{victim}", headers, body)
                    assert answer(response) == answer(unknown), (method, collection, role)

        await _own_writes_stay_in_b(client, factory, data, engine, a, b, role, headers, like_a)

    # B's administrator deletes B's providers: A's users and links are not detached.
    for provider in b.providers:
        response = await client.delete(
            f"{PROVIDERS}/{provider.id}", headers=b_headers[Role.ADMINISTRATOR]
        )
        assert response.status_code == 204, response.text

    # B's audit log now holds B's own changes above, and still nothing of A's.
    response, events = await audit_log(client, b_headers[Role.ADMINISTRATOR])
    assert response.status_code == 200, response.text
    assert events == ids_in(await rows_of(engine, b.company.id), "audit_events")
    assert events.isdisjoint(ids_in(before, "audit_events"))

    assert await rows_of(engine, a.company.id) == before


async def _own_writes_stay_in_b(
    client: httpx.AsyncClient,
    factory: Factory,
    data: st.DataObject,
    engine: AsyncEngine,
    a: Built,
    b: Built,
    role: Role,
    headers: dict[str, str],
    like_a: st.SearchStrategy[str],
) -> None:
    """Creates and changes by B: A's emails are free in B, A's providers unknown in B."""
    staff = role in USER_STAFF

    # A user with one of A's emails: only B's own addresses conflict.
    email = data.draw(like_a, label="email like one of A's")
    granted = data.draw(st.sampled_from(Role), label="role granted")
    link = data.draw(st.sampled_from([None, *(p.id for p in b.providers)]), label="B provider")
    taken = normalize_email(email) in await emails_of(engine, b.company.id)
    response = await client.post(
        USERS,
        json={
            "email": email,
            "name": "Same Address",
            "role": granted.value,
            "sso_provider_id": None if link is None else str(link),
        },
        headers=headers,
    )
    if not staff or not may_grant(role, granted):
        assert_problem(response, 403, "forbidden")
    elif taken:
        assert_problem(response, 409, "email_taken")
    else:
        assert response.status_code == 201, response.text
        b_rows = await rows_of(engine, b.company.id)
        assert key("users", response.json()["id"]) in b_rows

    # A user linked to A's provider: exactly like a provider id that exists nowhere.
    for a_provider in a.providers:
        body = {"email": fresh_email(), "name": "Linked Elsewhere", "role": granted.value}
        foreign = await client.post(
            USERS, json=body | {"sso_provider_id": str(a_provider.id)}, headers=headers
        )
        unknown = await client.post(
            USERS, json=body | {"sso_provider_id": str(uuid.uuid4())}, headers=headers
        )
        assert answer(foreign) == answer(unknown)
        if not staff or not may_grant(role, granted):
            assert_problem(unknown, 403, "forbidden")
        else:
            assert_problem(unknown, 422, "sso_provider_not_found")

    # A provider lands in B.
    response = await client.post(
        PROVIDERS, json=data.draw(PROVIDER_CREATE_BODIES, label="POST provider"), headers=headers
    )
    if role in PROVIDER_STAFF:
        assert response.status_code == 201, response.text
        assert key("sso_providers", response.json()["id"]) in await rows_of(engine, b.company.id)
    else:
        assert_problem(response, 403, "forbidden")

    # Changing one of B's own users to an A email or to A's provider.
    target = (await factory.user(b.company, Role.READ_ONLY, email=fresh_email())).id
    email = data.draw(like_a, label="new email like one of A's")
    taken = normalize_email(email) in await emails_of(engine, b.company.id)
    response = await client.patch(f"{USERS}/{target}", json={"email": email}, headers=headers)
    if not staff:
        assert_problem(response, 403, "forbidden")
    elif taken:
        assert_problem(response, 409, "email_taken")
    else:
        assert response.status_code == 200, response.text
    for a_provider in a.providers:
        foreign = await client.patch(
            f"{USERS}/{target}", json={"sso_provider_id": str(a_provider.id)}, headers=headers
        )
        unknown = await client.patch(
            f"{USERS}/{target}", json={"sso_provider_id": str(uuid.uuid4())}, headers=headers
        )
        assert answer(foreign) == answer(unknown)
        if staff:
            assert_problem(unknown, 422, "sso_provider_not_found")
        else:
            assert_problem(unknown, 403, "forbidden")

    # Deleting that user (who may now share an address with one of A's users).
    response = await client.delete(f"{USERS}/{target}", headers=headers)
    if staff:
        assert response.status_code == 204, response.text
    else:
        assert_problem(response, 403, "forbidden")

    # Pointing B's own providers at A's Entra tenants (two companies may share a tenant).
    for own, a_provider in zip(b.providers, a.providers, strict=False):
        response = await client.patch(
            f"{PROVIDERS}/{own.id}",
            json={"base_url": a_provider.base_url, "name": a_provider.name},
            headers=headers,
        )
        if role in PROVIDER_STAFF:
            assert response.status_code == 200, response.text
        else:
            assert_problem(response, 403, "forbidden")


# -- roles ---------------------------------------------------------------------------------

OPERATIONS = [
    *((USERS, op) for op in ("list", "get", "create", "patch", "patch_role", "delete")),
    *((PROVIDERS, op) for op in ("list", "get", "create", "patch", "delete")),
]
BY_ID = frozenset({"get", "patch", "patch_role", "delete"})


@dataclass(frozen=True)
class Case:
    actor: Role
    collection: str
    op: str
    target: Role  # the role of the user acted on (the actor's own when ``is_self``)
    requested: Role  # the role asked for on create and patch_role
    is_self: bool
    linked: bool  # whether the target user signs in with the provider of the case


@st.composite
def cases(draw: st.DrawFn, actor: Role, collection: str, op: str) -> Case:
    """Random target, requested role and self-targeting for one actor and operation."""
    is_self = collection == USERS and op in BY_ID and draw(st.sampled_from([False, False, True]))
    target = actor if is_self else draw(st.sampled_from(Role))
    requested = draw(st.sampled_from(Role))
    return Case(actor, collection, op, target, requested, is_self, draw(st.booleans()))


def unique(email: str) -> str:
    """The drawn address made unique in its company (examples may draw one twice)."""
    local, domain = email.split("@")
    return f"{local}.{uuid.uuid4().hex[:8]}@{domain}"


def request_for(
    data: st.DataObject, case: Case, target: uuid.UUID, provider: uuid.UUID
) -> tuple[str, str, dict[str, Any] | None]:
    """The method, URL and a valid body of the case's request."""
    if case.op == "list":
        return "GET", case.collection, None
    if case.collection == USERS:
        url = f"{USERS}/{target}"
        links = st.sampled_from([None, str(provider)])
        emails = EMAILS.map(unique)
        if case.op == "create":
            body = {
                "email": data.draw(emails, label="email"),
                "name": data.draw(NAMES, label="name"),
                "role": case.requested.value,
                "sso_provider_id": data.draw(links, label="sso_provider_id"),
            }
            return "POST", USERS, body
        if case.op == "patch":
            optional = {"name": NAMES, "email": emails, "sso_provider_id": links}
            return (
                "PATCH",
                url,
                data.draw(st.fixed_dictionaries({}, optional=optional), label="patch"),
            )
        if case.op == "patch_role":
            extra = data.draw(
                st.fixed_dictionaries({}, optional={"name": NAMES}), label="with name"
            )
            return "PATCH", url, {"role": case.requested.value} | extra
    else:
        url = f"{PROVIDERS}/{provider}"
        if case.op == "create":
            return "POST", PROVIDERS, data.draw(PROVIDER_CREATE_BODIES, label="provider")
        if case.op == "patch":
            return "PATCH", url, data.draw(provider_patch_bodies(), label="provider patch")
    return {"get": "GET", "delete": "DELETE"}[case.op], url, None


def assert_reflects(item: dict[str, Any], body: dict[str, Any]) -> None:
    """A changed or created resource shows what was sent (names trimmed, ids lower-cased)."""
    for name, sent in body.items():
        if name == "client_secret":
            assert item["client_secret_set"] is True
            assert sent not in str(item)
        elif name in ("name", "email", "client_id") and sent is not None:
            assert item[name].casefold() == sent.strip().casefold(), (name, item, body)
        else:
            assert item[name] == sent, (name, item, body)


@PROPERTIES
@given(data=st.data())
async def test_every_role_can_do_exactly_what_the_readme_allows(
    client: httpx.AsyncClient, context: AppContext, factory: Factory, data: st.DataObject
) -> None:
    """For every role and operation, with a random target, requested role and self-targeting,
    the API's answer and effect are the README's."""
    company = await factory.company(data.draw(NAMES, label="company"))
    home = await factory.provider(company, base_url=data.draw(TENANTS, label="tenant"))
    actors = {role: await factory.user(company, role, email=fresh_email()) for role in Role}
    headers = {role: await factory.headers(user) for role, user in actors.items()}
    every = [(role, collection, op) for role in Role for collection, op in OPERATIONS]
    for actor, collection, op in data.draw(st.permutations(every), label="order"):
        case = data.draw(cases(actor, collection, op), label="case")
        # A fresh provider for provider operations, the company's own for linking users.
        provider = (
            home
            if collection == USERS
            else await factory.provider(company, base_url=data.draw(TENANTS, label="tenant"))
        )
        target = (
            actors[actor]
            if case.is_self
            else await factory.user(
                company,
                case.target,
                email=fresh_email(),
                provider=provider if case.linked else None,
            )
        )
        method, url, body = request_for(data, case, target.id, provider.id)
        expected = documented_status(
            actor,
            collection,
            op,
            target=case.target,
            requested=case.requested,
            is_self=case.is_self,
        )
        event(f"{collection} {op} -> {expected}")

        before = await rows_of(context.engine, company.id)
        response = await send(client, method, url, headers[actor], body)
        after = await rows_of(context.engine, company.id)

        if expected == 403:
            assert_problem(response, 403, "forbidden", (case, body))
            assert after == before, case
            continue
        assert response.status_code == expected, (case, body, response.text)
        table = "users" if collection == USERS else "sso_providers"
        resource = target.id if collection == USERS else provider.id
        if op == "list":
            listed = {str(uuid.UUID(item["id"])) for item in response.json()["items"]}
            assert listed == ids_in(before, table)
            assert after == before
        elif op == "get":
            assert uuid.UUID(response.json()["id"]) == resource
            if collection == USERS:
                assert response.json()["role"] == case.target.value
            assert after == before
        elif op == "create":
            assert body is not None
            created = response.json()
            assert_reflects(created, body)
            assert changed(before, after) == {key(table, created["id"])}
        elif op in ("patch", "patch_role"):
            assert body is not None
            assert uuid.UUID(response.json()["id"]) == resource
            assert_reflects(response.json(), body)
            assert changed(before, after) <= {key(table, resource)}
        else:
            assert op == "delete"
            gone = changed(before, after)
            assert key(table, resource) in gone
            assert key(table, resource) not in after
            if collection == USERS:
                assert gone == {key("users", target.id)}
            else:  # the provider's users stay, unlinked
                assert ids_in(after, "users") == ids_in(before, "users")
                assert gone <= {key("sso_providers", provider.id), key("users", target.id)}
                if case.linked:
                    link = TABLES["users"].c.keys().index("sso_provider_id")
                    assert after[key("users", target.id)][link] is None
