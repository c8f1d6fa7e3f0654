"""Indexes on the expiry of login codes and refresh tokens, for the housekeeping purge.

The purge deletes codes and tokens past their end by ``expires_at``. Without an index each
purge read the whole table inside its write transaction: on SQLite, whose one writer lock
every sign-in and token request also needs, 1.1 s at 2 million refresh tokens and 2.2-4.6 s
at 7 million, long enough for a token request to wait out the 5 s busy timeout and answer
503 (README, *Performance*). With the index a purge reads only what it deletes. Building
them takes a moment on a large refresh-token table: writes to it wait.

Revision ID: a57a200465e5
Revises: 98ff4229c528
Create Date: 2026-11-28 11:30:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "a57a200465e5"
down_revision: str | None = "98ff4229c528"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_login_codes_expires_at", "login_codes", ["expires_at"])
    op.create_index("ix_refresh_tokens_expires_at", "refresh_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_refresh_tokens_expires_at", table_name="refresh_tokens")
    op.drop_index("ix_login_codes_expires_at", table_name="login_codes")
