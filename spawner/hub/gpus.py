"""GPU reconciliation at hub start: the ledger is made equal to what this lab's containers hold (on the hub's own
engine at start; on a swarm, on each GPU node's engine before the hub's first GPU placement, spawner.hub.spawner).

The lab label on each container says which lab started it (``Labels.LAB``). A running container with
GPUs and no lab label could be this lab's (started by an older release, or by a site that replaced
the labels): its devices are never released, because its holder cannot be ruled out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import docker

from ..core.contract import Labels
from ..gpu.cache import ledger_for
from ..gpu.ledger import LOCAL_NODE, GpuLedger, ReconcileReport


@dataclass(frozen=True)
class ContainerClaims:
    """What running containers say they hold: this lab's by server, and devices of unattributed ones."""

    servers: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    unattributed_devices: frozenset[str] = frozenset()


def _devices(labels: dict[str, str]) -> list[str]:
    return [uuid for uuid in labels.get(Labels.GPUS, "").split(",") if uuid]


def container_claims(client: docker.DockerClient, lab_id: str) -> ContainerClaims:
    """Read the GPU labels of every running container: this lab's, and those of no lab."""
    servers: dict[tuple[str, str], list[str]] = {}
    unattributed: set[str] = set()
    for container in client.containers.list(filters={"label": Labels.GPUS, "status": "running"}):
        labels = container.labels
        devices = _devices(labels)
        if not devices:
            continue
        lab = labels.get(Labels.LAB)
        if lab == lab_id and Labels.USER in labels and Labels.SERVER in labels:
            servers[(labels[Labels.USER], labels[Labels.SERVER])] = devices
        elif lab is None or lab == lab_id:
            unattributed.update(devices)
    return ContainerClaims(servers=servers, unattributed_devices=frozenset(unattributed))


def reconcile_with_claims(ledger: GpuLedger, claims: ContainerClaims, node: str = LOCAL_NODE) -> ReconcileReport:
    """Make the ledger's holdings on ``node`` equal to what its running containers claim, before any spawn of this
    hub process has taken a GPU there.

    No spawn can be half-way then (a spawn under way died with the previous hub), so a holding without a container
    is released at once (no grace period), unless a container of no known lab holds its device.
    """
    return ledger.reconcile(claims.servers, spawn_grace=timedelta(0), protected_devices=claims.unattributed_devices, node=node)


def reconcile_with_containers(ledger_url: str, client: docker.DockerClient, lab_id: str) -> ReconcileReport:
    """At hub start: make the ledger equal to what this lab's containers on the hub's own engine hold."""
    return reconcile_with_claims(ledger_for(ledger_url), container_claims(client, lab_id))
