"""The GPUs a hub host can hand out: read from NVML, or declared in the hub configuration.

A ``GpuDevice`` is the unit the ledger assigns: a whole GPU, or one MIG instance when MIG mode is on
for its GPU (then the GPU itself is never handed out, since CUDA work runs only in its instances).
The UUID is what the container runtime is given (``NVIDIA_VISIBLE_DEVICES``/``device_ids``), so it is
the key everywhere; the index only orders devices for allocation and display.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.problems import Problem, ProblemsError
from ..core.units import parse_memory

DECLARED_KEYS = ("uuid", "index", "model", "memory", "parent_uuid", "driver_version")
_DRIVER_VERSION = re.compile(r"^\d+\.\d+(\.\d+)?$")
_FIX_WITH_DECLARED = (
    "declare the GPUs in the hub configuration instead "
    "(uuid, index, model and memory of each, as `nvidia-smi -L` and `nvidia-smi` show them)"
)


class GpuInventoryError(ProblemsError):
    """The host's GPUs could not be read, or the declared ones are invalid (one line per problem)."""


def _nvml_problem(message: str, fix: str) -> GpuInventoryError:
    return GpuInventoryError([Problem("NVML", "(this host)", message, f"{fix}, or {_FIX_WITH_DECLARED}")])


@dataclass(frozen=True)
class GpuDevice:
    """One assignable GPU or MIG instance.

    ``index`` is the NVML index of the physical GPU; a MIG instance carries its parent's index and
    its parent's UUID in ``parent_uuid``, and its own ``MIG-...`` UUID in ``uuid``. ``driver_version``
    is the host's driver, which decides the newest CUDA runtime a container can use (``spawner.gpu.cuda``).
    """

    uuid: str
    index: int
    model: str
    memory_bytes: int
    parent_uuid: str | None = None
    driver_version: str | None = None  # the host's NVIDIA driver, e.g. "550.54.14" (NVML, or declared)


def discover_nvml(nvml: Any = None) -> list[GpuDevice]:
    """The devices NVML reports, in NVML order; GpuInventoryError when NVML is unusable here.

    ``nvml`` is the ``pynvml`` module (imported when not given); tests pass a fake. A GPU in MIG mode
    contributes its MIG instances (possibly none) instead of itself.
    """
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError as exc:
            raise _nvml_problem(
                f"cannot read this host's GPUs: the pynvml module is missing ({exc})", "install nvidia-ml-py"
            ) from exc
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise _nvml_problem(
            f"cannot read this host's GPUs: NVML could not be loaded or initialised ({exc})",
            "install the NVIDIA driver on the hub host",
        ) from exc
    try:
        driver = nvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        devices: list[GpuDevice] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpu = _device(nvml, handle, index, parent_uuid=None, driver_version=driver)
            if _mig_enabled(nvml, handle):
                devices.extend(_mig_instances(nvml, handle, gpu))
            else:
                devices.append(gpu)
        return devices
    except nvml.NVMLError as exc:
        raise _nvml_problem(
            f"cannot read this host's GPUs: NVML failed while listing them ({exc})", "check `nvidia-smi` on the hub host"
        ) from exc
    finally:
        nvml.nvmlShutdown()


def _device(nvml: Any, handle: Any, index: int, parent_uuid: str | None, driver_version: str | None) -> GpuDevice:
    return GpuDevice(
        uuid=nvml.nvmlDeviceGetUUID(handle),
        index=index,
        model=nvml.nvmlDeviceGetName(handle),
        memory_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
        parent_uuid=parent_uuid,
        driver_version=driver_version,
    )


def _mig_enabled(nvml: Any, handle: Any) -> bool:
    """The current (not the pending) MIG mode; GPUs without MIG support answer NotSupported."""
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError_NotSupported:
        return False
    return current == nvml.NVML_DEVICE_MIG_ENABLE


def _mig_instances(nvml: Any, handle: Any, gpu: GpuDevice) -> list[GpuDevice]:
    """The MIG instances that exist; empty slots up to the maximum answer NotFound."""
    instances = []
    for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig_handle = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except nvml.NVMLError_NotFound:
            continue
        instances.append(_device(nvml, mig_handle, gpu.index, parent_uuid=gpu.uuid, driver_version=gpu.driver_version))
    return instances


def declared_inventory(entries: Sequence[Mapping[str, Any]], where: str = "gpu_devices") -> list[GpuDevice]:
    """Check GPUs declared in configuration; GpuInventoryError lists every problem, one per line.

    ``where`` names the setting in the messages (e.g. ``c.CourseSpawner.gpu_inventory``).
    """
    problems: list[Problem] = []
    devices: list[GpuDevice] = []
    seen_uuids: set[str] = set()
    for position, entry in enumerate(entries):

        def problem(key: str, message: str, fix: str, position: int = position) -> None:
            problems.append(Problem(where, f"[{position}]{'.' + key if key else ''}", message, fix))

        if not isinstance(entry, Mapping):
            problem(
                "",
                f"must be a mapping with {', '.join(DECLARED_KEYS[:4])}",
                "write e.g. {'uuid': 'GPU-...', 'index': 0, 'model': 'NVIDIA H100', 'memory': '80G'}",
            )
            continue
        found = len(problems)
        for unknown in sorted(set(entry) - set(DECLARED_KEYS), key=str):
            problem(str(unknown), "unknown key", f"allowed: {', '.join(DECLARED_KEYS)}")
        uuid, index, model, memory = (entry.get(key) for key in DECLARED_KEYS[:4])
        parent_uuid = entry.get("parent_uuid")
        driver_version = entry.get("driver_version")
        if not isinstance(uuid, str) or not uuid.strip():
            problem("uuid", "missing or empty", "write the UUID `nvidia-smi -L` prints, e.g. 'GPU-5f1e...'")
        elif uuid in seen_uuids:
            problem("uuid", f"'{uuid}' is declared twice", "each device needs its own UUID")
        else:
            seen_uuids.add(uuid)
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            problem("index", f"must be a whole number >= 0, not {index!r}", "write the GPU's index from `nvidia-smi -L`")
        if not isinstance(model, str) or not model.strip():
            problem("model", "missing or empty", "write the model name, e.g. 'NVIDIA H100 80GB HBM3'")
        try:
            memory_bytes = parse_memory(memory)
        except ValueError:
            problem("memory", f"{memory!r} is not a memory size", "write e.g. '80G', or a number of bytes")
        if parent_uuid is not None and (not isinstance(parent_uuid, str) or not parent_uuid.strip()):
            problem("parent_uuid", "must be the UUID of the GPU this MIG instance belongs to", "write it, or leave the key out")
        if driver_version is not None and (not isinstance(driver_version, str) or not _DRIVER_VERSION.match(driver_version)):
            problem(
                "driver_version",
                f"{driver_version!r} is not a driver version",
                "write it as `nvidia-smi` shows it, e.g. '550.54.14'",
            )
        if len(problems) == found:
            devices.append(
                GpuDevice(
                    uuid=uuid,
                    index=index,
                    model=model,
                    memory_bytes=memory_bytes,
                    parent_uuid=parent_uuid,
                    driver_version=driver_version,
                )
            )
    if problems:
        raise GpuInventoryError(problems)
    return devices
