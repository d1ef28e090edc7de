"""Hub-side wiring of the GPU core: one ledger and one inventory per hub, reconciliation with containers.

Blocking calls (SQLAlchemy, NVML, docker-py) are made by the callers through an executor; the
cached objects here are created once per process.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import docker

from .gpu import GpuDevice, GpuInventoryError, GpuLedger, ReconcileReport, declared_inventory, discover_nvml

GPU_LABEL = "org.teachlab.gpus"
USER_LABEL = "org.teachlab.user"
SERVER_LABEL = "org.teachlab.server"
LAB_LABEL = "org.teachlab.lab"

InventorySetting = Union[str, Sequence[Mapping]]

_lock = threading.Lock()
_ledgers: dict[str, GpuLedger] = {}
_inventories: dict[str, list[GpuDevice]] = {}


def ledger_for(url: str) -> GpuLedger:
    """The process's ledger for ``url`` (opened, and migrated to the newest schema, on first use)."""
    with _lock:
        if url not in _ledgers:
            _ledgers[url] = GpuLedger.open(url)
        return _ledgers[url]


def inventory_for(setting: InventorySetting) -> list[GpuDevice]:
    """``"nvml"``: discover this host's GPUs; a list: the devices declared in configuration; ``""``: none."""
    key = setting if isinstance(setting, str) else json.dumps(list(map(dict, setting)), sort_keys=True)
    with _lock:
        if key not in _inventories:
            if setting == "nvml":
                _inventories[key] = discover_nvml()
            elif isinstance(setting, str):
                _inventories[key] = []
            else:
                _inventories[key] = declared_inventory(setting, where="c.CourseSpawner.gpu_inventory")
        return _inventories[key]


def parse_inventory_setting(text: Optional[str]) -> InventorySetting:
    """``TEACHLAB_GPU_INVENTORY``: ``nvml``, a JSON list of devices, or empty for a lab without GPUs."""
    text = (text or "").strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise GpuInventoryError(f"TEACHLAB_GPU_INVENTORY is not valid JSON ({exc}); write a list such as "
                                    '[{"uuid": "GPU-...", "index": 0, "model": "NVIDIA A100", "memory": "40G"}]') from None
    if text not in ("", "nvml"):
        raise GpuInventoryError(f"TEACHLAB_GPU_INVENTORY is {text!r}; write nvml, a JSON list of devices, or leave it empty")
    return text


def container_holdings(client: docker.DockerClient, lab_id: str) -> dict[tuple[str, str], list[str]]:
    """(username, server) -> device UUIDs, from the labels of this lab's running containers."""
    running: dict[tuple[str, str], list[str]] = {}
    filters = {"label": [GPU_LABEL, f"{LAB_LABEL}={lab_id}"], "status": "running"}
    for container in client.containers.list(filters=filters):
        labels = container.labels
        devices = [uuid for uuid in labels.get(GPU_LABEL, "").split(",") if uuid]
        if devices and USER_LABEL in labels and SERVER_LABEL in labels:
            running[(labels[USER_LABEL], labels[SERVER_LABEL])] = devices
    return running


def reconcile_with_containers(ledger_url: str, client: docker.DockerClient, lab_id: str) -> ReconcileReport:
    """At hub start: make the ledger equal to what this lab's containers hold.

    No spawn can be half-way while the hub is down, so a holding without a container is released
    at once (no grace period for a container still being created).
    """
    return ledger_for(ledger_url).reconcile(container_holdings(client, lab_id), spawn_grace=timedelta(0))


def default_ledger_url(state_dir: Path) -> str:
    return f"sqlite:///{Path(state_dir) / 'lab' / 'gpu-ledger.sqlite'}"
