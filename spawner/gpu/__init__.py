"""GPUs for course servers: what the host has (``inventory``), who may have one (``quotas``) and who
holds which (``ledger``).

Pure core: nothing here imports docker, jupyterhub or tornado, and every module is tested without a
Docker daemon or a GPU. The spawner calls the ledger's blocking methods from its executor.
"""

from .inventory import GpuDevice, GpuInventoryError, declared_inventory, discover_nvml
from .ledger import (
    LOCAL_NODE,
    Allocation,
    AllocationRefused,
    AuditEntry,
    DeviceConflict,
    GpuLedger,
    Holding,
    ReconcileReport,
    UsageInterval,
    UsageRow,
)
from .quotas import (
    EffectiveQuota,
    QuotaError,
    Refusal,
    check_allocation,
    check_devices,
    check_quota,
    remaining_gpu_hours,
    term_window,
)

__all__ = [
    "LOCAL_NODE",
    "Allocation",
    "AllocationRefused",
    "AuditEntry",
    "DeviceConflict",
    "EffectiveQuota",
    "GpuDevice",
    "GpuInventoryError",
    "GpuLedger",
    "Holding",
    "QuotaError",
    "ReconcileReport",
    "Refusal",
    "UsageInterval",
    "UsageRow",
    "check_allocation",
    "check_devices",
    "check_quota",
    "declared_inventory",
    "discover_nvml",
    "remaining_gpu_hours",
    "term_window",
]
