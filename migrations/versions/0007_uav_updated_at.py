"""UAVs: when each registry row last changed.

`updated_at` (Unix seconds, set by every upsert) lets the server see that the registry is
unchanged with one `count(*), max(updated_at)` query instead of reading every row every few
seconds. Rows stored before get 0.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("uavs", sa.Column("updated_at", sa.Float(precision=53), nullable=False,
                                    server_default="0"))


def downgrade() -> None:
    op.drop_column("uavs", "updated_at")
