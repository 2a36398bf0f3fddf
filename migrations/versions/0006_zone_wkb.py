"""Zones: their properties and geometry in the forms a reload reads fast.

`properties` (the Feature's properties, JSON text) and `wkb` (`Zone.geometry` as WKB: a circle
zone's centre Point, unlike `geom`, which holds the circle's polygon for SQL users) let a reload
skip parsing and validating every GeoJSON coordinate again. Rows stored before are filled in
from `feature` here.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("zones", sa.Column("properties", sa.Text))
    op.add_column("zones", sa.Column("wkb", sa.LargeBinary))
    op.execute(
        "UPDATE zones SET properties = (feature::jsonb -> 'properties')::text, "
        "wkb = ST_AsBinary(ST_GeomFromGeoJSON((feature::jsonb -> 'geometry')::text))"
    )


def downgrade() -> None:
    op.drop_column("zones", "wkb")
    op.drop_column("zones", "properties")
