"""Storage behind one interface: embedded SQLite (default) or PostgreSQL + PostGIS."""

from __future__ import annotations

from lowalt.settings import Settings
from lowalt.storage.base import Store, TokenRecord, UavRecord


def create_store(settings: Settings) -> Store:
    """The store for settings.database_url (not yet opened)."""
    if settings.backend == "postgres":
        from lowalt.storage.postgres import PostgresStore

        return PostgresStore(settings.database_url)
    from lowalt.storage.sqlite import SqliteStore

    return SqliteStore(settings.sqlite_path)


__all__ = ["Store", "TokenRecord", "UavRecord", "create_store"]
