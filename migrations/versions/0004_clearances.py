"""Route clearances (4D corridors) and their state.

One row per clearance, granted or denied: its JSON as served (`body`, with the request and the
reasons), the columns lookups filter on, its altitude band (WGS84 m) and its corridor (the union
of its pieces' corridors, lon/lat) for SQL users. The time windows and the deconfliction live in
memory (geofence/clearances.py); the row is what survives a restart.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from geoalchemy2 import Geometry

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    f8 = sa.Float(precision=53)
    op.create_table(
        "clearances",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("uav", sa.Text, nullable=False),
        sa.Column("operator", sa.Text),  # the UAV's operator when requested
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("valid_from", f8, nullable=False),
        sa.Column("valid_to", f8, nullable=False),
        sa.Column("lower_m", f8, nullable=False),
        sa.Column("upper_m", f8, nullable=False),
        sa.Column("created_at", f8, nullable=False),
        sa.Column("updated_at", f8, nullable=False),
        sa.Column("body", sa.Text, nullable=False),  # the clearance JSON, as served
        sa.Column("corridor", Geometry("MULTIPOLYGON", srid=4326, spatial_index=True),
                  nullable=False),
    )
    op.create_index("clearances_state", "clearances", ["state"])
    op.create_index("clearances_uav", "clearances", ["uav", "created_at"])
    op.create_index("clearances_operator", "clearances", ["operator", "created_at"])


def downgrade() -> None:
    op.drop_table("clearances")
