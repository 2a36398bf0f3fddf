"""Zones (geofences): the GeoJSON feature as given, its geometry for SQL users, the ED-269 source.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from geoalchemy2 import Geometry

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    f8 = sa.Float(precision=53)
    op.create_table(
        "zones",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("restriction", sa.Text, nullable=False),
        sa.Column("feature", sa.Text, nullable=False),  # GeoJSON Feature, JSON text
        sa.Column("source_doc", sa.Text),  # the ED-269 feature it came from, JSON text
        sa.Column("geom", Geometry("GEOMETRY", srid=4326, spatial_index=True), nullable=False),
        sa.Column("updated_at", f8, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("zones")
