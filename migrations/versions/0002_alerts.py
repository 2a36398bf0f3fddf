"""Alerts: current alert state, the event log (also the outbox), webhook subscriptions, cursors.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    f8 = sa.Float(precision=53)
    op.create_table(
        "alerts",
        sa.Column("alert_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("uav", sa.Text, nullable=False),
        sa.Column("ref", sa.Text, nullable=False),  # zone, other_uav or clearance ('' if none)
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("severity", sa.Text, nullable=False),
        sa.Column("opened_at", f8, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("body", sa.Text, nullable=False),  # the alert's last event, JSON
    )
    op.create_index(
        "alerts_one_open", "alerts", ["type", "uav", "ref"], unique=True,
        postgresql_where=sa.text("state <> 'resolved'"),
    )
    op.create_table(
        "alert_events",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("alert_id", sa.BigInteger, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("severity", sa.Text, nullable=False),
        sa.Column("uav", sa.Text, nullable=False),
        sa.Column("other_uav", sa.Text),
        sa.Column("t", f8, nullable=False),
        sa.Column("raised_at", f8, nullable=False),
        sa.Column("lat", f8, nullable=False),
        sa.Column("lon", f8, nullable=False),
        sa.Column("body", sa.Text, nullable=False),  # the event as sent, JSON
    )
    op.create_index("alert_events_type", "alert_events", ["type", "seq"])
    op.create_index("alert_events_uav", "alert_events", ["uav", "seq"])
    op.create_index(
        "alert_events_other_uav", "alert_events", ["other_uav", "seq"],
        postgresql_where=sa.text("other_uav IS NOT NULL"),
    )
    op.create_index("alert_events_alert", "alert_events", ["alert_id"])
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text, unique=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("types", sa.Text, nullable=False, server_default="[]"),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("created_at", f8, nullable=False),
        sa.Column("delivered_seq", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", f8),
        sa.Column("state", sa.Text, nullable=False, server_default="active"),
        sa.Column("last_error", sa.Text),
        sa.Column("active_since", f8, nullable=False),
        sa.Column("delivered_at", f8),
    )
    op.create_table(
        "dispatch_cursors",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dispatch_cursors")
    op.drop_table("subscriptions")
    op.drop_table("alert_events")
    op.drop_table("alerts")
