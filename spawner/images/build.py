"""Builds images on the local engine from the plans of ``spawner.imageplan``.

Three layers, each reused when already present: the root filesystem (debootstrap + ``docker
import``, no registry needed), the flavor's base image, and one image per course environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import docker
import docker.errors

from ..catalog import Course
from ..core import naming
from ..core.contract import Labels
from ..core.problems import TeachlabError
from ..core.progress import Progress
from ..engine import connect
from ..engine.build import BuildFailed, build_image, summarize_build_failure, tar_context
from .confinement import BuildConfinement
from .contents import JUPYTER_PACKAGES
from .locks import pip_lock_versions, server_lock_from_report
from .plan import (
    BUILD_DIR,
    SERVER_REQUIREMENTS,
    Flavor,
    PipSettings,
    environment_hash,
    load_flavor,
    render_base_context,
    render_course_context,
    render_settings_files,
)
from .settings import BuildSettings

label = Labels.image


@dataclass(frozen=True)
class CandidateImage:
    """A built, not yet published, course image."""

    slug: str
    image_id: str
    tag: str
    environment_hash: str
    flavor: Flavor
    base_image: str
    top_level_distributions: tuple[str, ...]


class ImageBuilder:
    """Builds the three layers. With a ``confinement``, course environments build on the mirror proxy's
    network within its limits (instructors' builds through the ``teachlab-courses`` service)."""

    def __init__(
        self,
        settings: BuildSettings,
        progress: Progress | None = None,
        client: docker.DockerClient | None = None,
        confinement: BuildConfinement | None = None,
    ):
        self.settings = settings
        self.progress = progress or Progress(quiet=True)
        self.client = client or connect()
        self.confinement = confinement

    def course_build_options(self) -> dict:
        """How a course environment's ``RUN`` steps run: confined, or on the engine's default network."""
        if self.confinement is None:
            return {}
        return {
            "network_mode": self.confinement.network,
            "build_arguments": self.confinement.build_arguments(),
            "container_limits": self.confinement.limits.container_limits(),
            "time_limit_seconds": self.confinement.limits.seconds,
        }

    def pip_settings(self) -> PipSettings:
        ca = self.settings.ca_bundle.read_bytes() if self.settings.ca_bundle else None
        return PipSettings(
            index_url=self.settings.pip_index_url,
            extra_index_urls=self.settings.pip_extra_index_urls,
            ca_bundle=ca,
            conda_channels=self.settings.conda_channels,
            conda_channel_alias=self.settings.conda_channel_alias,
        )

    def flavor(self, name: str) -> Flavor:
        return load_flavor(self.settings.images_dir, name)

    def _labels(self, **values: str) -> dict[str, str]:
        return {**self.settings.labels, **{label(key.replace("_", "-")): value for key, value in values.items()}}

    def _image_id(self, reference: str) -> str | None:
        try:
            return self.client.images.get(reference).id
        except docker.errors.ImageNotFound:
            return None

    def _log_path(self, name: str) -> Path:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        return self.settings.log_dir / f"{name}-{stamp}.log"

    # -- root filesystem ------------------------------------------------------------------------
    def ensure_rootfs(self, flavor: Flavor) -> str:
        """The flavor's root filesystem image, made with debootstrap when missing."""
        reference = flavor.rootfs_image(self.settings.image_namespace)
        if self._image_id(reference):
            return reference
        if shutil.which("debootstrap") is None:
            raise TeachlabError("debootstrap is not installed; install it (apt-get install debootstrap) or run 'make setup'")
        with (
            self.progress.step(f"debootstrap {flavor.rootfs_variant} {flavor.rootfs_suite} root filesystem"),
            tempfile.TemporaryDirectory(prefix="teachlab-rootfs-") as root,
        ):
            command = [
                "debootstrap",
                f"--variant={flavor.rootfs_variant}",
                f"--include={','.join(flavor.rootfs_packages)}",
                flavor.rootfs_suite,
                root,
            ]
            if self.settings.debian_mirror:
                command.append(self.settings.debian_mirror)
            log_path = self._log_path(f"rootfs-{flavor.rootfs_suite}")
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("w") as log:
                result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
            if result.returncode != 0:
                tail = log_path.read_text().strip().splitlines()[-1:] or ["no output"]
                raise TeachlabError(f"debootstrap failed: {tail[0]} (full log: {log_path})")
            self._import_rootfs(Path(root), reference, flavor)
        return reference

    def _import_rootfs(self, root: Path, reference: str, flavor: Flavor) -> None:
        repository, tag = reference.rsplit(":", 1)
        labels = self._labels(rootfs=f"{flavor.rootfs_suite}-{flavor.rootfs_variant}")
        changes = ['CMD ["/bin/bash"]'] + [f'LABEL {key}="{value}"' for key, value in labels.items()]
        tar = subprocess.Popen(
            ["tar", "-C", str(root), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            self.client.api.import_image_from_stream(tar.stdout, repository=repository, tag=tag, changes=changes)
        finally:
            tar.stdout.close()
            failed = tar.wait() != 0
        if failed:
            self.client.images.remove(reference, force=True)  # never cache a truncated root filesystem
            raise TeachlabError(f"tar of the root filesystem failed: {tar.stderr.read().decode(errors='replace').strip()[:300]}")

    # -- base images ----------------------------------------------------------------------------
    def server_lock(self, flavor: Flavor) -> str:
        path = flavor.server_lock_file
        if not path.is_file():
            raise TeachlabError(
                f"{path} is missing: resolve the Jupyter server environment with hashes first "
                f"(teachlab image lock-server --flavor {flavor.name})"
            )
        return path.read_text()

    def build_base(self, flavor_name: str, *, server_lock: str | None = None, debian_lock: str | None = None) -> str:
        """Build (or reuse from cache) the base image of a flavor; returns its reference.

        With ``server_lock`` and ``debian_lock`` (a published version's), the base is rebuilt from them and
        tagged ``v<version>-lock-<digest>``; otherwise from the flavor's server lock and today's Debian packages.
        """
        flavor = self.flavor(flavor_name)
        rootfs = self.ensure_rootfs(flavor)
        reference = flavor.base_image(self.settings.image_namespace)
        locked = server_lock is not None or debian_lock is not None
        server_lock = server_lock if server_lock is not None else self.server_lock(flavor)
        if locked:
            digest = hashlib.sha256(f"{server_lock}\0{debian_lock or ''}".encode()).hexdigest()[:12]
            reference = f"{reference}-lock-{digest}"
        installer = self._download_installer(flavor) if flavor.installer else None
        context = render_base_context(
            flavor,
            rootfs_image=rootfs,
            server_lock=server_lock,
            pip=self.pip_settings(),
            installer_bytes=installer,
            debian_lock=debian_lock,
        )
        recipe_hash = environment_hash(context, self._image_id(rootfs) or rootfs)
        existing = self._image_labels(reference)
        if existing.get(label("recipe-hash")) == recipe_hash:
            self.progress.info(f"{reference} is up to date (built {existing.get(label('build-time'), '?')})")
            return reference
        versions = pip_lock_versions(server_lock)
        with self.progress.step(f"build base image {reference}") as step:
            build_image(
                self.client,
                context=tar_context(context),
                tag=reference,
                labels=self._labels(
                    base_flavor=flavor.name,
                    base_version=flavor.version,
                    recipe_hash=recipe_hash,
                    build_time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    python_kernel=flavor.python_version,
                    python_server=flavor.server_python_version,
                    **{name.replace("-", "_"): versions[name] for name in JUPYTER_PACKAGES if name in versions},
                ),
                log_path=self._log_path(f"base-{flavor.name}"),
                on_line=step.detail,
                no_cache=locked,
            )
        return reference

    def lock_server(self, flavor_name: str) -> Path:
        """Resolve the Jupyter server environment from constraints.txt on the flavor's own server Python and
        write the hashed lock (``images/common/server-py<X.Y>.lock.txt``); pip's report gives every hash."""
        flavor = self.flavor(flavor_name)
        if flavor.kernel_python is None:
            raise TeachlabError(
                f"{flavor.name} has no system Python {flavor.server_python_version} to resolve with; "
                "lock with a venv flavor of the same server Python (teachlab image lock-server --flavor debian-py39)"
            )
        rootfs = self.ensure_rootfs(flavor)
        files = {
            "constraints.txt": self.settings.constraints_file.read_text(),
            **{name.removeprefix(BUILD_DIR): data for name, data in render_settings_files(flavor, self.pip_settings()).items()},
        }
        script = (
            "set -e; python3 -m venv /tmp/resolver; "
            "PIP_CONFIG_FILE=/tmp/teachlab-build/pip.conf /tmp/resolver/bin/python -m pip install --quiet --dry-run "
            "--ignore-installed --report /tmp/teachlab-build/report.json -c /tmp/teachlab-build/constraints.txt "
            + " ".join(SERVER_REQUIREMENTS)
        )
        with (
            self.progress.step(f"resolve the Jupyter server environment on {flavor.rootfs_suite}'s Python"),
            tempfile.TemporaryDirectory(prefix="teachlab-lock-") as folder,
        ):
            for name, data in files.items():
                Path(folder, name).write_bytes(data if isinstance(data, bytes) else data.encode())
            os.chmod(folder, 0o755)
            container = self.client.containers.run(
                rootfs,
                ["bash", "-c", script],
                volumes={folder: {"bind": "/tmp/teachlab-build", "mode": "rw"}},
                labels=dict(self.settings.labels),
                detach=True,
            )
            try:
                status = container.wait(timeout=600)
                output = container.logs().decode("utf-8", "replace")
            finally:
                container.remove(force=True)
            if status.get("StatusCode") != 0:
                raise TeachlabError(
                    f"pip could not resolve the server environment: {summarize_build_failure(output.splitlines(), output)}"
                )
            report = json.loads(Path(folder, "report.json").read_text())
        path = flavor.server_lock_file
        header = (
            f"# The Jupyter server environment on Python {flavor.server_python_version}, resolved from constraints.txt by\n"
            f"# `teachlab image lock-server --flavor {flavor.name}`; installed with --require-hashes. Do not edit by hand.\n"
        )
        path.write_text(header + server_lock_from_report(report))
        return path

    def _image_labels(self, reference: str) -> dict[str, str]:
        try:
            return self.client.images.get(reference).labels or {}
        except docker.errors.ImageNotFound:
            return {}

    def _download_installer(self, flavor: Flavor) -> bytes:
        assert flavor.installer is not None
        mirror = self.settings.miniconda_mirror
        if not mirror:
            raise TeachlabError(
                f"set TEACHLAB_MINICONDA_MIRROR to the URL of a folder holding {flavor.installer.file} "
                "(the Miniconda download site or a university mirror)"
            )
        url = f"{mirror.rstrip('/')}/{flavor.installer.file}"
        context = ssl.create_default_context(cafile=str(self.settings.ca_bundle) if self.settings.ca_bundle else None)
        with self.progress.step(f"download {flavor.installer.file}"):
            try:
                with urllib.request.urlopen(url, context=context, timeout=60) as response:
                    data = response.read()
            except OSError as exc:
                raise TeachlabError(f"cannot download {url}: {exc} (check TEACHLAB_MINICONDA_MIRROR and the network)") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != flavor.installer.sha256:
            raise TeachlabError(
                f"{flavor.installer.file} from {mirror} has sha256 {digest}, expected {flavor.installer.sha256} "
                "(the mirror serves a different file; fix the mirror or update images/miniconda-py39/flavor.yaml)"
            )
        return data

    # -- course images --------------------------------------------------------------------------
    def build_course(self, course: Course, *, lock: str | None = None, base_image: str | None = None) -> CandidateImage:
        """Build a course image candidate on its flavor's base (must exist; ``base_image`` names another,
        e.g. one rebuilt from a version's locks); cached when unchanged."""
        flavor = self.flavor(course.image_flavor)
        base = base_image or flavor.base_image(self.settings.image_namespace)
        base_id = self._image_id(base)
        if base_id is None:
            raise TeachlabError(f"base image {base} is missing (build it: teachlab image build-base --flavor {flavor.name})")
        plan = render_course_context(
            course,
            flavor,
            base_image=base,
            base_image_id=base_id,
            constraints=self.settings.constraints_file.read_text(),
            pip=self.pip_settings(),
            lock=lock,
        )
        tag = f"{naming.course_image_repository(course.slug, self.settings.image_namespace)}:build-{plan.environment_hash[:12]}"
        with self.progress.step(f"build {course.slug} environment on {base}") as step:
            try:
                image_id = build_image(
                    self.client,
                    context=tar_context(plan.files),
                    tag=tag,
                    labels=self._labels(
                        course=course.slug,
                        env_hash=plan.environment_hash,
                        base_flavor=flavor.name,
                        base_version=flavor.version,
                        base_image=base,
                    ),
                    log_path=self._log_path(f"course-{course.slug}"),
                    on_line=step.detail,
                    no_cache=lock is not None,
                    **self.course_build_options(),
                )
            except BuildFailed as failure:
                raise BuildFailed(f"{course.slug}: the environment did not build: {failure.cause}", failure.log_path) from None
        return CandidateImage(course.slug, image_id, tag, plan.environment_hash, flavor, base, plan.top_level_distributions)

    def tag_version(self, candidate: CandidateImage, version: str, contents_labels: dict[str, str]) -> tuple[str, str]:
        """Stamp the version, build time and what the image contains (``contents_labels``) on a candidate
        as labels; returns (reference, image ID)."""
        reference = naming.course_image(candidate.slug, version, self.settings.image_namespace)
        dockerfile = f"FROM {candidate.image_id}\n"
        with self.progress.step(f"tag {reference}"):
            image_id = build_image(
                self.client,
                context=tar_context({"Dockerfile": dockerfile}),
                tag=reference,
                labels={
                    **contents_labels,
                    **self._labels(version=version, build_time=datetime.now(timezone.utc).isoformat(timespec="seconds")),
                },
                log_path=self._log_path(f"tag-{candidate.slug}"),
            )
        return reference, image_id
