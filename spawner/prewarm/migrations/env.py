"""Alembic environment of the warm-start records. ``WarmRecords.open`` runs it on a connection inside its own
transaction (``config.attributes["connection"]``); there is no alembic.ini and no offline mode."""

from alembic import context

from spawner.prewarm.records import VERSION_TABLE, metadata

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite can only ALTER tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
