"""Observations: `geom` computed by PostgreSQL from lon and lat (a stored generated column).

The server then writes a group of observations that cannot be stored yet (each newer than its
UAV's live one) with one COPY straight into the history, with no staging table and no `INSERT
... ON CONFLICT`: about half of PostgreSQL's work per row (docs/BENCHMARKS.md). Writers no
longer send `geom`. The upgrade rewrites the table once (every row's point is computed again,
the same as before).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_POINT = "ST_SetSRID(ST_MakePoint(lon, lat), 4326)"


def upgrade() -> None:
    op.execute("ALTER TABLE observations DROP COLUMN geom")
    op.execute(f"ALTER TABLE observations ADD COLUMN geom geometry(Point, 4326) "
               f"GENERATED ALWAYS AS ({_POINT}) STORED")


def downgrade() -> None:
    op.execute("ALTER TABLE observations DROP COLUMN geom")
    op.execute("ALTER TABLE observations ADD COLUMN geom geometry(Point, 4326)")
    op.execute(f"UPDATE observations SET geom = {_POINT}")
    op.execute("ALTER TABLE observations ALTER COLUMN geom SET NOT NULL")
