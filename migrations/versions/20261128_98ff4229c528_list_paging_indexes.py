"""Indexes for the paged lists: a provider's users by email, a company's providers by creation.

A company's users page by email on the existing unique (company_id, email_normalized) index.
Filtered by provider they need (sso_provider_id, email_normalized), which replaces the
index on sso_provider_id alone (its prefix, still serving the provider's deletion); the
providers list needs (company_id, created_at, id), which likewise replaces the index on
company_id alone. Building them takes a moment on a large users table: writes to it wait.

Revision ID: 98ff4229c528
Revises: c3d5e7f9a1b4
Create Date: 2026-11-28 10:00:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "98ff4229c528"
down_revision: str | None = "c3d5e7f9a1b4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_users_provider_email", "users", ["sso_provider_id", "email_normalized"])
    op.drop_index("ix_users_sso_provider_id", table_name="users")
    op.create_index(
        "ix_sso_providers_company_created", "sso_providers", ["company_id", "created_at", "id"]
    )
    op.drop_index("ix_sso_providers_company_id", table_name="sso_providers")


def downgrade() -> None:
    op.create_index("ix_sso_providers_company_id", "sso_providers", ["company_id"])
    op.drop_index("ix_sso_providers_company_created", table_name="sso_providers")
    op.create_index("ix_users_sso_provider_id", "users", ["sso_provider_id"])
    op.drop_index("ix_users_provider_email", table_name="users")
