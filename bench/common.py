"""What every part of the bench agrees on: seed sizes, row ids, the client secret, the hot set.

Every id is derived from a row's index (``md5('p:' || i)::uuid`` on PostgreSQL, the same in
Python), so the bench knows any provider or user of the seed without asking the database, and
the ids are as random as ``uuid4`` (B-tree inserts and look-ups land all over the index).
"""

from __future__ import annotations

import hashlib
import random
import socket
import uuid
from dataclasses import dataclass

# The one client secret of every seeded provider (the fake IdP checks it at its token
# endpoint). Not a GUID: the service would take a GUID for the secret's ID.
CLIENT_SECRET = "bench~Zq8Q-client-secret-value-of-every-seeded-provider"  # noqa: S105
ADMIN_EMAIL = "admin@bench.example"
FRONTEND_URL = "http://127.0.0.1:3000"

# How many providers and users the load touches, sampled from the whole seed. The same at
# every scale, so the per-process caches (discovery, key sets) hold as much at both scales
# and only the database's size differs.
HOT_PROVIDERS = 10
HOT_USERS = 100


@dataclass(frozen=True, slots=True)
class Scale:
    name: str
    providers: int
    users: int


SCALES = {
    "small": Scale("small", providers=10, users=1_000),
    "large": Scale("large", providers=100_000, users=1_000_000),
}


def _uuid(prefix: str, index: int) -> uuid.UUID:
    digest = hashlib.md5(f"{prefix}:{index}".encode(), usedforsecurity=False).hexdigest()
    return uuid.UUID(digest)


def company_id(index: int) -> uuid.UUID:
    return _uuid("c", index)


def provider_id(index: int) -> uuid.UUID:
    return _uuid("p", index)


def tenant_id(index: int) -> str:
    return str(_uuid("t", index))


def client_id(index: int) -> str:
    return str(_uuid("a", index))


def user_id(index: int) -> uuid.UUID:
    return _uuid("u", index)


ADMIN_ID = _uuid("admin", 0)


def user_provider(scale: Scale, index: int) -> int:
    """Users are dealt to providers (one company each) round-robin: user i → provider i % P."""
    return index % scale.providers


def user_email(scale: Scale, index: int) -> str:
    return f"user{index}@tenant{user_provider(scale, index)}.bench.example"


def admin_company(scale: Scale) -> int:
    """The administrator's company: one in the middle of the range."""
    return scale.providers // 2


@dataclass(frozen=True, slots=True)
class HotUser:
    index: int
    id: str
    email: str
    provider_index: int
    provider_id: str
    tenant: str
    client_id: str


def hot_set(scale: Scale, seed: int) -> list[HotUser]:
    """``HOT_USERS`` users of ``HOT_PROVIDERS`` providers, both drawn from the whole range."""
    rng = random.Random(seed)  # noqa: S311 - sampling, not security
    providers = rng.sample(range(scale.providers), min(HOT_PROVIDERS, scale.providers))
    candidates = [i for p in providers for i in range(p, scale.users, scale.providers)]
    chosen = rng.sample(candidates, min(HOT_USERS, len(candidates)))
    return [
        HotUser(
            index=i,
            id=str(user_id(i)),
            email=user_email(scale, i),
            provider_index=user_provider(scale, i),
            provider_id=str(provider_id(user_provider(scale, i))),
            tenant=tenant_id(user_provider(scale, i)),
            client_id=client_id(user_provider(scale, i)),
        )
        for i in chosen
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
