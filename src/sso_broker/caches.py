"""In-process caches of the hot paths, and the rule that keeps them honest across replicas.

Three caches serve the benchmark's hottest rows (README, *Performance*):

* **verified tokens** — a session JWT whose signature and claims checked out (or that this
  process minted), keyed by the token's SHA-256, until its ``exp``. A signature never stops
  being valid, so this cache needs no invalidation.
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
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cachetools import TLRUCache
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from sso_broker.sessions.tokens import SessionClaims, packed_expires_at

# The bound within which every replica sees a revocation or a provider change: one second,
# as the README promises (*In-process caches, and the one-second rule*). Entries expire a
# little earlier, so the time between reading a row and answering stays inside it.
MAX_STALENESS = 1.0
ENTRY_TTL = 0.9
MAX_ENTRIES = 50_000
# Minted tokens awaiting their first use here (TokenCache): a second's worth and more.
MAX_MINTED = 2_048
SESSION_INFO_KEY = "sso_broker.caches"
_TOUCHED_KEY = "sso_broker.caches.touched"

# Writes to these tables can change what a cached principal or provider says. New sign-in
# sessions and users are inserts that no cached entry depends on, so only their updates and
# deletes count; a new provider may replace a cached "no such provider".
_ANY_WRITE = frozenset({"sso_providers"})
_UPDATE_OR_DELETE = frozenset({"users", "companies", "sign_in_sessions"})

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class ReadStamp:
    """When a read that may fill a cache began: the cache's generation then, and the time."""

    generation: int
    read_at: float


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
        read = self.stamp()
        value = await load()
        self.put(key, value, read)
        return value

    def stamp(self) -> ReadStamp:
        """Taken before a read whose result :meth:`put` may file."""
        return ReadStamp(self._generation, self._clock())

    def put(self, key: Hashable, value: V, read: ReadStamp) -> None:
        """Files what a read that began at ``read`` found, unless a local change committed
        since (the generation check), and only until ``read_at`` + :data:`ENTRY_TTL`."""
        if read.generation == self._generation:
            self._entries[key] = _Entry(value, read.read_at)


class _Fifo:
    """Packed claims by key, oldest first, each until its ``exp``: expired ones leave as new
    ones come, and the oldest live one when it is full. A key taken out (a minted token's
    first use) stays in the order until it reaches the front, so the order, not the entries,
    is what ``maxsize`` bounds."""

    __slots__ = ("entries", "maxsize", "order")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.entries: dict[bytes, bytes] = {}
        self.order: deque[bytes] = deque()  # keys, oldest first (a key taken out: skipped)

    def add(self, key: bytes, packed: bytes, now: float) -> None:
        entries, order = self.entries, self.order
        if key in entries:
            entries[key] = packed
            return
        while order:
            first = order[0]
            oldest = entries.get(first)
            if oldest is not None and len(order) < self.maxsize and packed_expires_at(oldest) > now:
                break
            order.popleft()
            if oldest is not None:
                del entries[first]
        order.append(key)
        entries[key] = packed


class TokenCache:
    """Session JWTs this process verified or minted, by their SHA-256, each until its own
    ``exp``.

    It holds every token used here within an access token's lifetime, up to
    :data:`MAX_ENTRIES`, so its entries are kept small: the 32-byte digest maps to the claims
    packed in 64 bytes (:meth:`SessionClaims.pack`), 260 B an entry where cachetools'
    ``TLRUCache`` of ``SessionClaims`` took 870 B (three ``UUID`` objects, the cache's heap
    item and three dictionaries): 13 MB of a worker when full instead of 43 MB (README,
    *Performance*). A hit is a dictionary lookup, and the packed ids are the key of the
    cached caller as they are (``PACKED_IDS``): no ``UUID`` is made again on ``/me``.

    A token minted here (:meth:`remember`) waits for its first use among the last
    :data:`MAX_MINTED` minted ones, and joins the verified ones when it comes: the frontend's
    first ``/me`` follows its token answer at once, while tokens never shown to this process
    (a refreshed access token left unused, or used on another replica) do not pile up: in the
    benchmark's refresh row (1,800 a second) they had taken 2.5 MB of a worker in seven
    seconds, and up to :data:`MAX_ENTRIES` of them would stay a whole access-token lifetime.

    Tokens arrive about in the order they expire, so the oldest go first (``TLRUCache``
    dropped the least recently used; either way a dropped token is only verified again).
    """

    def __init__(
        self,
        maxsize: int = MAX_ENTRIES,
        *,
        minted: int = MAX_MINTED,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._verified = _Fifo(maxsize)
        self._minted = _Fifo(minted)

    def __len__(self) -> int:
        return len(self._verified.entries) + len(self._minted.entries)

    @staticmethod
    def key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "replace")).digest()

    def get(self, key: bytes) -> bytes | None:
        """The token's packed claims, or None when it is not here or has expired (PyJWT's
        rule: at ``exp`` a token is expired)."""
        now = self._clock()
        packed = self._verified.entries.get(key)
        if packed is None:
            packed = self._minted.entries.pop(key, None)
            if packed is None or packed_expires_at(packed) <= now:
                return None
            self._verified.add(key, packed, now)  # its first use: kept as a verified one
            return packed
        return packed if packed_expires_at(packed) > now else None

    def put(self, key: bytes, claims: SessionClaims) -> bytes:
        """Files a token whose signature and claims this process checked; answers its claims
        packed, as :meth:`get` does."""
        packed = claims.pack()
        now = self._clock()
        if claims.expires_at > now:
            self._verified.add(key, packed, now)
        return packed

    def remember(self, key: bytes, claims: SessionClaims) -> bytes:
        """Files a token this process just minted, until its first use (see above); answers
        its claims packed."""
        packed = claims.pack()
        now = self._clock()
        if claims.expires_at > now:
            self._minted.add(key, packed, now)
        return packed


class Caches:
    """The process's caches; the lifespan makes one and the sessionmaker carries it."""

    def __init__(self) -> None:
        self.principals: StaleBoundedCache[Any] = StaleBoundedCache()
        self.providers: StaleBoundedCache[Any] = StaleBoundedCache()
        self.tokens = TokenCache()

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
