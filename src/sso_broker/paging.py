"""Keyset paging for every list of the admin API: one cursor format, one limit, one cut.

A page answers ``{"items": [...], "next_cursor": str | null}`` (``schemas.Page``). The next
page starts strictly after the last row's sort key, so rows inserted meanwhile never shift
a page (no duplicates, no gaps), and the database reads one index range, however deep.

The cursor is opaque to clients: URL-safe base64 of a JSON array naming the list it belongs
to and holding the last row's sort key. It is not signed: a made-up cursor only moves where
the caller's own, company-scoped list resumes, which the caller could ask for anyway. One
the service did not make (garbage, too long, another list's) answers ``422
validation_error``, saying to start again without it.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Generic, TypeVar

from fastapi import Query

from sso_broker.errors import InvalidInput

LIMIT_DEFAULT = 50
LIMIT_MAX = 200
# Room for the longest key: a 254-character email of 4-byte characters, base64-encoded.
CURSOR_MAX = 1600

Limit = Annotated[
    int,
    Query(ge=1, le=LIMIT_MAX, description=f"How many items a page holds, 1 to {LIMIT_MAX}."),
]
"""The ``limit`` query parameter; give it the default ``LIMIT_DEFAULT``."""

Cursor = Annotated[
    str | None,
    Query(
        description="The `next_cursor` of the previous page, unchanged; leave it out for the "
        "first page.",
        # Checked by ``Keyset.after``, whose answer says what to do instead of only
        # "too long".
        json_schema_extra={"maxLength": CURSOR_MAX},
    ),
]
"""The ``cursor`` query parameter."""

Key = TypeVar("Key")
Row = TypeVar("Row")


def _refused(list_name: str) -> InvalidInput:
    return InvalidInput(
        f"cursor is not one GET /api/v1/{list_name} gave out: pass the next_cursor of its "
        "previous page unchanged, or start again from the first page without a cursor."
    )


@dataclass(frozen=True)
class Keyset(Generic[Key]):
    """The cursors of one list: its name (its path under /api/v1/), and how a row's sort key
    is written and read back (``load`` raises ``ValueError`` for a key it cannot read)."""

    list_name: str
    dump: Callable[[Key], list[str]]
    load: Callable[[list[str]], Key]

    def cursor(self, key: Key) -> str:
        payload = json.dumps([self.list_name, *self.dump(key)], ensure_ascii=False)
        return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")

    def after(self, cursor: str | None) -> Key | None:
        """The sort key a page starts after, or None for the first page; 422 for a cursor
        this list did not give out."""
        if cursor is None:
            return None
        if len(cursor) > CURSOR_MAX:
            raise _refused(self.list_name)
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            parts = json.loads(raw.decode())
            if not (isinstance(parts, list) and all(isinstance(p, str) for p in parts)):
                raise ValueError("not a list of strings")
            if not parts or parts[0] != self.list_name:
                raise ValueError("another list's cursor")
            return self.load(parts[1:])
        # RecursionError: JSON nested a thousand deep.
        except (binascii.Error, ValueError, TypeError, RecursionError, OverflowError) as e:
            raise _refused(self.list_name) from e

    def page(
        self, rows: Sequence[Row], limit: int, key: Callable[[Row], Key]
    ) -> tuple[Sequence[Row], str | None]:
        """Cuts ``limit + 1`` fetched rows into a page and the cursor of the next one (None
        when this is the last): the extra row only says that another page follows."""
        page = rows[:limit]
        more = len(rows) > limit and len(page) > 0
        return page, self.cursor(key(page[-1])) if more else None


def time_and_id(key: tuple[datetime, uuid.UUID]) -> list[str]:
    at, row_id = key
    return [at.isoformat(), str(row_id)]


def read_time_and_id(parts: list[str]) -> tuple[datetime, uuid.UUID]:
    at_text, id_text = parts  # ValueError unless exactly two
    at = datetime.fromisoformat(at_text)
    if at.tzinfo is None:  # we only give out aware ones; a naive one cannot be compared
        raise ValueError("naive time")
    # In UTC now, as stored: a time whose UTC falls outside the calendar (year 1 at +14:00)
    # would otherwise overflow at the query, a 500 (OverflowError, caught as malformed).
    return at.astimezone(UTC), uuid.UUID(id_text)


def text(key: str) -> list[str]:
    return [key]


def read_text(parts: list[str]) -> str:
    (value,) = parts  # ValueError unless exactly one
    # Keys we give out are stored text: never NUL (PostgreSQL refuses it: a 500, not a 422)
    # nor a lone surrogate (not UTF-8; JSON can still spell one).
    if "\x00" in value:
        raise ValueError("NUL in a key")
    value.encode()  # UnicodeEncodeError, a ValueError, for a lone surrogate
    return value
