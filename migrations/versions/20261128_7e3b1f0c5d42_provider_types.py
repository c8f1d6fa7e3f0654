"""Provider types beyond Entra: identities keyed by (namespace, subject), Entra tenants stored
in lower case.

An Entra link's (tenant_id, subject) becomes (namespace, subject) with the same values, so
every existing link keeps working; other types store (iss, sub), both up to 255 characters.

Revision ID: 7e3b1f0c5d42
Revises: d5a0b3e81f22
Create Date: 2026-11-28 06:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7e3b1f0c5d42"
down_revision: str | None = "d5a0b3e81f22"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("identity_links", schema=None) as batch_op:
        batch_op.drop_constraint("uq_identity_links_provider_id_tenant_id_subject", type_="unique")
        batch_op.alter_column(
            "tenant_id",
            new_column_name="namespace",
            existing_type=sa.String(length=64),
            type_=sa.String(length=255),
            existing_nullable=False,
        )
        batch_op.alter_column(
            "subject",
            existing_type=sa.String(length=64),
            type_=sa.String(length=255),
            existing_nullable=False,
        )
    # A batch of its own: on SQLite a constraint made in the batch that renames its column is
    # lost when the table is copied.
    with op.batch_alter_table("identity_links", schema=None) as batch_op:
        batch_op.create_unique_constraint(
            batch_op.f("uq_identity_links_provider_id_namespace_subject"),
            ["provider_id", "namespace", "subject"],
        )
    # A pasted tenant is stored as Entra names it: GUIDs (and domains) in lower case.
    op.execute("UPDATE sso_providers SET base_url = lower(base_url) WHERE type = 'entra'")


def downgrade() -> None:
    others = op.get_bind().scalar(
        sa.text("SELECT count(*) FROM sso_providers WHERE type <> 'entra'")
    )
    if others:
        # The old code knows Entra only, and its columns cannot hold an issuer: delete those
        # providers first (DELETE /api/v1/sso-providers/{id}) rather than lose them silently.
        raise RuntimeError(
            f"{others} provider(s) of a type other than entra exist; delete them before "
            "downgrading below provider types"
        )
    with op.batch_alter_table("identity_links", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("uq_identity_links_provider_id_namespace_subject"), type_="unique"
        )
        batch_op.alter_column(
            "subject",
            existing_type=sa.String(length=255),
            type_=sa.String(length=64),
            existing_nullable=False,
        )
        batch_op.alter_column(
            "namespace",
            new_column_name="tenant_id",
            existing_type=sa.String(length=255),
            type_=sa.String(length=64),
            existing_nullable=False,
        )
    with op.batch_alter_table("identity_links", schema=None) as batch_op:
        batch_op.create_unique_constraint(
            "uq_identity_links_provider_id_tenant_id_subject",
            ["provider_id", "tenant_id", "subject"],
        )
