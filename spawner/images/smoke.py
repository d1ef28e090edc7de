"""The smoke test of a course image: start it as a student would be started and run code in its default kernel."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

import docker
import docker.errors
import requests.exceptions
from packaging.version import Version

from ..catalog import Course
from ..core.contract import IMAGE
from ..core.hardening import STUDENT_HARDENING
from ..core.problems import TeachlabError

SMOKE_TIMEOUT_SECONDS = 300


class SmokeTestFailed(TeachlabError):
    pass


@dataclass(frozen=True)
class SmokeReport:
    python: str
    default_kernel_title: str
    imports: Mapping[str, Mapping[str, str]]


def run_smoke_test(
    client: docker.DockerClient, *, image: str, course: Course, distributions: tuple[str, ...], labels: Mapping[str, str]
) -> SmokeReport:
    """Run the probe as the student uid with the course's limits and no network; the container is always removed."""
    probe = resources.files("spawner.images").joinpath("smoke_probe.py").read_text()
    container = client.containers.create(
        image,
        command=[IMAGE.jupyter_python, "-c", probe, json.dumps(list(distributions))],
        entrypoint=IMAGE.init,
        user=IMAGE.user,
        mem_limit=course.resources.memory_bytes,
        nano_cpus=int(course.resources.cpu * 1e9),
        network_mode="none",
        labels=dict(labels),
        **STUDENT_HARDENING.docker_py_kwargs(),
    )
    try:
        container.start()
        try:
            status = container.wait(timeout=SMOKE_TIMEOUT_SECONDS)
        except (requests.exceptions.RequestException, docker.errors.APIError):
            raise SmokeTestFailed(f"{course.slug}: the smoke test did not finish within {SMOKE_TIMEOUT_SECONDS} s") from None
        output = container.logs().decode("utf-8", "replace")
    finally:
        container.remove(force=True)
    return _check(course, output, status.get("StatusCode", 1))


def _check(course: Course, output: str, exit_code: int) -> SmokeReport:
    lines = [line for line in output.splitlines() if line.startswith("TEACHLAB-SMOKE ")]
    if not lines:
        tail = [line for line in output.strip().splitlines() if line.strip()][-1:] or ["no output"]
        raise SmokeTestFailed(f"{course.slug}: the default kernel did not run (exit {exit_code}): {tail[0][:300]}")
    report = json.loads(lines[-1][len("TEACHLAB-SMOKE ") :])
    kernel = report.get("kernel")
    title = report["kernels"].get(report["default_kernel"], "")
    if kernel is None:
        raise SmokeTestFailed(
            f"{course.slug}: code in the default kernel failed: {'; '.join(report['kernel_errors']) or 'no output'}"
        )
    if title != course.title:
        raise SmokeTestFailed(f"{course.slug}: the default kernel is '{title}', expected the course title '{course.title}'")
    if not course.environment.python_specifier.contains(Version(kernel["python"])):
        raise SmokeTestFailed(
            f"{course.slug}: the kernel runs Python {kernel['python']}, which does not match '{course.environment.python.raw}'"
        )
    failures = [
        f"{dist} ({module}: {result})"
        for dist, modules in kernel["imports"].items()
        for module, result in modules.items()
        if result != "ok"
    ]
    empty = [dist for dist, modules in kernel["imports"].items() if not modules]
    if failures:
        raise SmokeTestFailed(f"{course.slug}: these packages do not import in the default kernel: {', '.join(failures)}")
    if empty and course.image_flavor == "debian-py39":
        raise SmokeTestFailed(f"{course.slug}: these packages are not installed in the course environment: {', '.join(empty)}")
    return SmokeReport(python=kernel["python"], default_kernel_title=title, imports=kernel["imports"])
