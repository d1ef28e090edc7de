"""Can a course image's CUDA runtime run on this host's NVIDIA driver? Asked before a GPU is held.

Pure: the image's CUDA runtime comes from its published version (``cuda_runtime``, read from the
image's packages at publish), the host's driver from NVML (``nvmlSystemGetDriverVersion``) or from
the declared inventory (``driver_version``). A CUDA runtime needs at least the driver NVIDIA lists
for its toolkit release (CUDA Toolkit release notes, "CUDA Toolkit and Corresponding Driver
Versions", Linux x86_64, toolkit GA). Minor-version compatibility would let some 12.x programs
start on an older 12.x driver, but PTX JIT compilation (which PyTorch and CuPy use) fails there, so
the full-support minimum is the one that counts: a student should never meet "driver incompatible".
"""

from __future__ import annotations

from collections.abc import Iterable

from packaging.version import InvalidVersion, Version

from .inventory import GpuDevice

MINIMUM_DRIVER = {
    "10.0": "410.48",
    "10.1": "418.39",
    "10.2": "440.33",
    "11.0": "450.51.05",
    "11.1": "455.23",
    "11.2": "460.27.03",
    "11.3": "465.19.01",
    "11.4": "470.42.01",
    "11.5": "495.29.05",
    "11.6": "510.39.01",
    "11.7": "515.43.04",
    "11.8": "520.61.05",
    "12.0": "525.60.13",
    "12.1": "530.30.02",
    "12.2": "535.54.03",
    "12.3": "545.23.06",
    "12.4": "550.54.14",
    "12.5": "555.42.02",
    "12.6": "560.28.03",
    "12.8": "570.26",
    "12.9": "575.51.03",
    "13.0": "580.65.06",
}


def _release(text: str) -> Version:
    return Version(".".join(text.split(".")[:2]))


def minimum_driver(cuda_runtime: str) -> str | None:
    """The oldest driver that fully supports ``cuda_runtime`` (``major.minor``); a release newer than the
    table within a known major needs at least that major's newest entry; an unknown major gives None."""
    try:
        wanted = _release(cuda_runtime)
    except InvalidVersion:
        return None
    known = sorted((_release(release), driver) for release, driver in MINIMUM_DRIVER.items())
    candidates = [driver for release, driver in known if release <= wanted and release.major == wanted.major]
    return candidates[-1] if candidates else None


def host_driver_version(devices: Iterable[GpuDevice]) -> str | None:
    """The host's driver version (the oldest, should devices disagree); None when no device says."""
    versions = [device.driver_version for device in devices if device.driver_version]
    parsed = []
    for text in versions:
        try:
            parsed.append((Version(text), text))
        except InvalidVersion:
            continue
    return min(parsed)[1] if parsed else None


def cuda_driver_refusal(*, course_title: str, cuda_runtime: str | None, host_driver: str | None) -> str | None:
    """Why a GPU course cannot start on this host's driver, naming both versions; None when it can (or
    when either version is unknown: a CPU-only image, or a host that does not say its driver)."""
    if not cuda_runtime or not host_driver:
        return None
    required = minimum_driver(cuda_runtime)
    if required is None or Version(host_driver) >= Version(required):
        return None
    return (
        f"{course_title} cannot start here: its image uses CUDA {cuda_runtime}, which needs NVIDIA driver {required} "
        f"or newer, and this lab's GPUs run driver {host_driver}. Tell the lab's admins (update the driver), "
        "or your instructor (publish the course with an older CUDA)"
    )
