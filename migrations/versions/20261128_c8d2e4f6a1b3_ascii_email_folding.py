"""Emails compare in ASCII case folding only: recompute email_normalized where an email holds
anything but ASCII (str.lower() had folded, say, U+212A KELVIN SIGN into "k").

ASCII-only folding equates fewer addresses than str.lower() did, so no two rows can collide
afterwards that did not before.

Revision ID: c8d2e4f6a1b3
Revises: a41c6e9d2b07
Create Date: 2026-11-28 07:00:00.000000+00:00
"""

import string
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c8d2e4f6a1b3"
down_revision: str | None = "a41c6e9d2b07"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        non_ascii = "email ~ '[^[:ascii:]]'"
    else:
        non_ascii = "email GLOB '*[^ -~]*'"  # anything outside printable ASCII
    users = sa.table(
        "users",
        sa.column("id", sa.Uuid()),
        sa.column("email", sa.String()),
        sa.column("email_normalized", sa.String()),
    )
    rows = bind.execute(sa.select(users.c.id, users.c.email).where(sa.text(non_ascii))).all()
    for user_id, email in rows:
        bind.execute(
            users.update()
            .where(users.c.id == user_id)
            .values(email_normalized=email.strip().translate(_ASCII_LOWER))
        )


def downgrade() -> None:
    # The old folding cannot be reproduced in SQL on both databases; ASCII-only folding is
    # also valid for the old code (it only ever compared normalized values).
    pass
