"""One ledger and one inventory per process (hub, GPU service, CLI), opened on first use.

The methods of both block; async callers go through ``spawner.core.blocking``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from typing import Union

from ..core.problems import Problem
from .inventory import GpuDevice, GpuInventoryError, declared_inventory, discover_nvml
from .ledger import GpuLedger

InventorySetting = Union[str, Sequence[Mapping]]
INVENTORY_VARIABLE = "TEACHLAB_GPU_INVENTORY"

_lock = threading.Lock()
_ledgers: dict[str, GpuLedger] = {}
_inventories: dict[str, list[GpuDevice]] = {}


def ledger_for(url: str) -> GpuLedger:
    """The process's ledger for ``url`` (opened, and migrated to the newest schema, on first use)."""
    with _lock:
        if url not in _ledgers:
            _ledgers[url] = GpuLedger.open(url)
        return _ledgers[url]


def inventory_for(setting: InventorySetting, where: str = "c.CourseSpawner.gpu_inventory") -> list[GpuDevice]:
    """``"nvml"``: discover this host's GPUs; a list: the devices declared in configuration; ``""``: none."""
    key = setting if isinstance(setting, str) else json.dumps(list(map(dict, setting)), sort_keys=True)
    with _lock:
        if key not in _inventories:
            if setting == "nvml":
                _inventories[key] = discover_nvml()
            elif isinstance(setting, str):
                _inventories[key] = []
            else:
                _inventories[key] = declared_inventory(setting, where=where)
        return _inventories[key]


def parse_inventory_setting(text: str | None) -> InventorySetting:
    """``TEACHLAB_GPU_INVENTORY``: ``nvml``, a JSON list of devices, or empty for a lab without GPUs."""
    text = (text or "").strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise GpuInventoryError(
                [
                    Problem(
                        INVENTORY_VARIABLE,
                        "(value)",
                        f"is not valid JSON ({exc})",
                        'write a list such as [{"uuid": "GPU-...", "index": 0, "model": "NVIDIA A100", "memory": "40G"}]',
                    )
                ]
            ) from None
    if text not in ("", "nvml"):
        raise GpuInventoryError(
            [
                Problem(
                    INVENTORY_VARIABLE,
                    "(value)",
                    f"{text!r} is not an inventory",
                    "write nvml, a JSON list of devices, or leave it empty",
                )
            ]
        )
    return text
