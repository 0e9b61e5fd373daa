"""Persistent state on SQLite (peewee): VMs, the IP pool, plugins and events."""

from volant.store.migrations import MIGRATIONS, Migration
from volant.store.sqlite import SqliteStore

__all__ = ["MIGRATIONS", "Migration", "SqliteStore"]
