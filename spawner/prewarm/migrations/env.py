"""Alembic environment of the warm-start records. ``WarmRecords.open`` runs it (``spawner.core.databases.migrate``)."""

from spawner.core.databases import run_migrations_in_env
from spawner.prewarm.records import VERSION_TABLE, metadata

run_migrations_in_env(metadata, VERSION_TABLE)
