"""Sessions keep the ID token, encrypted, where the provider's sign-out wants it back
(id_token_hint: Okta, PingOne, plain OpenID Providers).

Revision ID: a41c6e9d2b07
Revises: 7e3b1f0c5d42
Create Date: 2026-11-28 06:40:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a41c6e9d2b07"
down_revision: str | None = "7e3b1f0c5d42"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sign_in_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("id_token_encrypted", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sign_in_sessions", schema=None) as batch_op:
        batch_op.drop_column("id_token_encrypted")
