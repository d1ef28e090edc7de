"""Alembic environment of the GPU ledger. ``GpuLedger.open`` runs it inside its serialized write transaction
(``spawner.core.databases.migrate``), so two hub processes never migrate one database at the same time."""

from spawner.core.databases import run_migrations_in_env
from spawner.gpu.ledger import VERSION_TABLE, metadata

run_migrations_in_env(metadata, VERSION_TABLE)
