"""What is inside a built image, read by ``contents_probe.py`` in a container, and what follows from it:
the image's labels (Python versions, Jupyter versions, major libraries, CUDA runtime) and the three
locks recorded with a published version.

Pure (no Docker): the probe's output is parsed here; ``spawner.images.publish`` runs the probe.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from packaging.utils import canonicalize_name

from ..core.contract import Labels
from ..core.problems import TeachlabError

PROBE_PREFIX = "TEACHLAB-CONTENTS "
JUPYTER_PACKAGES = ("jupyter-server", "jupyterlab", "jupyterhub", "notebook")
# Libraries worth naming on a course image's labels when a course has them.
MAJOR_LIBRARIES = ("torch", "tensorflow", "jax", "numpy", "pandas", "scikit-learn", "cudatoolkit", "cupy")
_CUDA_RUNTIME_PACKAGES = ("nvidia-cuda-runtime-cu13", "nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime-cu11")
_CONDA_CUDA_PACKAGES = ("cuda-cudart", "cuda-runtime", "cudatoolkit", "pytorch-cuda")
_TORCH_LOCAL_CUDA = re.compile(r"\+cu(\d{2,3})$")


@dataclass(frozen=True)
class ImageContents:
    """Both Python environments and the Debian packages of one image."""

    server_python: str
    kernel_python: str
    server_packages: Mapping[str, str]  # canonical name -> version
    course_packages: Mapping[str, str]
    debian_packages: Mapping[str, str]
    conda_packages: Mapping[str, str] = field(default_factory=dict)  # course environment, conda flavors

    def debian_lock(self) -> str:
        return "".join(f"{name}={version}\n" for name, version in sorted(self.debian_packages.items()))

    def as_dict(self) -> dict:
        return {
            "server_python": self.server_python,
            "kernel_python": self.kernel_python,
            "server_packages": dict(sorted(self.server_packages.items())),
            "course_packages": dict(sorted(self.course_packages.items())),
            "debian_packages": dict(sorted(self.debian_packages.items())),
            "conda_packages": dict(sorted(self.conda_packages.items())),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> ImageContents:
        return cls(
            server_python=data["server_python"],
            kernel_python=data["kernel_python"],
            server_packages=dict(data["server_packages"]),
            course_packages=dict(data["course_packages"]),
            debian_packages=dict(data["debian_packages"]),
            conda_packages=dict(data.get("conda_packages", {})),
        )


def parse_probe_output(output: str, image: str) -> ImageContents:
    lines = [line for line in output.splitlines() if line.startswith(PROBE_PREFIX)]
    if not lines:
        tail = [line for line in output.strip().splitlines() if line.strip()][-1:] or ["no output"]
        raise TeachlabError(f"could not read what {image} contains: {tail[0][:300]}")
    report = json.loads(lines[-1][len(PROBE_PREFIX) :])

    def packages(pairs) -> dict[str, str]:
        return {canonicalize_name(name): version for name, version in pairs}

    debian = {}
    for line in report["debian"]:
        name, _, version = line.partition("=")
        if name and version:
            debian[name] = version
    return ImageContents(
        server_python=report["server"]["python"],
        kernel_python=report["course"]["python"],
        server_packages=packages(report["server"]["packages"]),
        course_packages=packages(report["course"]["packages"]),
        debian_packages=debian,
        conda_packages=dict(report.get("conda", [])),
    )


def cuda_runtime(contents: ImageContents) -> str | None:
    """The CUDA runtime (major.minor) a course environment carries, if any: the nvidia-cuda-runtime wheel,
    a conda CUDA package, or the ``+cuXYZ`` build of torch."""
    for name in _CUDA_RUNTIME_PACKAGES:
        if name in contents.course_packages:
            return ".".join(contents.course_packages[name].split(".")[:2])
    for name in _CONDA_CUDA_PACKAGES:
        if name in contents.conda_packages:
            return ".".join(contents.conda_packages[name].split(".")[:2])
    match = _TORCH_LOCAL_CUDA.search(contents.course_packages.get("torch", ""))
    if match:
        digits = match[1]
        return f"{digits[:-1]}.{digits[-1]}"
    return None


def image_labels(contents: ImageContents) -> dict[str, str]:
    """Labels that say what is inside: both Pythons, the Jupyter packages, major libraries, CUDA runtime."""
    label = Labels.image
    labels = {label("python-kernel"): contents.kernel_python, label("python-server"): contents.server_python}
    for name in JUPYTER_PACKAGES:
        if name in contents.server_packages:
            labels[label(name)] = contents.server_packages[name]
    for name in MAJOR_LIBRARIES:
        version = contents.course_packages.get(name) or contents.conda_packages.get(name)
        if version:
            labels[label(f"lib.{name}")] = version
    runtime = cuda_runtime(contents)
    if runtime:
        labels[label("cuda-runtime")] = runtime
    return labels
