"""The lab's own databases (GPU ledger, SSH keys, warm-start records), opened one way.

Each store is SQLite in the state folder for one machine or PostgreSQL for a production site, and brings its
tables to its newest Alembic migration when it opens (each store keeps its own version table, so they may
share one database with JupyterHub's).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, create_engine
from sqlalchemy.engine import Connection, Engine, make_url

# SQLite's busy handler: how long a writer waits for another process's write lock before failing.
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
# Alembic's command API reads process-global state: two stores opening at once in one process take turns.
_migration_lock = threading.Lock()


def store_engine(url: str, *, what: str, example: str) -> Engine:
    """An engine for a store's URL. SQLite needs a file every process shares (``what`` and ``example`` word the
    error); its folder is made when missing. PostgreSQL connections are checked before use."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    if parsed.database in (None, "", ":memory:"):
        raise ValueError(f"{what} needs a database file shared by every process, not {url!r} (write e.g. {example})")
    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})


def migrate(engine: Engine, script_location: str, *, begin: Callable[[], ContextManager[Connection]] | None = None) -> None:
    """Bring a store's tables to its newest migration (a no-op when current), in the transaction ``begin`` opens
    (default: ``engine.begin()``)."""
    config = Config()
    config.set_main_option("script_location", script_location)
    with _migration_lock, (begin or engine.begin)() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def run_migrations_in_env(metadata: MetaData, version_table: str) -> None:
    """The body of every store's Alembic ``env.py``: upgrade on the connection ``migrate`` passes, inside its
    transaction; each store keeps its own version table. There is no alembic.ini and no offline mode."""
    context.configure(
        connection=context.config.attributes["connection"],
        target_metadata=metadata,
        version_table=version_table,
        render_as_batch=True,  # SQLite can only ALTER tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()
