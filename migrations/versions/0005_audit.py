"""Audit log of administrative actions.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("at", sa.Float(precision=53), nullable=False),  # Unix s
        sa.Column("actor", sa.Text, nullable=False),  # token name, or "cli"
        sa.Column("actor_token_id", sa.BigInteger),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),  # token.create, zone.delete, ...
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),  # JSON object
    )


def downgrade() -> None:
    op.drop_table("audit_log")
