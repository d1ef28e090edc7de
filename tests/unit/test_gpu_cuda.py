"""The CUDA driver check: a course image's CUDA runtime against the host's NVIDIA driver (from a fake
NVML, ``FakeNvml`` of test_gpu_inventory: no GPU exists here, or declared in the inventory)."""

from __future__ import annotations

import pytest
from test_gpu_inventory import FakeNvml, gpu

from spawner.gpu.cuda import MINIMUM_DRIVER, cuda_driver_refusal, host_driver_version, minimum_driver
from spawner.gpu.inventory import GpuDevice, GpuInventoryError, declared_inventory, discover_nvml


@pytest.mark.parametrize(
    "runtime, required",
    [
        pytest.param("12.4", "550.54.14", id="12.4"),
        pytest.param("12.4.127", "550.54.14", id="patch-ignored"),
        pytest.param("11.8", "520.61.05", id="11.8"),
        pytest.param("12.7", "560.28.03", id="unlisted-minor-takes-the-release-below"),
        pytest.param("14.0", None, id="unknown-major"),
        pytest.param("cuda", None, id="not-a-version"),
    ],
)
def test_minimum_driver_of_a_cuda_runtime(runtime, required):
    assert minimum_driver(runtime) == required


def test_the_driver_table_grows_with_the_runtime():
    ordered = sorted(MINIMUM_DRIVER.items(), key=lambda item: tuple(map(int, item[0].split("."))))
    drivers = [tuple(map(int, driver.split("."))) for _, driver in ordered]
    assert drivers == sorted(drivers)


def test_an_image_that_needs_a_newer_driver_is_refused_naming_both_versions():
    devices = discover_nvml(FakeNvml([gpu("GPU-0"), gpu("GPU-1")], driver=b"535.54.03"))  # old pynvml returns bytes
    host = host_driver_version(devices)
    assert host == "535.54.03"
    message = cuda_driver_refusal(course_title="Deep Learning", cuda_runtime="12.4", host_driver=host)
    assert message.startswith("Deep Learning cannot start here: its image uses CUDA 12.4, which needs NVIDIA driver 550.54.14")
    assert "this lab's GPUs run driver 535.54.03" in message


@pytest.mark.parametrize(
    "runtime, host",
    [
        pytest.param("12.4", "550.54.14", id="exactly-the-minimum"),
        pytest.param("12.1", "550.54.14", id="older-runtime"),
        pytest.param(None, "470.42.01", id="cpu-only-image"),
        pytest.param("12.4", None, id="host-does-not-say"),
    ],
)
def test_what_is_not_refused(runtime, host):
    assert cuda_driver_refusal(course_title="C", cuda_runtime=runtime, host_driver=host) is None


def test_a_declared_inventory_can_state_the_driver():
    devices = declared_inventory(
        [
            {"uuid": "GPU-a", "index": 0, "model": "NVIDIA H100", "memory": "80G", "driver_version": "560.35.03"},
            {"uuid": "GPU-b", "index": 1, "model": "NVIDIA H100", "memory": "80G", "driver_version": "550.54.15"},
        ]
    )
    assert host_driver_version(devices) == "550.54.15"  # the oldest counts
    assert host_driver_version([GpuDevice("GPU-c", 0, "T4", 1)]) is None
    with pytest.raises(GpuInventoryError, match=r"\[0\].driver_version: 'latest' is not a driver version"):
        declared_inventory([{"uuid": "GPU-a", "index": 0, "model": "T4", "memory": "16G", "driver_version": "latest"}])
