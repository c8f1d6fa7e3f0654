"""Sign-in: consumed login states, identity links, login codes, refresh tokens.

Revision ID: 9aa6f78ba0aa
Revises: 2af3c38bee06
Create Date: 2026-11-27 02:41:16.892674+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9aa6f78ba0aa"
down_revision: str | None = "2af3c38bee06"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "consumed_login_states",
        sa.Column("state_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("state_hash", name=op.f("pk_consumed_login_states")),
    )
    with op.batch_alter_table("consumed_login_states", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_consumed_login_states_expires_at"), ["expires_at"], unique=False
        )

    op.create_table(
        "identity_links",
        sa.Column("provider_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["provider_id"],
            ["sso_providers.id"],
            name=op.f("fk_identity_links_provider_id_sso_providers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_identity_links_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_links")),
        sa.UniqueConstraint(
            "provider_id",
            "tenant_id",
            "subject",
            name=op.f("uq_identity_links_provider_id_tenant_id_subject"),
        ),
        sa.UniqueConstraint(
            "provider_id", "user_id", name=op.f("uq_identity_links_provider_id_user_id")
        ),
    )
    with op.batch_alter_table("identity_links", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_identity_links_user_id"), ["user_id"], unique=False)

    op.create_table(
        "login_codes",
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sign_in_sessions.id"],
            name=op.f("fk_login_codes_session_id_sign_in_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("code_hash", name=op.f("pk_login_codes")),
    )
    with op.batch_alter_table("login_codes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_login_codes_session_id"), ["session_id"], unique=False)

    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sign_in_sessions.id"],
            name=op.f("fk_refresh_tokens_session_id_sign_in_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_refresh_tokens")),
    )
    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_refresh_tokens_session_id"), ["session_id"], unique=False
        )

    with op.batch_alter_table("sign_in_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idp_sid", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("login_hint", sa.String(length=1024), nullable=True))
        batch_op.create_index(
            "ix_sign_in_sessions_provider_idp_sid", ["provider_id", "idp_sid"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("sign_in_sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_sign_in_sessions_provider_idp_sid")
        batch_op.drop_column("login_hint")
        batch_op.drop_column("idp_sid")

    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_refresh_tokens_session_id"))

    op.drop_table("refresh_tokens")
    with op.batch_alter_table("login_codes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_login_codes_session_id"))

    op.drop_table("login_codes")
    with op.batch_alter_table("identity_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_identity_links_user_id"))

    op.drop_table("identity_links")
    with op.batch_alter_table("consumed_login_states", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consumed_login_states_expires_at"))

    op.drop_table("consumed_login_states")
