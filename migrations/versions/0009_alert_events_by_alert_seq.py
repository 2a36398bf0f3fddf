"""alert_events indexed by (alert_id, seq): an open alert's newest event at start.

Updates no longer rewrite their alert's `alerts` row (dispatch/store.py); at start each open
alert's newest event is read from alert_events, the last by seq of its alert_id, which this
index finds without a sort. It replaces the index on alert_id alone.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("alert_events_alert_seq", "alert_events", ["alert_id", "seq"])
    op.drop_index("alert_events_alert", table_name="alert_events")


def downgrade() -> None:
    op.create_index("alert_events_alert", "alert_events", ["alert_id"])
    op.drop_index("alert_events_alert_seq", table_name="alert_events")
