"""The container of one course server, as a pure function of the course, the version and the person.

Like kubespawner's ``make_pod``: no Docker, no hub; ``CourseSpawner.start()`` reserves GPUs and
prepares volumes, then hands this spec to the engine. Guarantees (tests/unit/test_container_spec.py):

* Students get the course data read-only, instructors read-write; the work volume is always read-write.
* A CPU course sets ``NVIDIA_VISIBLE_DEVICES=void``, so no image default and no engine default runtime
  can give it a GPU; a GPU course requests exactly its ledger-assigned device ids, nothing else.
* The platform's labels (user, server, course, lab, GPUs) always win over ``extra_labels``, so a site
  setting can never hide a container from GPU reconciliation.
* The student uid, no privilege escalation, no capabilities, a process limit, a read-only root filesystem
  with size-limited scratch space, rotated logs (``spawner.core.hardening``).
* A course with ``network: off`` is marked ``offline``: its container gets an address from the students'
  network's offline range, from which the node's firewall forwards nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..catalog import Course
from ..core import naming
from ..core.contract import IMAGE, Labels
from ..core.hardening import STUDENT_HARDENING, Hardening

CPU_PERIOD_MICROSECONDS = 100_000
NO_GPU = "void"


@dataclass(frozen=True)
class VolumeMount:
    volume: str
    path: str
    read_only: bool

    @property
    def bind(self) -> dict[str, str]:
        return {"bind": self.path, "mode": "ro" if self.read_only else "rw"}


@dataclass(frozen=True)
class ContainerSpec:
    """Everything the engine needs to create one course server's container."""

    name: str
    image: str
    command: tuple[str, ...]
    user: str
    mounts: tuple[VolumeMount, ...]
    memory_bytes: int
    cpu_limit: float
    labels: Mapping[str, str]
    environment: Mapping[str, str]
    gpu_device_ids: tuple[str, ...] = ()
    gpu_driver: str = "nvidia"
    offline: bool = False
    hardening: Hardening = STUDENT_HARDENING
    extra_host_config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def binds(self) -> dict[str, dict[str, str]]:
        return {mount.volume: mount.bind for mount in self.mounts}

    @property
    def device_requests(self) -> list[dict[str, Any]]:
        """docker-py ``DeviceRequest`` keyword arguments: exactly the assigned devices, or none."""
        if not self.gpu_device_ids:
            return []
        return [{"driver": self.gpu_driver, "device_ids": list(self.gpu_device_ids), "capabilities": [["gpu"]]}]

    def host_config(self, *, network: str, auto_remove: bool) -> dict[str, Any]:
        """Keyword arguments of docker-py's ``create_host_config``; a site's ``extra_host_config`` adds
        options but never replaces the limits, the hardening or the devices."""
        config: dict[str, Any] = {
            **self.extra_host_config,
            "binds": self.binds,
            "mem_limit": self.memory_bytes,
            "cpu_period": CPU_PERIOD_MICROSECONDS,
            "cpu_quota": int(self.cpu_limit * CPU_PERIOD_MICROSECONDS),
            "network_mode": network,
            "auto_remove": auto_remove,
            "init": False,  # tini is PID 1 in every course image
            **self.hardening.docker_py_kwargs(),
            "device_requests": self.device_requests,
        }
        return config


def container_labels(
    *, username: str, server_name: str, course: str, lab_id: str, gpu_device_ids: Sequence[str], extra_labels: Mapping[str, str]
) -> dict[str, str]:
    """``extra_labels`` first, then the platform's own, which a site cannot override or drop."""
    labels = {**extra_labels, Labels.USER: username, Labels.SERVER: server_name, Labels.COURSE: course, Labels.LAB: lab_id}
    if gpu_device_ids:
        labels[Labels.GPUS] = ",".join(gpu_device_ids)
    else:
        labels.pop(Labels.GPUS, None)
    return labels


def make_container_spec(
    *,
    course: Course,
    image: str,
    version: str,
    role: str,
    username: str,
    home_volume: str,
    lab_id: str,
    names: naming.LabNames = naming.LabNames(),
    gpu_device_ids: Sequence[str] = (),
    gpu_driver: str = "nvidia",
    extra_labels: Mapping[str, str] | None = None,
    extra_host_config: Mapping[str, Any] | None = None,
) -> ContainerSpec:
    """The container of ``username``'s server for ``course`` (``role`` is "student" or "instructor")."""
    if role not in ("student", "instructor"):
        raise ValueError(f"role must be 'student' or 'instructor', not {role!r}")
    if course.gpu and len(gpu_device_ids) != course.gpu:
        raise ValueError(f"{course.slug} needs {course.gpu} GPU(s) and was given {len(gpu_device_ids)}")
    if not course.gpu and gpu_device_ids:
        raise ValueError(f"{course.slug} is a CPU course and must not be given GPUs")
    data_read_only = role == "student"
    mounts = [VolumeMount(home_volume, IMAGE.work_mount, read_only=False)]
    mounts += [
        VolumeMount(names.data_volume(course.slug, name), f"{IMAGE.data_mount}/{name}", read_only=data_read_only)
        for name in course.data_volumes
    ]
    environment = {
        **IMAGE.persistent_settings,
        "TEACHLAB_COURSE": course.slug,
        "TEACHLAB_COURSE_VERSION": version,
        # Always set, so an image's own NVIDIA_VISIBLE_DEVICES ("all") cannot widen the request, and a CPU
        # course gets no GPU even where nvidia is the engine's default runtime.
        "NVIDIA_VISIBLE_DEVICES": ",".join(gpu_device_ids) if gpu_device_ids else NO_GPU,
    }
    return ContainerSpec(
        name=names.container(username, course.slug),
        image=image,
        command=tuple(IMAGE.singleuser_command),
        user=IMAGE.user,
        mounts=tuple(mounts),
        memory_bytes=course.resources.memory_bytes,
        cpu_limit=course.resources.cpu,
        labels=container_labels(
            username=username,
            server_name=course.slug,
            course=course.slug,
            lab_id=lab_id,
            gpu_device_ids=gpu_device_ids,
            extra_labels=extra_labels or {},
        ),
        environment=environment,
        gpu_device_ids=tuple(gpu_device_ids),
        gpu_driver=gpu_driver,
        offline=course.network == "off",
        extra_host_config=dict(extra_host_config or {}),
    )
