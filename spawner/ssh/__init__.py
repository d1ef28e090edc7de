"""teachlab-ssh: the second way in. An SSH gateway (asyncssh) run by the hub as a managed service, with
a page where students manage their SSH public keys.

Pure: ``login`` (login names, forward rules), ``backoff`` (per-source slow-down), ``keys`` (the key
store, SQLAlchemy + Alembic). Glue: the hub's REST API (``spawner.hubclient``), ``bridge`` (docker exec into the
student's container), ``gateway`` (the SSH server), ``pages`` (the keys page), ``service`` (the process).
"""
