"""In-process caches of the hot paths, and the rule that keeps them honest across replicas.

Three caches serve the benchmark's hottest rows (README, *Performance*):

* **verified tokens** — a session JWT whose signature and claims checked out, keyed by the
  token's SHA-256, until its ``exp``. A signature never stops being valid, so this cache
  needs no invalidation.
* **principals** — the user, company and sign-in session behind a session id, as read from
  the database; a hit spares ``/api/v1/auth/me`` and every admin route their query.
* **providers** — an SSO provider by id (or the fact that there is none); a hit spares
  ``/sso/{id}/initiate`` and the callback their read.

Principals and providers change (a sign-out, a disabled provider, a new secret), so they obey
the replicas rule: **a change takes effect on every replica within** :data:`MAX_STALENESS`.
Two mechanisms give that bound:

1. Every entry lives at most :data:`MAX_STALENESS` counted from *before* its database read
   started, so a change committed by another process (a replica, the CLI) is seen within
   that time whatever happens to notifications.
2. In this process a committed change is seen at once: the ORM events below mark a session
   that wrote to a watched table, and its commit empties both caches. A read that was in
   flight while the change committed is not stored (the generation check), so it cannot
   put the old row back.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cachetools import TLRUCache
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

# The bound within which every replica sees a revocation or a provider change: one second,
# as the README promises (*In-process caches, and the one-second rule*). Entries expire a
# little earlier, so the time between reading a row and answering stays inside it.
MAX_STALENESS = 1.0
ENTRY_TTL = 0.9
MAX_ENTRIES = 50_000
SESSION_INFO_KEY = "sso_broker.caches"
_TOUCHED_KEY = "sso_broker.caches.touched"

# Writes to these tables can change what a cached principal or provider says. New sign-in
# sessions and users are inserts that no cached entry depends on, so only their updates and
# deletes count; a new provider may replace a cached "no such provider".
_ANY_WRITE = frozenset({"sso_providers"})
_UPDATE_OR_DELETE = frozenset({"users", "companies", "sign_in_sessions"})

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class _Entry(Generic[V]):
    value: V
    read_at: float  # monotonic time taken before the database read began


def _expires(_key: Hashable, entry: _Entry[Any], _now: float) -> float:
    return entry.read_at + ENTRY_TTL


class StaleBoundedCache(Generic[V]):
    """A cache whose entries never outlive :data:`ENTRY_TTL` from their read's start, and
    which a local change empties at once (see the module docstring)."""

    def __init__(
        self, maxsize: int = MAX_ENTRIES, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._entries: TLRUCache[Hashable, _Entry[V]] = TLRUCache(
            maxsize=maxsize, ttu=_expires, timer=clock
        )
        self._generation = 0

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()

    async def get(self, key: Hashable, load: Callable[[], Awaitable[V]]) -> V:
        entry = self._entries.get(key)
        if entry is not None:
            return entry.value
        generation, read_at = self._generation, self._clock()
        value = await load()
        if generation == self._generation:  # no local change committed while we read
            self._entries[key] = _Entry(value, read_at)
        return value


class TokenCache(Generic[V]):
    """Verified session JWTs by their SHA-256, each kept until its own ``exp``."""

    def __init__(self, maxsize: int = MAX_ENTRIES) -> None:
        self._entries: TLRUCache[str, tuple[V, float]] = TLRUCache(
            maxsize=maxsize, ttu=lambda _k, value, _now: value[1], timer=time.time
        )

    @staticmethod
    def key(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()

    def get(self, key: str) -> V | None:
        found = self._entries.get(key)
        return None if found is None else found[0]

    def put(self, key: str, value: V, expires_at: float) -> None:
        self._entries[key] = (value, expires_at)


class Caches:
    """The process's caches; the lifespan makes one and the sessionmaker carries it."""

    def __init__(self) -> None:
        self.principals: StaleBoundedCache[Any] = StaleBoundedCache()
        self.providers: StaleBoundedCache[Any] = StaleBoundedCache()
        self.tokens: TokenCache[Any] = TokenCache()

    def changed(self) -> None:
        """Something a cached principal or provider depends on was committed here."""
        self.principals.clear()
        self.providers.clear()


# --- noticing local changes ------------------------------------------------------------------


def _caches_of(session: Session) -> Caches | None:
    caches = session.info.get(SESSION_INFO_KEY)
    return caches if isinstance(caches, Caches) else None


def _touch(session: Session) -> None:
    session.info[_TOUCHED_KEY] = True


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _context: UOWTransaction) -> None:
    if _caches_of(session) is None:
        return
    for instance in session.new:
        if getattr(instance, "__tablename__", None) in _ANY_WRITE:
            _touch(session)
            return
    for instance in (*session.dirty, *session.deleted):
        table = getattr(instance, "__tablename__", None)
        if table in _ANY_WRITE or table in _UPDATE_OR_DELETE:
            _touch(session)
            return


@event.listens_for(Session, "do_orm_execute")
def _on_execute(state: ORMExecuteState) -> None:
    if _caches_of(state.session) is None or state.is_select:
        return
    table = getattr(getattr(state.statement, "table", None), "name", None)
    if table in _ANY_WRITE or (table in _UPDATE_OR_DELETE and (state.is_update or state.is_delete)):
        _touch(state.session)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    caches = _caches_of(session)
    if caches is not None and session.info.pop(_TOUCHED_KEY, False):
        caches.changed()


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_TOUCHED_KEY, None)
