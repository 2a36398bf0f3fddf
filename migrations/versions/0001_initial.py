"""Initial schema: observation history, tokens, UAV registry.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from geoalchemy2 import Geometry

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    f8 = sa.Float(precision=53)
    op.create_table(
        "observations",
        sa.Column("uav", sa.Text, nullable=False),
        sa.Column("t", f8, nullable=False),
        sa.Column("lat", f8, nullable=False),
        sa.Column("lon", f8, nullable=False),
        sa.Column("alt_m", f8, nullable=False),
        sa.Column("speed_mps", f8),
        sa.Column("track_deg", f8),
        sa.Column("vspeed_mps", f8),
        sa.Column("agl_m", f8),
        sa.Column("status", sa.Text),
        sa.Column("acc_h_m", f8),
        sa.Column("acc_v_m", f8),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("received_at", f8, nullable=False),
        sa.Column(
            "geom",
            Geometry("POINT", srid=4326, spatial_index=False),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("uav", "t", name="observations_pkey"),
    )
    op.execute("CREATE INDEX observations_t_brin ON observations USING brin (t)")
    op.create_table(
        "tokens",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("hash", sa.Text, nullable=False, unique=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("operator", sa.Text),
        sa.Column("expires_at", f8),
        sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", f8, nullable=False),
    )
    op.create_table(
        "uavs",
        sa.Column("uav", sa.Text, primary_key=True),
        sa.Column("operator", sa.Text, nullable=False),
        sa.Column("aliases", sa.Text, nullable=False, server_default="[]"),
        sa.Column("priority", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("serial", sa.Text),
        sa.Column("model", sa.Text),
        sa.Column("uav_class", sa.Text),
        sa.Column("max_speed_mps", f8),
    )


def downgrade() -> None:
    op.drop_table("uavs")
    op.drop_table("tokens")
    op.drop_table("observations")
