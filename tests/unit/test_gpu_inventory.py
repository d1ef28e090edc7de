from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spawner.core.problems import TeachlabError
from spawner.core.units import parse_memory
from spawner.gpu.inventory import GpuDevice, GpuInventoryError, declared_inventory, discover_nvml

GIB = 1 << 30
DRIVER = "550.54.14"


class FakeNvmlError(Exception):
    pass


class FakeNotSupported(FakeNvmlError):
    pass


class FakeNotFound(FakeNvmlError):
    pass


class FakeNvml:
    """The part of pynvml that discover_nvml uses. ``gpus`` are dicts with uuid, name, memory and
    either ``mig=None`` (no MIG support), or ``mig=(current_mode, pending_mode)`` with ``slots``: one
    entry per MIG slot up to the maximum, None for an empty one."""

    NVMLError = FakeNvmlError
    NVMLError_NotSupported = FakeNotSupported
    NVMLError_NotFound = FakeNotFound
    NVML_DEVICE_MIG_ENABLE = 1

    def __init__(
        self, gpus: list[dict], init_error: Exception | None = None, broken_call: str | None = None, driver: str | bytes = DRIVER
    ):
        self.gpus = gpus
        self.driver = driver
        self.init_error = init_error
        self.broken_call = broken_call
        self.shutdowns = 0

    def _check(self, call: str) -> None:
        if call == self.broken_call:
            raise FakeNvmlError("Unknown Error")

    def nvmlInit(self) -> None:
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        return self.driver

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict:
        self._check("nvmlDeviceGetHandleByIndex")
        return self.gpus[index]

    def nvmlDeviceGetUUID(self, handle: dict) -> str:
        return handle["uuid"]

    def nvmlDeviceGetName(self, handle: dict) -> str:
        return handle["name"]

    def nvmlDeviceGetMemoryInfo(self, handle: dict) -> SimpleNamespace:
        return SimpleNamespace(total=handle["memory"], free=handle["memory"], used=0)

    def nvmlDeviceGetMigMode(self, handle: dict) -> list[int]:
        if handle.get("mig") is None:
            raise FakeNotSupported("Not Supported")
        return list(handle["mig"])

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: dict) -> int:
        return len(handle["slots"])

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: dict, index: int) -> dict:
        instance = handle["slots"][index]
        if instance is None:
            raise FakeNotFound("Not Found")
        return instance


def gpu(uuid: str, name: str = "NVIDIA A100-SXM4-40GB", memory: int = 40 * GIB, **mig) -> dict:
    return {"uuid": uuid, "name": name, "memory": memory, "mig": None, **mig}


def mig(uuid: str, profile: str = "1g.5gb", memory: int = 5 * GIB) -> dict:
    return {"uuid": uuid, "name": f"NVIDIA A100-SXM4-40GB MIG {profile}", "memory": memory}


def test_whole_gpus_are_listed_in_nvml_order():
    fake_nvml = FakeNvml([gpu("GPU-aaa", "Tesla T4", 16 * GIB), gpu("GPU-bbb", mig=(0, 0), slots=[None] * 7)])
    assert discover_nvml(fake_nvml) == [
        GpuDevice(uuid="GPU-aaa", index=0, model="Tesla T4", memory_bytes=16 * GIB, driver_version=DRIVER),
        GpuDevice(uuid="GPU-bbb", index=1, model="NVIDIA A100-SXM4-40GB", memory_bytes=40 * GIB, driver_version=DRIVER),
    ]
    assert fake_nvml.shutdowns == 1


def test_a_gpu_in_mig_mode_contributes_its_instances_instead_of_itself():
    slots = [mig("MIG-one"), None, mig("MIG-three", "3g.20gb", 20 * GIB), None, None, None, None]
    fake_nvml = FakeNvml([gpu("GPU-plain"), gpu("GPU-split", mig=(1, 1), slots=slots)])
    assert discover_nvml(fake_nvml) == [
        GpuDevice(uuid="GPU-plain", index=0, model="NVIDIA A100-SXM4-40GB", memory_bytes=40 * GIB, driver_version=DRIVER),
        GpuDevice(
            uuid="MIG-one",
            index=1,
            model="NVIDIA A100-SXM4-40GB MIG 1g.5gb",
            memory_bytes=5 * GIB,
            parent_uuid="GPU-split",
            driver_version=DRIVER,
        ),
        GpuDevice(
            uuid="MIG-three",
            index=1,
            model="NVIDIA A100-SXM4-40GB MIG 3g.20gb",
            memory_bytes=20 * GIB,
            parent_uuid="GPU-split",
            driver_version=DRIVER,
        ),
    ]


@pytest.mark.parametrize(
    "mig_mode, slots, expected_uuids",
    [
        pytest.param((0, 1), [mig("MIG-x")], ["GPU-0"], id="enable-pending-until-reset"),
        pytest.param((1, 0), [mig("MIG-x")], ["MIG-x"], id="disable-pending-still-mig"),
        pytest.param((1, 1), [None, None], [], id="mig-on-without-instances"),
    ],
)
def test_only_the_current_mig_mode_counts(mig_mode, slots, expected_uuids):
    fake_nvml = FakeNvml([gpu("GPU-0", mig=mig_mode, slots=slots)])
    assert [device.uuid for device in discover_nvml(fake_nvml)] == expected_uuids


def test_nvml_that_cannot_start_says_how_to_go_on():
    fake_nvml = FakeNvml([], init_error=FakeNvmlError("NVML Shared Library Not Found"))
    with pytest.raises(GpuInventoryError) as caught:
        discover_nvml(fake_nvml)
    message = str(caught.value)
    assert isinstance(caught.value, TeachlabError)
    assert "\n" not in message
    assert "NVML Shared Library Not Found" in message
    assert "declare the GPUs in the hub configuration" in message


def test_nvml_failing_while_listing_is_reported_and_shut_down():
    fake_nvml = FakeNvml([gpu("GPU-0")], broken_call="nvmlDeviceGetHandleByIndex")
    with pytest.raises(GpuInventoryError, match="NVML failed while listing them"):
        discover_nvml(fake_nvml)
    assert fake_nvml.shutdowns == 1


def test_declared_devices_become_gpu_devices():
    devices = declared_inventory(
        [
            {"uuid": "GPU-a", "index": 0, "model": "NVIDIA H100", "memory": "80G"},
            {"uuid": "MIG-b", "index": 1, "model": "NVIDIA A100 MIG 1g.10gb", "memory": 10 * GIB, "parent_uuid": "GPU-p"},
        ]
    )
    assert devices == [
        GpuDevice("GPU-a", 0, "NVIDIA H100", 80 * GIB),
        GpuDevice("MIG-b", 1, "NVIDIA A100 MIG 1g.10gb", 10 * GIB, parent_uuid="GPU-p"),
    ]


VALID = {"uuid": "GPU-a", "index": 0, "model": "NVIDIA H100", "memory": "80G"}


@pytest.mark.parametrize(
    "entry, expected",
    [
        pytest.param({**VALID, "uuid": ""}, "gpu_devices:[0].uuid: missing or empty", id="empty-uuid"),
        pytest.param({k: v for k, v in VALID.items() if k != "uuid"}, "gpu_devices:[0].uuid: missing", id="no-uuid"),
        pytest.param({**VALID, "index": "0"}, "gpu_devices:[0].index: must be a whole number >= 0, not '0'", id="index-text"),
        pytest.param({**VALID, "index": True}, "gpu_devices:[0].index: must be a whole number", id="index-bool"),
        pytest.param({**VALID, "index": -1}, "gpu_devices:[0].index: must be a whole number", id="index-negative"),
        pytest.param({**VALID, "model": 100}, "gpu_devices:[0].model: missing or empty", id="model-number"),
        pytest.param({**VALID, "memory": "80GB"}, "gpu_devices:[0].memory: '80GB' is not a memory size", id="memory-unit"),
        pytest.param({**VALID, "memory": 0}, "gpu_devices:[0].memory: 0 is not a memory size", id="memory-zero"),
        pytest.param({**VALID, "memory": None}, "gpu_devices:[0].memory: None is not a memory size", id="memory-missing"),
        pytest.param({**VALID, "parent_uuid": 3}, "gpu_devices:[0].parent_uuid: must be the UUID", id="parent-number"),
        pytest.param(
            {**VALID, "memroy": "80G"},
            "gpu_devices:[0].memroy: unknown key (allowed: uuid, index, model, memory, parent_uuid, driver_version)",
            id="typo-key",
        ),
        pytest.param("GPU-a", "gpu_devices:[0]: must be a mapping", id="not-a-mapping"),
    ],
)
def test_declared_device_problems_are_one_line_each(entry, expected):
    with pytest.raises(GpuInventoryError) as caught:
        declared_inventory([entry])
    assert str(caught.value).startswith(expected)
    assert "\n" not in str(caught.value)


def test_every_declared_problem_is_reported_with_the_setting_name():
    with pytest.raises(GpuInventoryError) as caught:
        declared_inventory([VALID, {**VALID, "memory": "lots"}, VALID], where="c.CourseSpawner.gpu_devices")
    assert str(caught.value).splitlines() == [
        "c.CourseSpawner.gpu_devices:[1].uuid: 'GPU-a' is declared twice (each device needs its own UUID)",
        "c.CourseSpawner.gpu_devices:[1].memory: 'lots' is not a memory size (write e.g. '80G', or a number of bytes)",
        "c.CourseSpawner.gpu_devices:[2].uuid: 'GPU-a' is declared twice (each device needs its own UUID)",
    ]


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["K", "M", "G", "T"]))
def test_memory_sizes_are_powers_of_1024(number, unit):
    assert parse_memory(f"{number}{unit}") == number * 1024 ** ("KMGT".index(unit) + 1)
    assert parse_memory(number) == number
