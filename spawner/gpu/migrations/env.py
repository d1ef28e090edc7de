"""Alembic environment of the GPU ledger. ``GpuLedger.open`` runs it on a connection inside its own
serialized write transaction (``config.attributes["connection"]``), so two hub processes opening
the same database never migrate it at the same time; there is no alembic.ini and no offline mode."""

from alembic import context

from spawner.gpu.ledger import VERSION_TABLE, metadata

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite can only ALTER tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
