"""An Entra domain provider is pinned to the tenant of its first successful sign-in.

Revision ID: e5f7a9b1c3d4
Revises: c8d2e4f6a1b3
Create Date: 2026-11-28 07:20:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e5f7a9b1c3d4"
down_revision: str | None = "c8d2e4f6a1b3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sso_providers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pinned_tenant", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sso_providers", schema=None) as batch_op:
        batch_op.drop_column("pinned_tenant")
