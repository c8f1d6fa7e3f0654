"""The hot paths' statements on the embedded SQLite: plain SQL, never waiting on the loop.

Through SQLAlchemy's async layer on aiosqlite, a one-row write transaction cost 470 µs of
CPU: every call (BEGIN, execute, fetch, COMMIT) hops to aiosqlite's thread and back, inside a
greenlet. The same transaction on the standard library's ``sqlite3``, sent as one call to a
thread of our own, costs 45 µs (README, *Performance*). So each hot operation here — read the
provider, read the caller, consume a state, resolve and write a sign-in, spend a code or a
refresh token — is one function of a connection, run as below, with statements written out
in SQLite's SQL and values stored the way SQLAlchemy stores them (UUIDs as 32 hex digits,
times as UTC text with microseconds, JSON as text), so the ORM reads them back unchanged.
PostgreSQL runs the same operations through asyncpg (``fastpath.py``); both answer the same
types, and the whole test suite runs on both databases.

**Run where they need not wait.** A hot operation first runs on the event loop's own thread,
on a connection whose busy timeout is zero: a statement that would wait for a lock fails at
once instead (``SQLITE_BUSY``), is rolled back, and goes to a thread (a *lane*) that waits
for it. Uncontended, which is nearly always the case in one process, a read or a one-row
write transaction is tens of microseconds of CPU; handed to a thread, each cost a wake-up,
a hand-back and the GIL passed to and fro around every statement: a sign-in took 2.8 ms of
CPU that way and 1.8 ms inline, and its p99 fell from 42 to 28 ms (README, *Performance*).
What stays off the loop is any wait: for another connection's or process's lock, and for
checkpoints, the one step that syncs the disk (the inline connection never checkpoints; the
reader lane does, every :data:`CHECKPOINT_EVERY` inline writes, and SQLite's automatic
checkpoints run on the other connections). In WAL mode with ``synchronous=NORMAL`` a commit
appends to the log without a sync.

The writes that must wait queue on one thread, the writer lane: its single worker thread is
the process's queue of hot-path writes, first come, first served, each a short transaction
begun IMMEDIATE and committed at once. (A write that finds the lock free goes inline even
while others wait on the lane: those wait for another connection's lock, and an inline write
holds it for tens of microseconds, never across a turn of the loop.) They do not wait at the
ORM's write gate (``database.WriteGate``): held across a hop to the thread and back, the
gate let one write in per turn of the event loop, and under ten browsers a write waited
23 ms for it at the median and 110-190 ms at p99 while its transaction took 0.1-0.3 ms
(README, *Performance*).
The ORM's few writes (the admin API, a failed sign-in's audit event, housekeeping) meet the
lane at SQLite's lock; so do other processes, whose lock and busy timeout are waited out on
the writing thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import JSON, Boolean, Uuid
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from sso_broker.database import UTCDateTime, sqlite_on_connect, table_of
from sso_broker.hotpath import LinkConflict, NoLongerServed, Spent
from sso_broker.providers.models import SSOProvider
from sso_broker.sessions.repository import SessionUser
from sso_broker.sso.repository import Account, NewSignIn, Resolution, SignInDraft

if TYPE_CHECKING:
    from sso_broker.sessions.service import Principal

T = TypeVar("T")
logger = logging.getLogger(__name__)

# Inline write transactions between two checkpoints (run on the reader lane): each appends a
# few pages to the log, so about SQLite's own automatic checkpoint of 1000 pages.
CHECKPOINT_EVERY = 100


def _is_busy(error: sqlite3.OperationalError) -> bool:
    """The statement would have waited for a lock (any of SQLITE_BUSY's extended codes)."""
    return (getattr(error, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY


# --- values as SQLAlchemy stores them on SQLite ---------------------------------------------


def _db_uuid(value: uuid.UUID | None) -> str | None:
    return None if value is None else value.hex


def _db_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # as database.UTCDateTime: a naive time is a bug, never stored
        raise ValueError("naive datetimes are not stored; attach a timezone")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _id(value: str) -> uuid.UUID:
    return uuid.UUID(hex=value)


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def _uuid(value: str | None) -> uuid.UUID | None:
    return None if value is None else _id(value)


def _time(value: str | None) -> datetime | None:
    return None if value is None else _at(value)


def _bool(value: int | None) -> bool | None:
    return None if value is None else bool(value)


def _json(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _as_is(value: Any) -> Any:
    return value


def _reader(column_type: Any) -> Callable[[Any], Any]:
    if isinstance(column_type, Uuid):
        return _uuid
    if isinstance(column_type, UTCDateTime):
        return _time
    if isinstance(column_type, Boolean):
        return _bool
    if isinstance(column_type, JSON):
        return _json
    return _as_is


# The provider row, whatever columns the model has: read with the model's own column list.
_PROVIDER_COLUMNS = tuple(table_of(SSOProvider).c)
_PROVIDER_READERS = tuple((column.key, _reader(column.type)) for column in _PROVIDER_COLUMNS)
_PROVIDER = (
    f"SELECT {', '.join(column.name for column in _PROVIDER_COLUMNS)}"  # noqa: S608 - constant
    " FROM sso_providers WHERE id = ?"
)
# A session with its user and company: behind the code or refresh token a grant spends (by
# the session alone), or the caller behind a token (_PRINCIPAL: all three ids must match).
_SESSION_PRINCIPAL = """
SELECT u.id, u.company_id, u.email, u.email_normalized, u.name, u.role, u.sso_provider_id,
       u.created_at, u.updated_at,
       s.id, s.provider_id, s.idp_sid, s.login_hint, s.created_at, s.expires_at, s.revoked_at,
       c.name, c.created_at, c.updated_at
FROM sign_in_sessions s
JOIN users u ON u.id = s.user_id
JOIN companies c ON c.id = u.company_id
WHERE s.id = ?"""
_PRINCIPAL = _SESSION_PRINCIPAL + " AND u.id = ? AND u.company_id = ?"
# _PRINCIPAL's columns as Python values, for Principal.from_row.
_PRINCIPAL_READERS = (
    _id, _id, _as_is, _as_is, _as_is, _as_is, _uuid, _at, _at,  # the user
    _id, _uuid, _as_is, _as_is, _at, _at, _time,  # the session
    _as_is, _at, _at,  # the company
)  # fmt: skip
_CONSUME = "INSERT INTO consumed_login_states (state_hash, expires_at) VALUES (?, ?)"
_RESOLVE = """
SELECT p.enabled, p.last_error,
       l.id, l.company_id, l.email, l.name, l.role, l.sso_provider_id,
       c.id, c.company_id, c.email, c.name, c.role, c.sso_provider_id,
       p.company_id
FROM sso_providers p
LEFT JOIN identity_links k ON k.provider_id = p.id AND k.namespace = ? AND k.subject = ?
LEFT JOIN users l ON l.id = k.user_id
LEFT JOIN users c
  ON c.company_id = p.company_id AND c.email_normalized = ? AND c.sso_provider_id = p.id
WHERE p.id = ?
"""
# _RESOLVE's columns but the last (the provider's company) with their ids as UUIDs, for
# Resolution.from_row.
_RESOLVE_READERS = (_as_is, _as_is) + (_uuid, _uuid, _as_is, _as_is, _as_is, _uuid) * 2
_INSERT_LINK = (
    "INSERT INTO identity_links (id, provider_id, namespace, subject, user_id, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_SESSION = (
    "INSERT INTO sign_in_sessions"
    " (id, user_id, company_id, provider_id, idp_sid, login_hint, created_at, expires_at,"
    " id_token_encrypted)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_LINK_EVENT = (
    "INSERT INTO audit_events"
    " (id, company_id, type, created_at, provider_id, user_id, idp_subject)"
    " VALUES (?, ?, 'identity.linked', ?, ?, ?, ?)"
)
_INSERT_CODE = (
    "INSERT INTO login_codes (code_hash, session_id, expires_at, code_challenge)"
    " VALUES (?, ?, ?, ?)"
)
_INSERT_AUDIT = (
    "INSERT INTO audit_events"
    " (id, company_id, type, created_at, provider_id, user_id, session_id, idp_subject)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_CLEAR_LAST_ERROR = "UPDATE sso_providers SET last_error = NULL WHERE id = ?"
# Whether provider ? is enabled and account ? still of its company (?) and associated with
# it, in the transaction that writes a first sign-in (fastpath.py's _GUARDED).
_STILL_SERVED = (
    "SELECT p.enabled, EXISTS (SELECT 1 FROM users u WHERE u.id = ?"
    " AND u.company_id = p.company_id AND u.sso_provider_id = p.id AND p.company_id = ?)"
    " FROM sso_providers p WHERE p.id = ?"
)
_SPEND_CODE = (
    "DELETE FROM login_codes WHERE code_hash = ?"
    " RETURNING session_id, expires_at, coalesce(code_challenge = ?, 0)"
)
_USE_REFRESH = (
    "UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL"
    " RETURNING session_id, expires_at, 1"
)
_REUSED = "SELECT session_id FROM refresh_tokens WHERE token_hash = ?"
_ROTATED_WITHIN = (
    "SELECT p.expires_at, p.session_id FROM refresh_tokens p"
    " JOIN refresh_tokens n"
    " ON n.token_hash = ? AND n.session_id = p.session_id AND n.used_at IS NULL"
    " WHERE p.token_hash = ? AND p.used_at >= ?"
)
_COUNT_HIT = (
    "INSERT INTO rate_limit_counters (key, count, expires_at) VALUES (?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET count = count + excluded.count RETURNING key, count"
)
_PURGE_COUNTERS = "DELETE FROM rate_limit_counters WHERE expires_at < ?"
_ADD_REFRESH = (
    "INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at)"
    " VALUES (?, ?, ?, ?)"
)


def _one(connection: sqlite3.Connection, query: str, args: Sequence[Any]) -> Any:
    # fetchall, not fetchone: the statement is finished at once, so no read transaction is
    # left open to hold back the WAL checkpoint.
    rows = connection.execute(query, args).fetchall()
    return rows[0] if rows else None


def _principal(row: Sequence[Any] | None) -> Principal | None:
    """A row of _PRINCIPAL's columns as a Principal."""
    from sso_broker.sessions.service import Principal

    if row is None:
        return None
    return Principal.from_row(
        [read(value) for read, value in zip(_PRINCIPAL_READERS, row, strict=True)]
    )


def _session_principal(connection: sqlite3.Connection, session_id: str) -> Principal | None:
    """A session with its user and company, as the principal query reads them."""
    return _principal(_one(connection, _SESSION_PRINCIPAL, (session_id,)))


def _grant(
    connection: sqlite3.Connection,
    spend: str,
    args: Sequence[Any],
    refresh_hash: str,
    now: datetime,
) -> Spent | None:
    """Spends a code or refresh token and, when the grant is good at ``now``, stores the next
    refresh token (``fastpath.HotPath``): on the hot paths' thread, in one transaction."""
    spent = _one(connection, spend, args)
    if spent is None:
        return None
    session_id, expires_at, bound = spent
    principal = _session_principal(connection, session_id)
    spent_expires = _at(expires_at)
    if (
        bound
        and principal is not None
        and spent_expires > now
        and principal.session.revoked_at is None
        and principal.session.expires_at > now
    ):
        expires = _db_time(principal.session.expires_at)
        connection.execute(_ADD_REFRESH, (refresh_hash, session_id, _db_time(now), expires))
    return Spent(spent_expires, principal, bool(bound))


def _in_transaction(connection: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """``work`` in a write transaction, begun IMMEDIATE: a transaction that reads first and
    writes later could otherwise meet another writer and fail at once, busy timeout or not."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        result = work(connection)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return result


def _write_session(connection: sqlite3.Connection, new: SignInDraft, account: Account) -> None:
    """A sign-in's session, its login code and its audit event."""
    session_id, user_id, company_id = new.session_id.hex, account.id.hex, account.company_id.hex
    provider_id, at = new.provider_id.hex, _db_time(new.now)
    connection.execute(
        _INSERT_SESSION,
        (session_id, user_id, company_id, provider_id, new.idp_sid, new.login_hint,
         at, _db_time(new.expires_at), new.id_token_encrypted),
    )  # fmt: skip
    connection.execute(
        _INSERT_CODE,
        (new.code_hash, session_id, _db_time(new.code_expires_at), new.code_challenge),
    )
    connection.execute(
        _INSERT_AUDIT,
        (new.audit_event_id.hex, company_id, new.event_type, at, provider_id, user_id,
         session_id, new.subject[:64]),
    )  # fmt: skip


class _Lane:
    """One thread and the one connection only it uses."""

    def __init__(self, path: str, timeout: float, name: str) -> None:
        self._path = path
        self._timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._connection: sqlite3.Connection | None = None
        self._trace: Callable[[str], None] | None = None
        self.busy = 0  # calls queued or running on the lane's thread

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        self.busy += 1
        try:
            return await loop.run_in_executor(self._executor, self._call, work)
        finally:
            self.busy -= 1

    async def open_another(self) -> sqlite3.Connection:
        """A connection configured as the lane's, opened on the lane's thread (opening may
        wait for a lock), for the caller to keep."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.connect)

    def trace(self, callback: Callable[[str], None] | None) -> None:
        # On the lane's own thread: the connection may be busy there (the tests' only use).
        self._executor.submit(self._set_trace, callback).result()

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=False)

    # --- on the lane's thread ------------------------------------------------------------

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return work(self._open())

    def connect(self) -> sqlite3.Connection:
        """A new connection to the lane's database, configured as the lane's own are."""
        # Autocommit (isolation_level=None): transactions are begun here, explicitly.
        connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        sqlite_on_connect(connection, None)
        # The configured wait for another process's write lock (SSO_BROKER_DATABASE_TIMEOUT).
        connection.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
        connection.set_trace_callback(self._trace)
        return connection

    def _open(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = self.connect()
        return self._connection

    def _set_trace(self, callback: Callable[[str], None] | None) -> None:
        self._trace = callback
        if self._connection is not None:
            self._connection.set_trace_callback(callback)

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class SQLiteFastPath:
    """The hot operations on threads of their own (see the module docstring): one for the
    reads and one for the writes, so a read never waits behind a write (WAL lets readers go
    on while another connection writes), even one waiting for another process's lock."""

    def __init__(self, engine: AsyncEngine, *, timeout: float) -> None:
        database = make_url(str(engine.url)).database
        if not database or database == ":memory:":
            raise ValueError("the SQLite hot path needs a database file")
        self._reader = _Lane(database, timeout, "sso-broker-sqlite-read")
        self._writer = _Lane(database, timeout, "sso-broker-sqlite-write")
        self._inline: sqlite3.Connection | None = None
        self._opening: asyncio.Lock | None = None
        self._trace: Callable[[str], None] | None = None
        self._inline_writes = 0
        self._checkpoint: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def connect(cls, engine: AsyncEngine, *, lock_timeout: float) -> SQLiteFastPath:
        """A hot path with its event-loop connection open, so no request waits for that;
        ``lock_timeout`` is the lanes' wait for a lock (the constructor's ``timeout``)."""
        fast = cls(engine, timeout=lock_timeout)
        await fast._open_inline()
        return fast

    def trace(self, callback: Callable[[str], None] | None) -> None:
        """Calls ``callback`` with every statement sent from now on (the tests count them)."""
        self._reader.trace(callback)
        self._writer.trace(callback)
        self._trace = callback
        if self._inline is not None:
            self._inline.set_trace_callback(callback)

    def connections_in_use(self) -> int:
        return min(self._reader.busy, 1) + min(self._writer.busy, 1)

    async def close(self) -> None:
        self._closed = True
        if self._checkpoint is not None:
            await asyncio.gather(self._checkpoint, return_exceptions=True)
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        await self._reader.close()
        await self._writer.close()

    def _check_open(self) -> None:
        if self._closed:
            # An outage for the caller (503), as any other database that went away.
            raise ConnectionError("the embedded database's hot paths are closed")

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        self._check_open()
        inline = self._inline or await self._open_inline()
        try:
            return work(inline)  # WAL: a read waits for no writer; if it would, it fails
        except sqlite3.OperationalError as e:
            if not _is_busy(e):
                raise
        return await self._reader.run(work)

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        # Inline when the lock is free at once; else onto the lane, whose one thread takes the
        # writes in the order they came (see the module docstring): no gate, so a write never
        # waits for the event loop to hand the turn on, only for the writes ahead of it.
        self._check_open()
        inline = self._inline or await self._open_inline()
        try:
            result = _in_transaction(inline, work)  # rolled back if it would have waited
        except sqlite3.OperationalError as e:
            if not _is_busy(e):
                raise
            return await self._writer.run(lambda connection: _in_transaction(connection, work))
        self._inline_writes += 1
        if self._inline_writes % CHECKPOINT_EVERY == 0:
            self._start_checkpoint()
        return result

    async def _open_inline(self) -> sqlite3.Connection:
        """The event loop's connection, opened on the writer lane (opening may wait for a
        lock), then told never to wait and never to checkpoint."""
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._inline is None:
                connection = await self._writer.open_another()
                connection.execute("PRAGMA busy_timeout=0")
                connection.execute("PRAGMA wal_autocheckpoint=0")
                connection.set_trace_callback(self._trace)
                self._inline = connection
            self._check_open()
            return self._inline

    def _start_checkpoint(self) -> None:
        """Copies the log's pages into the database on the reader lane (PASSIVE: it waits
        for no reader or writer, and takes no write lock; the writer lane stays free for the
        writes that wait), one at a time, so the log does not grow without end."""
        if self._checkpoint is None or self._checkpoint.done():
            self._checkpoint = asyncio.create_task(self._checkpoint_now())

    async def _checkpoint_now(self) -> None:
        try:
            await self._reader.run(
                lambda connection: connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            )
        except sqlite3.Error:  # busy or closing: the next one, or SQLite's own, catches up
            logger.debug("checkpoint skipped", exc_info=True)

    # --- the operations (the same as fastpath.FastPath's) ------------------------------

    async def provider(self, provider_id: uuid.UUID) -> SSOProvider | None:
        row = await self._read(lambda c: _one(c, _PROVIDER, (provider_id.hex,)))
        if row is None:
            return None
        return SSOProvider(
            **{key: read(value) for (key, read), value in zip(_PROVIDER_READERS, row, strict=True)}
        )

    async def principal(
        self, session_id: uuid.UUID, user_id: uuid.UUID, company_id: uuid.UUID
    ) -> Principal | None:
        args = (session_id.hex, user_id.hex, company_id.hex)
        return _principal(await self._read(lambda c: _one(c, _PRINCIPAL, args)))

    async def consume_state(self, state_hash: str, expires_at: datetime) -> bool:
        """Records a login state as used; False when it was used before."""
        args = (state_hash, _db_time(expires_at))
        try:
            await self._write(lambda c: c.execute(_CONSUME, args))
        except sqlite3.IntegrityError:
            return False
        return True

    async def sign_in(
        self, draft: SignInDraft, email: str | None
    ) -> tuple[Resolution | None, bool]:
        args = (draft.namespace, draft.subject, email, draft.provider_id.hex)

        def work(connection: sqlite3.Connection) -> tuple[Resolution | None, bool]:
            row = _one(connection, _RESOLVE, args)
            if row is None:
                return None, False
            found = Resolution.from_row(
                [read(value) for read, value in zip(_RESOLVE_READERS, row[:14], strict=True)]
            )
            linked, provider_company = found.linked, _id(row[14])
            if not (
                found.enabled
                and linked is not None
                and linked.company_id == provider_company
                and linked.sso_provider_id == draft.provider_id
            ):
                return found, False
            _write_session(connection, draft, linked)
            if found.last_error is not None:
                connection.execute(_CLEAR_LAST_ERROR, (args[3],))
            return found, True

        return await self._write(work)

    async def write_sign_in(self, new: NewSignIn, *, clear_last_error: bool) -> None:
        """Writes the sign-in's rows in one transaction; LinkConflict (nothing written) when
        ``new.link`` meets an identity or account that is already linked."""
        user_id, company_id = new.account.id.hex, new.account.company_id.hex
        provider_id, at = new.provider_id.hex, _db_time(new.now)

        def work(connection: sqlite3.Connection) -> None:
            served = _one(connection, _STILL_SERVED, (user_id, company_id, provider_id))
            if served is None or not served[0] or not served[1]:
                raise NoLongerServed(provider_enabled=bool(served and served[0]))
            if new.link:
                connection.execute(
                    _INSERT_LINK,
                    (uuid.uuid4().hex, provider_id, new.namespace, new.subject, user_id, at),
                )
                connection.execute(
                    _INSERT_LINK_EVENT,
                    (uuid.uuid4().hex, company_id, at, provider_id, user_id, new.subject[:64]),
                )
            _write_session(connection, new, new.account)
            if clear_last_error:
                connection.execute(_CLEAR_LAST_ERROR, (provider_id,))

        try:
            await self._write(work)
        except sqlite3.IntegrityError as e:
            if new.link and "identity_links" in str(e):
                raise LinkConflict(str(e)) from e
            raise

    async def spend_login_code(
        self, code_hash: str, *, code_challenge: str, refresh_hash: str, now: datetime
    ) -> Spent | None:
        args = (code_hash, code_challenge)
        return await self._write(lambda c: _grant(c, _SPEND_CODE, args, refresh_hash, now))

    async def use_refresh_token(
        self, token_hash: str, *, refresh_hash: str, now: datetime
    ) -> Spent | None:
        args = (_db_time(now), token_hash)
        return await self._write(lambda c: _grant(c, _USE_REFRESH, args, refresh_hash, now))

    async def reused_session(self, token_hash: str) -> uuid.UUID | None:
        row = await self._read(lambda c: _one(c, _REUSED, (token_hash,)))
        return None if row is None else _uuid(row[0])

    async def rotated_within(
        self, token_hash: str, successor_hash: str, *, since: datetime
    ) -> tuple[datetime, SessionUser | None] | None:
        args = (successor_hash, token_hash, _db_time(since))

        def work(connection: sqlite3.Connection) -> tuple[datetime, SessionUser | None] | None:
            row = _one(connection, _ROTATED_WITHIN, args)
            if row is None:
                return None
            principal = _session_principal(connection, row[1])
            return _at(row[0]), None if principal is None else SessionUser.of(
                principal.user, principal.session
            )

        return await self._read(work)

    async def count_hits(
        self, increments: dict[str, int], expires_at: datetime, *, purge_before: datetime | None
    ) -> dict[str, int]:
        expires = _db_time(expires_at)
        rows = [(key, count, expires) for key, count in sorted(increments.items())]

        def work(connection: sqlite3.Connection) -> dict[str, int]:
            totals = {}
            for row in rows:
                key, total = _one(connection, _COUNT_HIT, row)
                totals[str(key)] = int(total)
            if purge_before is not None:
                connection.execute(_PURGE_COUNTERS, (_db_time(purge_before),))
            return totals

        return await self._write(work)
