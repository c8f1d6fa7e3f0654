"""Certificate credentials: a provider's key pairs and certificates, and which credential
sign-ins use.

Revision ID: c3d5e7f9a1b4
Revises: b7c9d1e3f5a2
Create Date: 2026-11-28 09:40:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c3d5e7f9a1b4"
down_revision: str | None = "b7c9d1e3f5a2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sso_providers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "client_auth_method",
                sa.String(length=32),
                nullable=False,
                server_default="client_secret",
            )
        )
    op.create_table(
        "provider_certificates",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("provider_id", sa.Uuid(), nullable=False),
        sa.Column("thumbprint_sha256", sa.String(length=64), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=False),
        sa.Column("private_key_encrypted", sa.Text(), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["provider_id"], ["sso_providers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_provider_certificates_provider_id", "provider_certificates", ["provider_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_provider_certificates_provider_id", table_name="provider_certificates")
    op.drop_table("provider_certificates")
    with op.batch_alter_table("sso_providers", schema=None) as batch_op:
        batch_op.drop_column("client_auth_method")
