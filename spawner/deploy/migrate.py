"""``python -m spawner.deploy.migrate``: bring the lab's databases to this release's schema.

Run by ``teachlab deploy upgrade`` in a one-off container of the new hub image while no hub runs: the hub
database with JupyterHub's own ``upgrade-db`` (its Alembic scripts), then the records database's GPU ledger
and SSH keys with theirs. Prints one JSON line: each database's revision before and after. Alembic runs
each upgrade in a transaction, so a failed one leaves that database as it was.
"""

from __future__ import annotations

import json
import logging
import sys

import sqlalchemy
from alembic.migration import MigrationContext

from ..gpu.ledger import VERSION_TABLE as LEDGER_VERSION_TABLE
from ..gpu.ledger import GpuLedger
from ..hub.config import write_pgpass
from ..hub.settings import HubSettings
from ..ssh.keys import VERSION_TABLE as SSH_VERSION_TABLE
from ..ssh.keys import SshKeyStore

JUPYTERHUB_VERSION_TABLE = "alembic_version"


def revision(url: str, version_table: str) -> str | None:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection, opts={"version_table": version_table}).get_current_revision()
    finally:
        engine.dispose()


def migrate(settings: HubSettings) -> dict[str, list[str | None]]:
    from jupyterhub import dbutil

    write_pgpass(settings)
    hub_url, records_url = settings.hub_database_url, settings.ledger_url
    before = {
        "jupyterhub": revision(hub_url, JUPYTERHUB_VERSION_TABLE),
        "gpu_ledger": revision(records_url, LEDGER_VERSION_TABLE),
        "ssh_keys": revision(records_url, SSH_VERSION_TABLE),
    }
    dbutil.upgrade_if_needed(hub_url, log=logging.getLogger("teachlab.migrate"))
    GpuLedger.open(records_url).close()
    SshKeyStore.open(records_url).close()
    after = {
        "jupyterhub": revision(hub_url, JUPYTERHUB_VERSION_TABLE),
        "gpu_ledger": revision(records_url, LEDGER_VERSION_TABLE),
        "ssh_keys": revision(records_url, SSH_VERSION_TABLE),
    }
    return {name: [before[name], after[name]] for name in before}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(json.dumps(migrate(HubSettings.from_environment())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
