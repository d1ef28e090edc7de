"""Erase a person on request: their servers, work volumes, SSH keys, GPU records, hub records and archives.

Order matters: the hub stops the person's servers first (their GPUs are released, their containers go),
then deletes the person's records (tokens, group memberships, servers' state); then what the hub does not
own goes: leftover containers, the work volumes (and their filesystems on this node), SSH keys, the GPU
ledger's rows, end-of-term archives. One audit line says what was removed, naming the person only by a
digest (``spawner.deploy.audit``). Running it again finds nothing and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.contract import Labels
from ..core.naming import is_course_slug
from ..core.problems import TeachlabError
from ..gpu.ledger import GpuLedger
from ..ssh.keys import SshKeyStore
from . import audit
from .endofterm import forget_person_in_archives, remove_volume
from .lab import ProductionLab


@dataclass(frozen=True)
class Erasure:
    counts: dict[str, int]
    line: str


def erase_person(lab: ProductionLab, username: str) -> Erasure:
    if not username or "/" in username or username != username.strip():
        raise TeachlabError(f"{username!r} is not a username; give the name exactly as the hub shows it")
    api = lab.hub_api()
    counts: dict[str, int] = {}
    model = api.user(username)
    servers = [(username, server) for server in ((model or {}).get("servers") or {}) if server == "" or is_course_slug(server)]
    if servers:
        with lab.progress.step(f"stop {len(servers)} server(s)"):
            api.stop_servers(servers)
    counts["servers"] = len(servers)
    counts["hub_user"] = int(api.delete_user(username))
    user_filter = {"label": [f"{Labels.USER}={username}"]}
    containers = lab.client.containers.list(all=True, filters=user_filter)
    for container in containers:
        container.remove(force=True)
    counts["containers"] = len(containers)
    volumes = lab.client.volumes.list(filters=user_filter)
    for volume in volumes:
        remove_volume(lab, volume.name)
    counts["volumes"] = len(volumes)
    store = SshKeyStore.open(lab.records_url.render_as_string(hide_password=False))
    try:
        keys = store.keys_of(username)
        for key in keys:
            store.delete(username, key.id)
        counts["ssh_keys"] = len(keys)
    finally:
        store.close()
    ledger = GpuLedger.open(lab.records_url.render_as_string(hide_password=False))
    try:
        counts.update({f"gpu_{name}": number for name, number in ledger.erase_person(username).items()})
    finally:
        ledger.close()
    counts["archived_files"] = forget_person_in_archives(lab, username)
    line = audit.record(lab.site.state_dir, "erase-person", person=audit.person_digest(username), removed=counts)
    return Erasure(counts, line)
