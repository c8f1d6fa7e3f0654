"""A login code is bound to the frontend's PKCE challenge from the initiate.

Codes made before this revision have none and are refused at the token endpoint: they live at
most 60 seconds, so an upgrade costs at most the sign-ins finishing in that minute.

Revision ID: b7c9d1e3f5a2
Revises: e5f7a9b1c3d4
Create Date: 2026-11-28 08:40:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b7c9d1e3f5a2"
down_revision: str | None = "e5f7a9b1c3d4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("login_codes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("code_challenge", sa.String(length=43), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("login_codes", schema=None) as batch_op:
        batch_op.drop_column("code_challenge")
