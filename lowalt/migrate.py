"""Schema migrations: Alembic for PostGIS; the SQLite store creates its own schema on open."""

from __future__ import annotations

import asyncio
from pathlib import Path

import migrations
from lowalt.settings import Settings


def alembic_url(database_url: str) -> str:
    """The SQLAlchemy URL for a postgresql:// DSN (asyncpg dialect)."""
    rest = database_url.split("://", 1)[1]
    return f"postgresql+asyncpg://{rest}"


def upgrade_postgres(database_url: str, revision: str = "head") -> None:
    """Run Alembic up to revision; blocking (Alembic runs its own event loop)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", alembic_url(database_url).replace("%", "%%"))
    command.upgrade(config, revision)


async def migrate(settings: Settings) -> None:
    """Create or upgrade the schema of settings.database_url."""
    if settings.backend == "postgres":
        await asyncio.to_thread(upgrade_postgres, settings.database_url)
    else:
        from lowalt.storage.sqlite import SqliteStore

        store = SqliteStore(settings.sqlite_path)
        await store.open()
        await store.close()
