"""Alembic environment of the SSH key store. ``SshKeyStore.open`` runs it (``spawner.core.databases.migrate``)."""

from spawner.core.databases import run_migrations_in_env
from spawner.ssh.keys import VERSION_TABLE, metadata

run_migrations_in_env(metadata, VERSION_TABLE)
